"""Strict reader of an untrusted safetensors header: sizes, dtypes, shapes and offsets, before any tensor loads.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object
mapping each tensor name to `dtype`, `shape`, `data_offsets`, plus an optional string→string
`__metadata__`), then the data section. Miners' uploads are untrusted (DESIGN.md "The network",
step 5), so every number is checked against `Limits` here, with a message that names the field
and says what was expected, before the bytes reach `safetensors`. Nothing here unpickles or
loads tensors; a `torch.save` file (zip or pickle) is named as such and refused.
"""

import json
import re
from dataclasses import dataclass

from moeforge.errors import PayloadError

LENGTH_BYTES = 8  # the little-endian u64 header length that starts every safetensors file
MAX_TOTAL_BYTES = 4 << 30  # a whole payload; a job's delta is a few hundred MB
MAX_HEADER_BYTES = 1 << 20  # ≈ 8k tensor entries of ~120 bytes
MAX_TENSORS = 8192
MAX_ELEMENTS = 1 << 28  # per tensor: 1 GiB as float32; one DeepSeek-V3 expert matrix is 14.7M
MAX_RANK = 4  # expert weights are 2-D, biases 1-D
MAX_NAME_CHARS = 256
MAX_PROBLEMS_SHOWN = 10
DTYPE_BYTES = {  # the fixed-width safetensors dtypes this reader knows; others are refused
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
DEFAULT_DTYPES = frozenset({"F64", "F32", "BF16", "F16"})  # F64: deltas of float32 bases are exact in float64
ENTRY_FIELDS = ("dtype", "shape", "data_offsets")
_NAME = re.compile(rf"[\x21-\x7e]{{1,{MAX_NAME_CHARS}}}")  # printable ASCII, no spaces or control characters
_PICKLE_PROTOCOLS = range(2, 6)  # a pickle stream starts b"\x80" + protocol byte


@dataclass(frozen=True)
class Limits:
    """What `unpack` accepts; a validator may tighten these per job (e.g. the job's exact dtypes)."""

    max_total_bytes: int = MAX_TOTAL_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    dtypes: frozenset[str] = DEFAULT_DTYPES
    max_tensors: int = MAX_TENSORS
    max_elements: int = MAX_ELEMENTS  # per tensor
    max_rank: int = MAX_RANK


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data section, end exclusive
    end: int


@dataclass(frozen=True, eq=False)
class Header:
    metadata: dict[str, str] | None  # `__metadata__`, if the file has one
    tensors: tuple[TensorEntry, ...]  # sorted by name
    data_start: int  # offset of the data section in the file: 8 + header length


def read_json_header(data: bytes, limits: Limits, where: str) -> tuple[dict, int]:
    """The header as a JSON object (no duplicate keys, no NaN) and the data section's offset."""
    size = len(data)
    if size > limits.max_total_bytes:
        raise PayloadError(f"{where}: {size:,} bytes, over the limit of {limits.max_total_bytes:,} bytes.")
    if size == 0:
        raise PayloadError(f"{where}: empty; nothing was uploaded, or the upload was cut off. Ask the sender to upload it again.")
    if size < LENGTH_BYTES:
        raise _not_safetensors(where, f"only {size} bytes, less than the 8-byte header length", data)
    n = int.from_bytes(data[:LENGTH_BYTES], "little")
    if n > limits.max_header_bytes:
        raise _not_safetensors(where, f"header length {n:,} bytes is over the limit of {limits.max_header_bytes:,} bytes", data)
    if n > size - LENGTH_BYTES:
        problem = f"header length {n:,} bytes runs past the end of the payload ({size - LENGTH_BYTES:,} bytes follow it; truncated?)"
        raise _not_safetensors(where, problem, data)
    text = bytes(data[LENGTH_BYTES : LENGTH_BYTES + n])
    if not text.startswith(b"{"):
        raise _not_safetensors(where, f"the header does not start with '{{' (got {text[:16]!r})", data)
    try:
        obj = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{where}: the header is not UTF-8 (bad byte at header offset {exc.start}).") from None
    except _DuplicateKey as exc:
        raise PayloadError(f"{where}: the header has the key {exc.key!r} twice; a reader could take either value.") from None
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"{where}: the header is not valid JSON ({_short(str(exc), 120)}).") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{where}: the header is a JSON {type(obj).__name__}, expected an object.")
    return obj, LENGTH_BYTES + n


def check_tensors(obj: dict, data_start: int, size: int, limits: Limits, where: str) -> Header:
    """Check every entry of a parsed header and the data layout; one error lists the problems."""
    metadata = _metadata(obj.get("__metadata__"), where)
    names = [k for k in obj if k != "__metadata__"]
    if len(names) > limits.max_tensors:
        raise PayloadError(f"{where}: {len(names):,} tensors, over the limit of {limits.max_tensors:,}.")
    data_len = size - data_start
    entries, problems = [], []
    for name in sorted(names):
        entry = _entry(name, obj[name], data_len, limits, problems)
        if entry is not None:
            entries.append(entry)
    if not problems:
        _check_layout(entries, data_len, problems)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise PayloadError(f"{where}: " + "; ".join(shown) + more + ".")
    return Header(metadata=metadata, tensors=tuple(entries), data_start=data_start)


def parse_header(data: bytes, limits: Limits, where: str) -> Header:
    """`read_json_header` then `check_tensors`: the whole structural check of one file."""
    obj, data_start = read_json_header(data, limits, where)
    return check_tensors(obj, data_start, len(data), limits, where)


def show_name(name: str) -> str:
    """A tensor name quoted for a message, escaped and cut to a readable length."""
    return repr(_short(name, 96))


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _metadata(value, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: __metadata__ is a JSON {type(value).__name__}, expected an object of strings.")
    for key, item in value.items():
        if not isinstance(item, str):
            raise PayloadError(f"{where}: __metadata__ field {key!r} is a JSON {type(item).__name__}; all its values must be strings.")
    return value


def _entry(name: str, value, data_len: int, limits: Limits, problems: list[str]) -> TensorEntry | None:
    """One tensor entry, or None after appending what is wrong with it to `problems`."""
    if not _NAME.fullmatch(name):
        problems.append(f"tensor name {show_name(name)} is not 1-{MAX_NAME_CHARS} printable ASCII characters without spaces")
        return None
    at = f"tensor {show_name(name)}"
    if not isinstance(value, dict) or sorted(value) != sorted(ENTRY_FIELDS):
        have = sorted(value) if isinstance(value, dict) else f"a JSON {type(value).__name__}"
        problems.append(f"{at} has {have}, expected exactly the fields {list(ENTRY_FIELDS)}")
        return None
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        problems.append(f"{at}: unknown dtype {_short(repr(dtype), 40)} (known: {', '.join(DTYPE_BYTES)})")
        return None
    if dtype not in limits.dtypes:
        problems.append(f"{at}: dtype {dtype!r} is not allowed (allowed: {', '.join(sorted(limits.dtypes))})")
        return None
    numel = _numel(at, shape, limits, problems)
    if numel is None:
        return None
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(x) and x >= 0 for x in offsets)):
        problems.append(f"{at}: data_offsets {_short(json.dumps(offsets), 60)} are not two non-negative integers [begin, end]")
        return None
    begin, end = offsets
    expected = numel * DTYPE_BYTES[dtype]
    if begin > end:
        problems.append(f"{at}: data_offsets [{begin}, {end}] end before they begin")
    elif end > data_len:
        problems.append(f"{at}: data_offsets [{begin}, {end}] run past the data section ({data_len:,} bytes)")
    elif end - begin != expected:
        problems.append(
            f"{at}: data_offsets [{begin}, {end}] span {end - begin:,} bytes, but {dtype}{list(shape)} needs {expected:,}"
        )
    else:
        return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)
    return None


def _numel(at: str, shape, limits: Limits, problems: list[str]) -> int | None:
    if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
        problems.append(f"{at}: shape {_short(json.dumps(shape), 60)} is not a list of non-negative integers")
        return None
    if len(shape) > limits.max_rank:
        problems.append(f"{at}: shape {shape} has rank {len(shape)}, over the limit of {limits.max_rank}")
        return None
    numel = 1
    for d in shape:
        numel *= d
        if numel > limits.max_elements:
            problems.append(f"{at}: shape {_short(json.dumps(shape), 60)} has over {limits.max_elements:,} elements, the per-tensor limit")
            return None
    return numel


def _check_layout(entries: list[TensorEntry], data_len: int, problems: list[str]) -> None:
    """Sorted by offset, the tensors tile the data section exactly: from 0, no overlap, no gap, no tail."""
    cursor, prev = 0, None
    for e in sorted(entries, key=lambda e: (e.begin, e.end, e.name)):
        if e.begin < cursor:
            problems.append(
                f"tensor {show_name(e.name)}: data_offsets [{e.begin}, {e.end}] overlap "
                f"{show_name(prev.name)} [{prev.begin}, {prev.end}]"
            )
        elif e.begin > cursor:
            after = f"after {show_name(prev.name)}" if prev else "at the start of the data section"
            problems.append(f"bytes [{cursor}, {e.begin}) {after} belong to no tensor (a gap before {show_name(e.name)})")
        if e.end >= cursor:
            cursor, prev = e.end, e
    if cursor != data_len and not problems:
        problems.append(f"the data section is {data_len:,} bytes but its tensors end at {cursor:,}: {data_len - cursor:,} trailing bytes")


def _not_safetensors(where: str, problem: str, data: bytes) -> PayloadError:
    """The error for bytes that fail the first structural checks; it names a `torch.save` file as one."""
    if data[:4] == b"PK\x03\x04":
        kind = "a zip archive, as torch.save writes"
    elif len(data) >= 2 and data[0] == 0x80 and data[1] in _PICKLE_PROTOCOLS:
        kind = "a pickle stream (legacy torch.save or pickle.dump)"
    else:
        return PayloadError(f"{where}: {problem}; not a safetensors payload.")
    return PayloadError(
        f"{where}: not safetensors: it is {kind} ({problem}). Pickled objects are never loaded here; "
        "pack tensors with moeforge.network.transport.pack."
    )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"

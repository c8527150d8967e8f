"""Safe tensor transport: signed safetensors payloads round-trip exactly, and every malformed one is refused by name."""

import inspect
import io
import json
import pickle
import random

import pytest
import torch
from pydantic import ValidationError

from moeforge.chain.keys import keypair_from_uri, sign
from moeforge.errors import PayloadError
from moeforge.model.experts import ExpertSlot
from moeforge.network import safetensors_header, transport
from moeforge.network.transport import DEFAULT_LIMITS, Envelope, Limits, canonical_bytes, pack, unpack

GATE = "model.layers.3.mlp.experts.17.gate_proj.weight"
UP = "model.layers.3.mlp.experts.17.up_proj.weight"
DOWN = "model.layers.3.mlp.experts.17.down_proj.weight"
OTHER = "model.layers.5.mlp.experts.2.gate_proj.weight"


@pytest.fixture(scope="module")
def alice():
    return keypair_from_uri("//Alice")


@pytest.fixture(scope="module")
def bob():
    return keypair_from_uri("//Bob")


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        GATE: torch.randn(4, 6, generator=g),
        UP: torch.randn(4, 6, generator=g).to(torch.bfloat16),
        DOWN: torch.randn(6, 4, generator=g).to(torch.float16),
        OTHER: torch.randn(4, 6, generator=g, dtype=torch.float64),
    }


@pytest.fixture(scope="module")
def packed(alice) -> bytes:
    return pack(_tensors(), keypair=alice, job="math-7", round=3, kind="delta")


def _split(data: bytes) -> tuple[dict, bytes]:
    """The header dict and the data section of a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _raw(header: dict | str | bytes, body: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file written by hand: the length field (true length unless given), the header, the body."""
    text = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + body


def _entry(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def _refused(data: bytes, *words: str, **kwargs) -> str:
    with pytest.raises(PayloadError) as info:
        unpack(data, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    return message


# --- round trip -------------------------------------------------------------------------------


def test_packed_then_unpacked_is_bit_identical_with_the_same_envelope(alice, packed):
    envelope, tensors = unpack(packed, expect_hotkey=alice.ss58_address, expect_job="math-7", expect_round=3, expect_kind="delta")
    want = _tensors()
    assert sorted(tensors) == sorted(want)
    for name, t in want.items():
        assert tensors[name].dtype == t.dtype and tensors[name].shape == t.shape
        assert torch.equal(tensors[name].view(torch.uint8), t.view(torch.uint8)), name  # bit-exact, bf16 included
    assert envelope.hotkey == alice.ss58_address
    assert (envelope.job, envelope.round, envelope.kind, envelope.version) == ("math-7", 3, "delta", 1)
    assert envelope.slots == (ExpertSlot(3, 17), ExpertSlot(5, 2))
    assert len(envelope.payload_sha256) == 64


def test_header_holds_exactly_the_signed_fields_as_strings(packed):
    metadata = _split(packed)[0]["__metadata__"]
    assert sorted(metadata) == sorted(transport.METADATA_FIELDS)
    assert metadata["slots"] == "[[3,17],[5,2]]" and metadata["round"] == "3" and metadata["version"] == "1"
    envelope, _ = unpack(packed)
    signed = canonical_bytes(envelope)
    assert signed.startswith(transport.SIGNING_DOMAIN)
    assert json.loads(signed[len(transport.SIGNING_DOMAIN) :]) == {k: v for k, v in metadata.items() if k != "signature"}


def test_scalar_and_empty_tensors_round_trip(alice):
    tensors = {GATE: torch.tensor(1.5), UP: torch.zeros(0, 6, dtype=torch.bfloat16), DOWN: torch.ones(3, dtype=torch.float16)}
    _, back = unpack(pack(tensors, keypair=alice, job="j", round=0, kind="state"))
    assert all(torch.equal(back[k], t) and back[k].dtype == t.dtype for k, t in tensors.items())


def test_packing_a_non_expert_tensor_is_refused(alice):
    with pytest.raises(PayloadError, match="model.embed_tokens.weight"):
        pack({"model.embed_tokens.weight": torch.zeros(2)}, keypair=alice, job="j", round=0, kind="delta")


def test_packing_a_disallowed_dtype_is_refused(alice):
    with pytest.raises(PayloadError, match="dtype 'I64' is not allowed"):
        pack({GATE: torch.zeros(2, dtype=torch.int64)}, keypair=alice, job="j", round=0, kind="delta")


def test_packing_with_a_bad_field_names_it(alice):
    with pytest.raises(PayloadError, match="round"):
        pack({GATE: torch.zeros(2)}, keypair=alice, job="j", round=-1, kind="delta")


# --- authenticity -----------------------------------------------------------------------------


def _with_metadata(data: bytes, **changes: str) -> bytes:
    header, body = _split(data)
    header["__metadata__"] = {**header["__metadata__"], **changes}
    return _raw(header, body)


def test_signature_by_another_key_than_the_claimed_hotkey_is_refused(alice, bob, packed):
    envelope, _ = unpack(packed)
    forged = _with_metadata(packed, signature=sign(bob, canonical_bytes(envelope)).hex())
    _refused(forged, "signature does not verify", alice.ss58_address)


def test_payload_re_labelled_with_another_hotkey_is_refused(alice, bob, packed):
    _refused(_with_metadata(packed, hotkey=bob.ss58_address), "signature does not verify", bob.ss58_address)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("round", "4", ["signature does not verify"]),
        ("job", "math-8", ["signature does not verify"]),
        ("kind", "state", ["signature does not verify"]),
        ("payload_sha256", "0" * 64, ["sha256", "changed after signing"]),
        ("slots", "[[3,17]]", ["slots do not list"]),
    ],
)
def test_header_field_changed_after_signing_is_refused(packed, field, value, words):
    _refused(_with_metadata(packed, **{field: value}), *words)


def test_a_flipped_tensor_byte_is_refused(packed):
    data = bytearray(packed)
    data[-1] ^= 0x01
    _refused(bytes(data), "sha256", "changed after signing")


def test_a_retyped_tensor_with_the_same_bytes_is_refused(packed):
    header, body = _split(packed)
    header[GATE]["dtype"] = "I32"  # same size as F32, so the layout still checks out
    _refused(_raw(header, body), "sha256", limits=Limits(dtypes=frozenset({"F64", "F32", "BF16", "F16", "I32"})))


def test_a_garbled_signature_is_refused(packed):
    _refused(_with_metadata(packed, signature="00" * 64), "signature does not verify")
    _refused(_with_metadata(packed, signature="zz"), "'signature'")


def test_non_canonical_field_text_is_refused(packed):
    _refused(_with_metadata(packed, round="03"), "'round'", "'03'")
    _refused(_with_metadata(packed, slots="[[3, 17], [5, 2]]"), "'slots'", "canonical form")


def test_slots_that_do_not_match_the_tensors_are_refused(packed):
    _refused(_with_metadata(packed, slots="[[3,17]]"), "(layer 5, expert 2)", "slots do not list")
    _refused(_with_metadata(packed, slots="[[3,17],[5,2],[6,0]]"), "(layer 6, expert 0)", "no tensor carries it")


@pytest.mark.parametrize(
    "expect, words",
    [
        ({"expect_round": 4}, ["round 3", "expected 4"]),
        ({"expect_job": "code-1"}, ["'math-7'", "'code-1'"]),
        ({"expect_kind": "state"}, ["'delta'", "'state'"]),
    ],
)
def test_expected_field_mismatch_names_both_values(packed, expect, words):
    _refused(packed, *words, **expect)


def test_expected_hotkey_mismatch_names_both_hotkeys(alice, bob, packed):
    _refused(packed, f"signed by hotkey {alice.ss58_address}, expected {bob.ss58_address}", expect_hotkey=bob.ss58_address)


def test_a_hotkey_that_is_not_ss58_is_refused(packed):
    _refused(_with_metadata(packed, hotkey="5" * 48), "'hotkey' is not a valid ss58 address")


# --- malformed files, built by hand -----------------------------------------------------------


def test_empty_bytes_are_refused():
    _refused(b"", "empty")


def test_random_bytes_are_refused():
    _refused(random.Random(0).randbytes(4096), "header length")


def test_header_length_past_the_end_is_refused():
    _refused(_raw("{}", length=500), "header length 500 bytes runs past the end")


def test_huge_header_length_is_refused():
    _refused(_raw("{}", length=1 << 40), "over the limit of 1,048,576 bytes")


def test_oversize_payload_is_refused(packed):
    _refused(packed, "over the limit of 100 bytes", limits=Limits(max_total_bytes=100))


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json}", ["not valid JSON"]),
        ("[1, 2]", ["does not start with '{'"]),
        (b'{"\xff": 1}', ["not UTF-8"]),
        ('{"a": NaN}', ["not valid JSON", "NaN"]),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", ["not valid JSON", "recursion"]),
    ],
)
def test_header_that_is_not_a_json_object_is_refused(text, words):
    _refused(_raw(text), *words)


def test_duplicate_keys_are_refused():
    entry = json.dumps(_entry("F32", [1], 0, 4))
    _refused(_raw(f'{{"{GATE}": {entry}, "{GATE}": {entry}}}', b"\0" * 4), "key", GATE, "twice")


def test_duplicate_keys_inside_an_entry_are_refused():
    _refused(_raw(f'{{"{GATE}": {{"dtype": "F32", "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}}}', b"\0" * 4), "'dtype' twice")


def test_missing_metadata_is_refused():
    _refused(_raw({GATE: _entry("F32", [1], 0, 4)}, b"\0" * 4), "no __metadata__", "not a signed moeforge payload")


def test_metadata_with_missing_or_extra_fields_is_refused(packed):
    header, body = _split(packed)
    del header["__metadata__"]["signature"]
    header["__metadata__"]["format"] = "pt"
    _refused(_raw(header, body), "missing ['signature']", "unexpected ['format']")


def test_metadata_value_that_is_not_a_string_is_refused(packed):
    header, body = _split(packed)
    header["__metadata__"]["round"] = 3
    _refused(_raw(header, body), "'round'", "must be strings")


@pytest.mark.parametrize(
    "entry, words",
    [
        (_entry("I64", [1], 0, 8), ["dtype 'I64' is not allowed", "BF16, F16, F32, F64"]),
        (_entry("Q99", [1], 0, 8), ["unknown dtype 'Q99'"]),
        (_entry("F32", [-1], 0, 4), ["shape [-1]", "non-negative integers"]),
        (_entry("F32", [2.0], 0, 8), ["shape [2.0]"]),
        (_entry("F32", [True], 0, 4), ["shape [true]"]),
        (_entry("F32", [1 << 20, 1 << 20], 0, 8), ["over 268,435,456 elements"]),
        (_entry("F32", [1, 1, 1, 1, 1], 0, 4), ["rank 5", "limit of 4"]),
        (_entry("F32", [2], 0, 4), ["data_offsets [0, 4] span 4 bytes", "F32[2] needs 8"]),
        (_entry("F32", [1], 4, 0), ["[4, 0] end before they begin"]),
        (_entry("F32", [1], 0, 1 << 30), ["run past the data section (8 bytes)"]),
        (_entry("F32", [1], -4, 0), ["data_offsets [-4, 0] are not two non-negative integers"]),
        ({"dtype": "F32", "shape": [1]}, ["expected exactly the fields"]),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}, ["expected exactly the fields"]),
    ],
)
def test_malformed_tensor_entry_is_refused_by_name(entry, words):
    _refused(_raw({GATE: entry}, b"\0" * 8), GATE, *words)


@pytest.mark.parametrize("name", ["bad\x00name", "has space", "x" * 300, ""])
def test_malformed_tensor_name_is_refused(name):
    _refused(_raw({name: _entry("F32", [1], 0, 4)}, b"\0" * 4), "printable ASCII")


def test_overlapping_offsets_name_both_tensors():
    header = {GATE: _entry("F32", [24], 0, 96), UP: _entry("F32", [16], 64, 128)}
    _refused(_raw(header, b"\0" * 128), f"'{UP}': data_offsets [64, 128] overlap '{GATE}' [0, 96]")


def test_a_gap_between_tensors_is_refused():
    header = {GATE: _entry("F32", [4], 0, 16), UP: _entry("F32", [4], 20, 36)}
    _refused(_raw(header, b"\0" * 36), "bytes [16, 20)", "belong to no tensor", UP)


def test_data_not_starting_at_zero_is_refused():
    _refused(_raw({GATE: _entry("F32", [1], 4, 8)}, b"\0" * 8), "bytes [0, 4) at the start of the data section")


def test_trailing_bytes_are_refused(packed):
    _refused(packed + b"\0" * 4, "4 trailing bytes")


def test_too_many_tensors_are_refused(packed):
    _refused(packed, "4 tensors, over the limit of 2", limits=Limits(max_tensors=2))


def test_limits_default_to_named_constants():
    assert DEFAULT_LIMITS.max_header_bytes == safetensors_header.MAX_HEADER_BYTES == 1 << 20
    assert DEFAULT_LIMITS.dtypes == frozenset({"F64", "F32", "BF16", "F16"})


def test_envelope_is_frozen_and_strict(packed):
    envelope, _ = unpack(packed)
    with pytest.raises(ValidationError):
        envelope.round = 4
    with pytest.raises(ValidationError):
        Envelope(**{**envelope.model_dump(), "round": "3"})


def test_every_corruption_is_refused_or_harmless(packed):
    """Random byte changes, cuts and insertions: PayloadError, or (e.g. header padding) the very same content."""
    envelope, tensors = unpack(packed)
    rng = random.Random(0)
    for _ in range(300):
        data = bytearray(packed)
        at = rng.randrange(len(data))
        match rng.randrange(3):
            case 0:
                data[at] = rng.randrange(256)
            case 1:
                del data[at : at + rng.randint(1, 8)]
            case 2:
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        try:
            got, back = unpack(bytes(data))
        except PayloadError:
            continue
        assert got == envelope and all(torch.equal(back[k].view(torch.uint8), t.view(torch.uint8)) for k, t in tensors.items())


# --- never pickle -----------------------------------------------------------------------------


class _Trap:
    """Unpickling this creates `path`: proof that a pickle was deserialised."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _torch_save(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("how", ["pickle-2", "pickle-5", "torch.save", "torch.save-legacy"])
def test_pickle_payload_is_refused_and_never_deserialised(tmp_path, how):
    trap = tmp_path / "unpickled"
    data = {
        "pickle-2": lambda: pickle.dumps({GATE: _Trap(trap)}, protocol=2),
        "pickle-5": lambda: pickle.dumps({GATE: _Trap(trap)}, protocol=5),
        "torch.save": lambda: _torch_save({GATE: _Trap(trap)}),
        "torch.save-legacy": lambda: _torch_save({GATE: _Trap(trap)}, _use_new_zipfile_serialization=False),
    }[how]()
    _refused(data, "not safetensors", "never loaded", "zip archive" if how == "torch.save" else "pickle stream")
    assert not trap.exists()


def test_transport_source_never_unpickles():
    for module in (transport, safetensors_header):
        source = inspect.getsource(module)
        assert "torch.load" not in source and "import pickle" not in source and "pickle.load" not in source

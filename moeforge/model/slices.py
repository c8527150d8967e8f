"""Expert slices: a set of routed experts' weights (or deltas) as safetensors plus a manifest.

One format serves the selected experts a miner trains (`kind="experts"`) and the updates it
returns (`kind="delta"`, new − base). Tensors use Hugging Face per-expert key names
(`model.layers.3.mlp.experts.7.gate_proj.weight`), the manifest names the base model's
fingerprint, the (layer, expert) slots, every tensor's shape and dtype, and the sha256 of the
safetensors file. Loading is strict (STYLE.md §5): every missing, unexpected or mis-shaped key
is listed in one error and nothing is applied.

Deltas are computed in float64 and stored in float64 for float32 bases (float32 for 16-bit
bases), so that applying a delta and removing it are exact inverses.
"""

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from moeforge.atomic import write_folder
from moeforge.errors import ArtifactNotFound, DataError, ModelError
from moeforge.json_file import read_json_model
from moeforge.model.experts import ExpertSlot, ExpertWeights, find_layer, read_expert, shape_problems, write_expert
from moeforge.model.families import FAMILIES, family_of

TENSORS_FILE = "experts.safetensors"
MANIFEST_FILE = "manifest.json"
SliceKind = Literal["experts", "delta"]
_KEY = re.compile(r"model\.layers\.(?P<layer>\d+)\.(?P<block>\w+)\.experts\.(?P<expert>\d+)\.(?P<part>\w+\.(weight|bias))")
_PARTS = ("gate_proj.weight", "up_proj.weight", "down_proj.weight", "gate_proj.bias", "up_proj.bias", "down_proj.bias")


class TensorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: tuple[int, ...]
    dtype: str


class SliceManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    kind: SliceKind
    model_type: str
    base_fingerprint: str
    slots: tuple[tuple[int, int], ...]  # (layer, expert), sorted
    tensors: dict[str, TensorInfo]
    sha256: str  # of the safetensors file


@dataclass(frozen=True, eq=False)
class ExpertSlice:
    kind: SliceKind
    model_type: str
    base_fingerprint: str
    weights: dict[ExpertSlot, ExpertWeights]

    @property
    def slots(self) -> list[ExpertSlot]:
        return sorted(self.weights)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors under their Hugging Face per-expert key names."""
        block = FAMILIES[self.model_type].block
        return {
            f"model.layers.{slot.layer}.{block}.experts.{slot.expert}.{part}": t.contiguous()
            for slot in self.slots
            for part, t in self.weights[slot].tensors().items()
        }

    def num_params(self) -> int:
        return sum(t.numel() for t in self.state_dict().values())


def extract_slice(model, slots: list[ExpertSlot], base_fingerprint: str) -> ExpertSlice:
    """Copy the given experts out of `model` (a missing layer or expert is a ModelError)."""
    family_of(model.config)
    return ExpertSlice(
        kind="experts",
        model_type=model.config.model_type,
        base_fingerprint=base_fingerprint,
        weights={slot: read_expert(model, slot) for slot in sorted(set(slots))},
    )


def make_delta(base: ExpertSlice, new: ExpertSlice) -> ExpertSlice:
    """new − base for the same slots, exactly representable (float64 for float32 weights)."""
    _check_same_slots(base, new)
    weights = {}
    for slot in base.slots:
        b, n = base.weights[slot].tensors(), new.weights[slot].tensors()
        dtype = torch.float64 if next(iter(b.values())).dtype == torch.float32 else torch.float32
        parts = {_field(part): n[part].to(torch.float64).sub(b[part].to(torch.float64)).to(dtype) for part in b}
        weights[slot] = ExpertWeights(**parts)
    return ExpertSlice(kind="delta", model_type=base.model_type, base_fingerprint=base.base_fingerprint, weights=weights)


def apply_slice(model, piece: ExpertSlice, *, sign: int = 1) -> None:
    """Write experts into `model`, or add (`sign=1`) / subtract (`sign=-1`) a delta, in place.

    Everything is checked first (model type, slots, shapes); on any problem nothing is written.
    """
    check_fits(model, piece)
    for slot in piece.slots:
        new = piece.weights[slot]
        if piece.kind == "delta":
            cur = read_expert(model, slot).tensors()
            parts = {}
            for part, d in new.tensors().items():
                exact = cur[part].to(torch.float64) + sign * d.to(torch.float64)
                parts[_field(part)] = exact.to(cur[part].dtype)
            new = ExpertWeights(**parts)
        write_expert(model, slot, new)


def linear_combination(reference: ExpertSlice, terms: list[tuple[float, ExpertSlice]]) -> ExpertSlice:
    """Σ coefficient · delta over `reference`'s slots, in float64, stored in the dtype make_delta uses for this base
    (float64 for float32 experts, else float32). No terms: the zero delta."""
    weights = {}
    for slot in reference.slots:
        parts = {}
        for name, base in vars(reference.weights[slot]).items():  # ExpertWeights fields: gate, up, down, biases
            if base is not None:
                dtype = torch.float64 if base.dtype == torch.float32 else torch.float32
                total = torch.zeros(base.shape, dtype=torch.float64)
                for c, d in terms:
                    total += c * getattr(d.weights[slot], name).to(torch.float64)
                parts[name] = total.to(dtype)
        weights[slot] = ExpertWeights(**parts)
    return ExpertSlice(kind="delta", model_type=reference.model_type, base_fingerprint=reference.base_fingerprint, weights=weights)


def restricted(piece: ExpertSlice, slots: list[ExpertSlot]) -> ExpertSlice:
    """`piece` over `slots` only (the same tensors); a slot it does not hold is a ModelError."""
    missing = sorted(set(slots) - set(piece.weights))
    if missing:
        raise ModelError(f"the slice holds no expert at {', '.join(f'{s.layer}:{s.expert}' for s in missing[:5])}.")
    return replace(piece, weights={slot: piece.weights[slot] for slot in sorted(set(slots))})


def padded(delta: ExpertSlice, reference: ExpertSlice) -> ExpertSlice:
    """A delta over part of `reference`'s slots as a delta over all of them: zero where it holds none."""
    extra = sorted(set(delta.weights) - set(reference.weights))
    if delta.kind != "delta" or extra:
        raise ModelError(f"not a delta over part of the reference's experts (kind {delta.kind}, "
                         f"{len(extra)} experts outside it).")
    zero = linear_combination(reference, [])
    return replace(delta, weights={slot: delta.weights.get(slot, zero.weights[slot]) for slot in reference.slots})


def remove_delta(model, delta: ExpertSlice) -> None:
    """Undo `apply_slice(model, delta)` exactly."""
    if delta.kind != "delta":
        raise ModelError("remove_delta needs a delta slice; this slice holds expert weights.")
    apply_slice(model, delta, sign=-1)


def check_fits(model, piece: ExpertSlice) -> None:
    """Every slot exists in `model` with the same tensor shapes; raise one error listing all problems."""
    if model.config.model_type != piece.model_type:
        raise ModelError(f"this slice is for a {piece.model_type} model, not {model.config.model_type}.")
    problems = []
    for slot in piece.slots:
        try:
            find_layer(model, slot)
        except ModelError as exc:
            problems.append(str(exc))
            continue
        for problem in shape_problems(read_expert(model, slot), piece.weights[slot]):
            problems.append(f"(layer {slot.layer}, expert {slot.expert}) {problem}")
    if problems:
        raise ModelError("the slice does not fit this model (nothing applied): " + "; ".join(problems) + ".")


def save_slice(piece: ExpertSlice, directory: Path) -> SliceManifest:
    """Write `experts.safetensors` and `manifest.json` into `directory`, atomically."""
    state = piece.state_dict()
    manifests = []

    def fill(folder: Path) -> None:
        save_file(state, folder / TENSORS_FILE, metadata={"format": "pt", "kind": piece.kind})
        manifest = SliceManifest(
            kind=piece.kind,
            model_type=piece.model_type,
            base_fingerprint=piece.base_fingerprint,
            slots=tuple((s.layer, s.expert) for s in piece.slots),
            tensors={k: TensorInfo(shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch.")) for k, t in state.items()},
            sha256=_sha256(folder / TENSORS_FILE),
        )
        (folder / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        manifests.append(manifest)

    write_folder(Path(directory), fill)
    return manifests[0]


def load_slice(directory: Path, *, expect_fingerprint: str | None = None) -> ExpertSlice:
    """Read a slice strictly: digest, manifest, key names, slots, shapes and dtypes must all agree."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    tensors_path = directory / TENSORS_FILE
    if not tensors_path.is_file():
        raise ArtifactNotFound(f"{directory}: {TENSORS_FILE} is missing.")
    digest = _sha256(tensors_path)
    if digest != manifest.sha256:
        raise DataError(f"{tensors_path}: sha256 {digest[:16]}… does not match the manifest's {manifest.sha256[:16]}…; the file is corrupt or was replaced.")
    if expect_fingerprint is not None and manifest.base_fingerprint != expect_fingerprint:
        raise ModelError(
            f"{directory}: made on base model {manifest.base_fingerprint[:16]}…, but this base is "
            f"{expect_fingerprint[:16]}…. Use the slice with the base model it was made from."
        )
    try:
        state = load_file(tensors_path)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{tensors_path}: not a readable safetensors file ({exc}).") from exc
    return _from_state(directory, manifest, state)


def read_manifest(directory: Path) -> SliceManifest:
    if not (Path(directory) / MANIFEST_FILE).exists():
        raise ArtifactNotFound(f"{directory}: no {MANIFEST_FILE}; not an expert slice directory.")
    return read_json_model(Path(directory) / MANIFEST_FILE, SliceManifest, what="slice manifest", error=DataError,
                           fix="Re-write the slice with save_slice (e.g. `moeforge extract`).")


def _from_state(directory: Path, manifest: SliceManifest, state: dict[str, torch.Tensor]) -> ExpertSlice:
    if manifest.model_type not in FAMILIES:
        raise DataError(f"{directory}: unsupported model_type {manifest.model_type!r} in the manifest.")
    block = FAMILIES[manifest.model_type].block
    slots = {ExpertSlot(layer, expert) for layer, expert in manifest.slots}
    problems, parts = [], {}
    for key in sorted(set(state) | set(manifest.tensors)):
        if key not in state:
            problems.append(f"{key} is in the manifest but not in the file")
            continue
        if key not in manifest.tensors:
            problems.append(f"unexpected key {key}")
            continue
        m = _KEY.fullmatch(key)
        slot = ExpertSlot(int(m["layer"]), int(m["expert"])) if m else None
        if m is None or m["block"] != block or m["part"] not in _PARTS or slot not in slots:
            problems.append(f"key {key} is outside the slice's slots")
            continue
        info, t = manifest.tensors[key], state[key]
        if tuple(t.shape) != info.shape or str(t.dtype).removeprefix("torch.") != info.dtype:
            problems.append(f"{key} is {str(t.dtype).removeprefix('torch.')}{tuple(t.shape)}, the manifest says {info.dtype}{info.shape}")
            continue
        parts.setdefault(slot, {})[_field(m["part"])] = t
    for slot in sorted(slots):
        have = parts.get(slot, {})
        for needed in ("gate", "up", "down"):
            if needed not in have:
                problems.append(f"(layer {slot.layer}, expert {slot.expert}) has no {needed}_proj.weight")
    if problems:
        raise DataError(f"{directory}: invalid expert slice: " + "; ".join(problems) + ".")
    weights = {slot: ExpertWeights(**parts[slot]) for slot in sorted(slots)}
    return ExpertSlice(kind=manifest.kind, model_type=manifest.model_type, base_fingerprint=manifest.base_fingerprint, weights=weights)


def _check_same_slots(a: ExpertSlice, b: ExpertSlice) -> None:
    if a.slots != b.slots or a.model_type != b.model_type:
        raise ModelError(f"slices cover different experts: {_slot_list(a)} vs {_slot_list(b)}.")
    if a.base_fingerprint != b.base_fingerprint:
        raise ModelError("slices were made on different base models.")


def _slot_list(piece: ExpertSlice) -> str:
    return ", ".join(f"({s.layer},{s.expert})" for s in piece.slots[:8]) + (" …" if len(piece.slots) > 8 else "")


def _field(part: str) -> str:
    """'gate_proj.weight' → 'gate', 'down_proj.bias' → 'down_bias' (ExpertWeights fields)."""
    name, kind = part.split("_proj.")
    return name if kind == "weight" else f"{name}_bias"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

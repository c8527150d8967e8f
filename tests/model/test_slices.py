import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeforge.errors import DataError, ModelError
from moeforge.model.experts import ExpertSlot, ExpertWeights, read_expert
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.slices import (
    MANIFEST_FILE, TENSORS_FILE, apply_slice, extract_slice, load_slice, make_delta, remove_delta, save_slice,
)
from tests.model.tiny import tiny_model

SLOTS = [ExpertSlot(1, 0), ExpertSlot(1, 5), ExpertSlot(2, 7)]


def _perturbed(piece, scale=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = {
        slot: ExpertWeights(**{k: (v + scale * torch.randn(v.shape, generator=g) if v is not None else None) for k, v in vars(w).items()})
        for slot, w in piece.weights.items()
    }
    return type(piece)(kind="experts", model_type=piece.model_type, base_fingerprint=piece.base_fingerprint, weights=weights)


def test_slice_round_trips_through_disk_with_hf_key_names(tmp_path):
    model = tiny_model("deepseek_v2")
    piece = extract_slice(model, SLOTS, model_fingerprint(model))
    manifest = save_slice(piece, tmp_path / "slice")
    assert manifest.slots == ((1, 0), (1, 5), (2, 7))
    keys = set(load_file(tmp_path / "slice" / TENSORS_FILE))
    assert "model.layers.2.mlp.experts.7.down_proj.weight" in keys and len(keys) == 9
    back = load_slice(tmp_path / "slice", expect_fingerprint=model_fingerprint(model))
    for slot in SLOTS:
        for a, b in zip(piece.weights[slot].tensors().values(), back.weights[slot].tensors().values()):
            assert torch.equal(a, b)


def test_delta_apply_then_remove_is_exactly_the_base(model_type):
    model = tiny_model(model_type)
    from moeforge.model.families import moe_layers
    layers = moe_layers(model)
    slots = [ExpertSlot(layers[0].index, 1), ExpertSlot(layers[-1].index, 6)]
    fp = model_fingerprint(model)
    base = extract_slice(model, slots, fp)
    new = _perturbed(base, scale=0.05)
    delta = make_delta(base, new)
    apply_slice(model, delta)
    for slot in slots:
        for a, b in zip(read_expert(model, slot).tensors().values(), new.weights[slot].tensors().values()):
            assert torch.equal(a, b)  # base + (new - base) is new, bit for bit
    remove_delta(model, delta)
    assert model_fingerprint(model) == fp


def test_delta_with_a_key_outside_its_slots_is_refused(tmp_path):
    model = tiny_model("qwen3_moe")
    base = extract_slice(model, [ExpertSlot(0, 1)], model_fingerprint(model))
    save_slice(make_delta(base, _perturbed(base)), tmp_path / "d")
    path = tmp_path / "d" / TENSORS_FILE
    state = load_file(path)
    state["model.embed_tokens.weight"] = torch.zeros(2, 2)
    save_file(state, path)
    manifest = json.loads((tmp_path / "d" / MANIFEST_FILE).read_text())
    import hashlib
    manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "d" / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"unexpected key model\.embed_tokens\.weight"):
        load_slice(tmp_path / "d")


def test_corrupted_file_fails_its_digest(tmp_path):
    model = tiny_model("olmoe")
    save_slice(extract_slice(model, [ExpertSlot(0, 2)], "f" * 64), tmp_path / "s")
    path = tmp_path / "s" / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match the manifest"):
        load_slice(tmp_path / "s")


def test_slice_from_another_base_is_refused(tmp_path):
    model = tiny_model("mixtral")
    save_slice(extract_slice(model, [ExpertSlot(0, 2)], model_fingerprint(model)), tmp_path / "s")
    other = tiny_model("mixtral", seed=1)
    with pytest.raises(ModelError, match="made on base model"):
        load_slice(tmp_path / "s", expect_fingerprint=model_fingerprint(other))


def test_misfitting_slice_changes_nothing():
    model = tiny_model("deepseek_v2")
    fp = model_fingerprint(model)
    piece = extract_slice(model, SLOTS, fp)
    bad_weights = dict(piece.weights)
    bad_weights[ExpertSlot(1, 9)] = piece.weights[SLOTS[0]]
    w = piece.weights[SLOTS[1]]
    bad_weights[SLOTS[1]] = ExpertWeights(gate=w.gate[:, :-1], up=w.up, down=w.down)
    bad = type(piece)(kind="experts", model_type=piece.model_type, base_fingerprint=fp, weights=bad_weights)
    with pytest.raises(ModelError) as err:
        apply_slice(model, bad)
    assert "expert 9 does not exist" in str(err.value) and "gate_proj.weight has shape" in str(err.value)
    assert model_fingerprint(model) == fp

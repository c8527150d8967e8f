from moeforge.model.experts import ExpertSlot, read_expert, write_expert
from moeforge.model.fingerprint import model_fingerprint
from moeforge.model.load import load_model
from tests.model.tiny import tiny_model


def test_fingerprint_survives_save_and_load(tmp_path):
    model = tiny_model("deepseek_v2")
    model.save_pretrained(tmp_path)
    assert model_fingerprint(load_model(tmp_path)) == model_fingerprint(model)


def test_fingerprint_changes_when_one_expert_value_changes():
    model = tiny_model("qwen3_moe")
    before = model_fingerprint(model)
    slot = ExpertSlot(0, 3)
    w = read_expert(model, slot)
    w.down[0, 0] += 1e-3
    write_expert(model, slot, w)
    assert model_fingerprint(model) != before


def test_fingerprint_differs_between_seeds():
    assert model_fingerprint(tiny_model("olmoe", seed=0)) != model_fingerprint(tiny_model("olmoe", seed=1))

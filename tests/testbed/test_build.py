import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from moeforge.errors import ConfigError
from moeforge.model.families import moe_layers
from moeforge.model.load import load_model
from moeforge.model.loss import mean_token_loss
from moeforge.testbed.build import build_testbed, eval_rows, read_report
from moeforge.testbed.config import EVAL_DOMAINS, preset


def test_build_writes_a_standard_checkpoint(small_testbed):
    report, out = small_testbed
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "deepseek_v2"
    assert len(tokenizer) == report.vocab_size == model.config.vocab_size
    layers = moe_layers(model)
    cfg = report.config
    assert [layer.index for layer in layers] == list(range(1, cfg.num_layers))  # layer 0 dense
    assert all(layer.num_experts == cfg.num_experts and layer.top_k == cfg.top_k and layer.num_shared == 1 for layer in layers)
    assert json.loads((out / "testbed.json").read_text())["config"] == cfg.model_dump(mode="json")


def test_reported_losses_are_reproduced_from_the_saved_checkpoint(small_testbed):
    report, out = small_testbed
    model, tokenizer = load_model(out), AutoTokenizer.from_pretrained(out)
    for domain in EVAL_DOMAINS:
        assert mean_token_loss(model, *eval_rows(domain, tokenizer, report.config)) == pytest.approx(report.domain_losses[domain], abs=1e-3)


def test_trained_model_is_far_better_than_chance(small_testbed):
    report, _ = small_testbed
    assert report.ln_vocab == pytest.approx(math.log(report.vocab_size))
    for domain in ("wikitext", "python", "medical"):
        assert report.domain_losses[domain] < report.ln_vocab - 1.0, domain


def test_finished_build_is_reused_without_training(small_testbed):
    report, out = small_testbed
    steps = []
    again = build_testbed(report.config, out, on_step=steps.append)
    assert again == report and steps == []
    assert read_report(out) == report


def test_cached_build_of_another_config_is_not_silently_reused(small_testbed):
    report, out = small_testbed
    other = report.config.model_copy(update={"seed": report.config.seed + 1})
    with pytest.raises(ConfigError, match="another config; pass --force"):
        build_testbed(other, out)


def test_same_seed_gives_bit_identical_weights(tmp_path):
    cfg = preset("small").model_copy(update={"train_tokens": 2048, "corpus_chars": 20_000, "eval_tokens_per_domain": 64})
    a = build_testbed(cfg, tmp_path / "a")
    b = build_testbed(cfg, tmp_path / "b")
    assert a.domain_losses == b.domain_losses
    sa = load_model(tmp_path / "a").state_dict()
    sb = load_model(tmp_path / "b").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not (tmp_path / "a.partial").exists()

"""Tests for moeforge/profile/overhead.py: the timing report's shape (the figures themselves come from bench/)."""

import pytest
import torch

from moeforge.errors import ConfigError
from harness.overhead import profiling_overhead
from tests.model.tiny import tiny_model


def test_overhead_reports_each_pass_and_the_ratios_to_plain():
    model = tiny_model("deepseek_v2")
    result = profiling_overhead(model, torch.randint(3, 96, (4, 16)), batch_size=2, repeats=1)
    assert result["tokens"] == 64
    assert all(result[k] > 0 for k in ("plain_s", "profile_s", "profile_saliency_s"))
    assert result["ratio"] == result["profile_s"] / result["plain_s"]
    assert result["ratio_saliency"] == result["profile_saliency_s"] / result["plain_s"]
    assert all(not layer.mlp.experts._forward_hooks for layer in model.model.layers[1:]), "no hooks left behind"


def test_at_least_one_repeat():
    with pytest.raises(ConfigError, match="repeats"):
        profiling_overhead(tiny_model("olmoe"), torch.randint(3, 96, (1, 4)), repeats=0)

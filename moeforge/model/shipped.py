"""The real model configs shipped as data, so memory plans need no download.

Each file is the architecture part of the model's published config.json.
"""

import json
from importlib import resources

from moeforge.errors import ConfigError

SHIPPED_CONFIGS = ("deepseek-v2-lite", "deepseek-v3", "qwen3-30b-a3b", "mixtral-8x7b", "olmoe-1b-7b", "qwen1.5-moe-a2.7b")


def shipped_config(name: str):
    """The transformers config of a shipped model, e.g. 'deepseek-v2-lite'."""
    from transformers import AutoConfig

    if name not in SHIPPED_CONFIGS:
        raise ConfigError(f"no shipped config {name!r} (shipped: {', '.join(SHIPPED_CONFIGS)}).")
    fields = json.loads(resources.files("moeforge.model").joinpath("configs", f"{name}.json").read_text())
    return AutoConfig.for_model(fields.pop("model_type"), **fields)

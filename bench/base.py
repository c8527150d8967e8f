"""The base model every benchmark starts from: the testbed of a preset, built once and cached like `moeforge demo` does."""

import os
from dataclasses import dataclass
from pathlib import Path

from moeforge.model.load import load_model
from moeforge.testbed.build import build_testbed
from moeforge.testbed.config import preset


@dataclass(frozen=True)
class Base:
    folder: Path
    model: object
    tokenizer: object
    seq_len: int


def testbed_base(preset_name: str, folder: Path | None = None) -> Base:
    """The testbed of `preset_name` in `folder` (default: the moeforge cache), built if absent, loaded."""
    from transformers import AutoTokenizer

    cfg = preset(preset_name)
    home = Path(os.environ.get("MOEFORGE_HOME") or Path.home() / ".cache" / "moeforge")
    folder = folder or home / "testbed" / f"{preset_name}-{cfg.key()}"
    build_testbed(cfg, folder)
    return Base(folder, load_model(folder), AutoTokenizer.from_pretrained(folder), cfg.seq_len)

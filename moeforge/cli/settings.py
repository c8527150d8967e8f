"""Settings read once, at the CLI's entry point: where moeforge keeps its cached artifacts."""

import os
from pathlib import Path

from moeforge.testbed.config import TestbedConfig


def home() -> Path:
    """`$MOEFORGE_HOME`, or ~/.cache/moeforge."""
    return Path(os.environ.get("MOEFORGE_HOME") or Path.home() / ".cache" / "moeforge").expanduser()


def testbed_dir(preset: str, cfg: TestbedConfig) -> Path:
    """Where the testbed of this exact config is cached."""
    return home() / "testbed" / f"{preset}-{cfg.key()}"

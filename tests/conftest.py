"""Session fixtures shared across the suite: one small testbed build, made once."""

import pytest

from moeforge.testbed.build import build_testbed
from moeforge.testbed.config import preset


@pytest.fixture(scope="session")
def small_testbed(tmp_path_factory):
    """(report, checkpoint directory) of the 'small' testbed preset, built once per session."""
    out = tmp_path_factory.mktemp("testbed") / "small"
    steps = []
    report = build_testbed(preset("small"), out, on_step=steps.append)
    assert steps, "the session build must really train"
    return report, out

"""Session fixtures shared across the suite: one small testbed build, made once."""

import os

import pytest
import torch

from moeforge.testbed.build import build_testbed
from moeforge.testbed.config import preset


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where CUDA is absent; everything else runs on the CPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _own_home(tmp_path_factory):
    """MOEFORGE_HOME in a temp folder: nothing the suite remembers (data salts, caches) lands in the user's home."""
    previous = os.environ.get("MOEFORGE_HOME")
    os.environ["MOEFORGE_HOME"] = str(tmp_path_factory.mktemp("moeforge-home"))
    yield
    if previous is None:
        os.environ.pop("MOEFORGE_HOME", None)
    else:
        os.environ["MOEFORGE_HOME"] = previous


@pytest.fixture(scope="module", autouse=True)
def _own_module_library(tmp_path_factory):
    """An empty expert library per module, for the jobs a module's own fixtures run once: they are set up before any
    test's `_own_library`, and would otherwise share the session home's library with every earlier module in the
    worker (a job there warm-started from another module's deposit, and started near its drift budget)."""
    root = tmp_path_factory.mktemp("module-library")
    with pytest.MonkeyPatch.context() as patch:
        yield _library_in(root, patch)


@pytest.fixture(autouse=True)
def _own_library(tmp_path_factory, monkeypatch):
    """An empty expert library per test: a job's deposit or warm start never depends on which tests ran before it."""
    return _library_in(tmp_path_factory.mktemp("library"), monkeypatch)


def _library_in(root, patch):
    """Point moeforge's expert library (its catalog and its store) at a new, empty folder `root`."""
    patch.setenv("MOEFORGE_CATALOG", f"sqlite:///{root}/catalog.sqlite")
    patch.setenv("MOEFORGE_LIBRARY_STORE", str(root / "store"))
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The suite runs torch single-threaded, in its own processes and in those it starts (the Centre, a server, the
    CLI, through OMP_NUM_THREADS): its tiny models gain nothing from intra-op threads, and with the suite's workers
    on every core OpenMP threads spin-wait against each other (10-100× slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_testbed(tmp_path_factory):
    """(report, checkpoint directory) of the 'small' testbed preset, built once per session."""
    out = tmp_path_factory.mktemp("testbed") / "small"
    steps = []
    report = build_testbed(preset("small"), out, on_step=steps.append)
    assert steps, "the session build must really train"
    return report, out

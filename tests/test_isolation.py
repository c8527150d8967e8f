"""The suite's own isolation (tests/conftest.py): a job a module's fixture runs once sees a library of that module's
own, never the session home's, which every earlier module in the worker could have deposited into."""

import os

import pytest


@pytest.fixture(scope="module")
def module_catalog():
    """What a module-scoped fixture (say, one that runs a job) sees as the expert library's catalog."""
    return os.environ.get("MOEFORGE_CATALOG")


def test_a_module_fixture_sees_a_library_of_the_module_and_a_test_one_of_its_own(module_catalog):
    assert module_catalog is not None and "module-library" in module_catalog
    assert not module_catalog.startswith(f"sqlite:///{os.environ['MOEFORGE_HOME']}")
    assert os.environ["MOEFORGE_CATALOG"] != module_catalog  # the test's own library (`_own_library`) is another

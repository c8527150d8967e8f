"""A running Customization Centre on the session's small testbed, and maths data to give it."""

import json

import pytest

from harness.centre import centre


@pytest.fixture(scope="module")
def running_centre(small_testbed, tmp_path_factory):
    _, model = small_testbed
    c = centre(tmp_path_factory.mktemp("centre"), model).start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def maths_file(tmp_path_factory):
    """300 GSM8K training records as JSON lines (question, answer)."""
    from moeforge.data.corpora import load_corpus

    path = tmp_path_factory.mktemp("data") / "maths.jsonl"
    with open(path, "w") as f:
        for r in load_corpus("math", "train")[:300]:
            f.write(json.dumps({"question": r.prompt, "answer": r.response}) + "\n")
    return path

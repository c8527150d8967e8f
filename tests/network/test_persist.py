import os

import pytest

from moeforge.atomic import write_text
from moeforge.errors import ConfigError
from moeforge.network.persist import read_model, write_model
from moeforge.network.rating import RatingState


def test_a_model_written_atomically_reads_back_and_a_missing_file_is_none(tmp_path):
    path = tmp_path / "deep" / "state.json"
    assert read_model(path, RatingState) is None
    state = RatingState(round=3, ratings={"5Hot": 0.25})
    write_model(path, state)
    assert read_model(path, RatingState) == state
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_a_write_that_fails_midway_leaves_the_old_file_whole_and_no_temp_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "state.json", "old\n")

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_text(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_corrupt_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "state.json"
    path.write_text('{"round": "three"')
    with pytest.raises(ConfigError, match="state.json: not a valid RatingState file"):
        read_model(path, RatingState)

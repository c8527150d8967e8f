"""Tests for moeforge/profile/layer_json.py: JSON that reads back the same, one line per layer."""

import json

from moeforge.profile.layer_json import write_layer_json


def test_written_json_reads_back_identical_with_a_line_per_layer(tmp_path):
    data = {"version": 1, "name": "x", "empty": {}, "scores": {1: [0.5, 0.25, 0.25], 12: [1.0, 0.0, 0.0]}, "none": None}
    path = write_layer_json(tmp_path / "sub" / "f.json", data)
    assert json.loads(path.read_text()) == {**data, "scores": {"1": [0.5, 0.25, 0.25], "12": [1.0, 0.0, 0.0]}}
    lines = path.read_text().splitlines()
    assert '  "12": [1.0, 0.0, 0.0]' in lines and len(lines) == 1 + 4 + 4 + 1

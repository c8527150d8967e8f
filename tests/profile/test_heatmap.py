"""Tests for moeforge/profile/heatmap.py: a readable PNG per profile."""

import struct

from moeforge.profile.heatmap import plot_profile
from tests.profile.synthetic import make_profile, random_profile


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_heatmap_is_a_png_with_a_panel_per_score(tmp_path):
    three = _png_size(plot_profile(random_profile(range(1, 6), 8), tmp_path / "a" / "three.png"))
    two = _png_size(plot_profile(make_profile({1: [1, 3], 2: [2, 2]}, saliency=False), tmp_path / "two.png"))
    assert three[0] >= 600 and three[1] >= 500
    assert three[1] > two[1], "three panels are taller than two"


def test_heatmap_of_many_experts_and_layers_stays_a_sensible_size(tmp_path):
    width, height = _png_size(plot_profile(random_profile(range(1, 27), 64, tokens=2000), tmp_path / "big.png"))
    assert 1000 <= width <= 2500 and 1000 <= height <= 4000

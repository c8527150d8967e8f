import socket
import urllib.request

import pytest

from moeforge.errors import ConfigError
from moeforge.network.observe import METRICS_FILE, Observer, read_events


def test_events_are_json_lines_in_the_run_folder(tmp_path):
    obs = Observer("miner", "5Hot", tmp_path)
    obs.event("trained", "round 0: trained", round=0, loss=4.2)
    obs.event("committed", None, round=0, block=7)
    events = read_events(tmp_path)
    assert [e["event"] for e in events] == ["trained", "committed"]
    assert events[0]["role"] == "miner" and events[0]["hotkey"] == "5Hot" and events[0]["loss"] == 4.2


def test_each_role_counts_in_its_own_registry_and_writes_metrics_prom(tmp_path):
    a, b = Observer("validator", "5A", tmp_path / "a"), Observer("validator", "5B", tmp_path / "b")
    a.metric("moeforge_validator_verdicts_total").labels(verdict="copy").inc()
    with a.phase("score", timings := {}):
        pass
    a.flush_metrics()
    b.flush_metrics()
    text_a, text_b = ((tmp_path / d / METRICS_FILE).read_text() for d in ("a", "b"))
    assert 'moeforge_validator_verdicts_total{verdict="copy"} 1.0' in text_a and "verdicts_total{" not in text_b
    assert 'moeforge_phase_seconds_count{phase="score"} 1.0' in text_a and "score" in timings


def test_a_failure_is_counted_and_recorded(tmp_path):
    obs = Observer("owner", "5O", tmp_path)
    obs.failure("round", 2, RuntimeError("boom"))
    last = read_events(tmp_path)[-1]
    assert (last["event"], last["step"], last["round"], last["error"]) == ("failure", "round", 2, "RuntimeError: boom")
    assert obs.registry.get_sample_value("moeforge_failures_total", {"step": "round"}) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_are_served_over_http_and_a_taken_port_is_refused_naming_the_flag(tmp_path):
    port = _free_port()
    obs = Observer("miner", "5Hot", tmp_path, metrics_port=port)
    try:
        obs.metric("moeforge_miner_train_loss").set(3.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "moeforge_miner_train_loss 3.5" in body
        with pytest.raises(ConfigError, match=f"--metrics-port {port}"):
            Observer("miner", "5Other", tmp_path / "other", metrics_port=port)
    finally:
        obs.close()

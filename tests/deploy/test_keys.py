"""The local server's keys file: hashes only, expiry and revocation seen by a running `Keys` without a restart, and a
clear error (exit 1 from the CLI) for a bad file, a bad expiry or an unknown key id."""

import json
import stat
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app as cli
from moeforge.deploy.keys import Keys, create_key, expiry, read_keys, revoke_key, write_keys
from moeforge.errors import ConfigError


def test_a_keys_file_keeps_only_hashes_and_is_private(tmp_path):
    path = tmp_path / "keys.json"
    entry, key = create_key(path, "ops", "30d")
    text = path.read_text()
    assert key not in text and entry.sha256 in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert timedelta(days=29, hours=23) < entry.expires_at - entry.created_at <= timedelta(days=30)


def test_keys_see_a_new_a_revoked_and_an_expired_key_without_a_restart(tmp_path):
    path = tmp_path / "keys.json"
    a, key_a = create_key(path, "a")
    keys = Keys(["plain-key"], path)
    assert keys.check(key_a).ok and keys.check("plain-key").ok
    assert not keys.check("").ok and keys.check("nope").code == "invalid_api_key"
    b, key_b = create_key(path, "b", "1h")
    assert keys.check(key_b).ok
    revoke_key(path, a.id)
    assert keys.check(key_a).code == "revoked_api_key"
    file = read_keys(path)
    file.keys[1].expires_at = datetime.now(UTC) - timedelta(seconds=1)
    write_keys(path, file)
    verdict = keys.check(key_b)
    assert not verdict.ok and verdict.code == "expired_api_key" and b.id in verdict.message


def test_a_keys_file_broken_while_serving_keeps_the_last_good_reading(tmp_path, caplog):
    path = tmp_path / "keys.json"
    _, key = create_key(path, "a")
    keys = Keys([], path)
    path.write_text("{not json")
    assert keys.check(key).ok
    assert "unreadable" in caplog.text


@pytest.mark.parametrize("content, says", [
    ("{not json", "line 1"),
    ('{"keys": [{"id": "key-0000000g", "name": "x", "sha256": "' + "0" * 64 + '", "created_at": "2026-01-01T00:00:00Z"}]}', "keys.0.id"),
    ('{"keys": [{"id": "key-00000000", "name": "x", "sha256": "' + "0" * 64 + '", "created_at": "2026-01-01T00:00:00"}]}', "without a zone"),
    ('{"version": 2}', "version"),
    ('{"keys": [], "extra": 1}', "extra"),
])
def test_a_bad_keys_file_is_refused_at_start_naming_what_is_wrong(tmp_path, content, says):
    path = tmp_path / "keys.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)) as err:
        Keys([], path)
    assert says in str(err.value)


def test_expiry_reads_durations_and_iso_times_and_refuses_the_past_and_nonsense():
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert expiry("12h", now) == now + timedelta(hours=12) and expiry("90m", now) == now + timedelta(minutes=90)
    assert expiry("2027-01-31", now) == datetime(2027, 1, 31, tzinfo=UTC)
    assert expiry(None, now) is None
    for bad, says in [("0d", "more than 0"), ("2020-01-01", "passed"), ("soon", "expected a duration"), ("3w", "expected")]:
        with pytest.raises(ConfigError, match=says):
            expiry(bad, now)


def test_the_serve_key_cli_creates_lists_and_revokes_and_fails_cleanly(tmp_path):
    runner = CliRunner()
    path = tmp_path / "keys.json"
    made = runner.invoke(cli, ["serve-key", "create", "--keys", str(path), "--name", "ops", "--expires", "7d"])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    entry = json.loads(path.read_text())["keys"][0]
    assert key.startswith("sk-moeforge-") and entry["id"] in made.output
    listed = runner.invoke(cli, ["serve-key", "ls", "--keys", str(path)])
    assert listed.exit_code == 0 and "active" in listed.output and key not in listed.output
    gone = runner.invoke(cli, ["serve-key", "revoke", "--keys", str(path), entry["id"]])
    assert gone.exit_code == 0 and "revoked" in gone.output
    assert "revoked" in runner.invoke(cli, ["serve-key", "ls", "--keys", str(path)]).output
    for args, says in [(["revoke", "--keys", str(path), "key-ffffffff"], "no key 'key-ffffffff'"),
                       (["create", "--keys", str(path), "--name", "x", "--expires", "yesterday"], "--expires 'yesterday'"),
                       (["create", "--keys", str(path), "--name", "../x"], "name"),
                       (["ls", "--keys", str(tmp_path / "missing.json")], "no such server keys file")]:
        result = runner.invoke(cli, ["serve-key", *args])
        assert result.exit_code == 1 and says in " ".join(result.output.split()), (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit)

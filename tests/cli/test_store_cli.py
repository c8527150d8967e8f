"""Tests for moeforge/cli/store.py: `moeforge store put|get|verify|ls` through the root CLI."""

import hashlib
import os

import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app
from tests.store.conftest import BUCKET, s3_endpoint  # noqa: F401  (a fixture)

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, ["store", *map(str, args)], env=env)


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def files(tmp_path):
    """Two small artifact files and their digests."""
    out = []
    for name in ("delta-a.safetensors", "delta-b.safetensors"):
        path = tmp_path / name
        path.write_bytes(os.urandom(5000))
        out.append((path, hashlib.sha256(path.read_bytes()).hexdigest()))
    return out


def put(path, store_dir):
    result = invoke("put", path, "--store", store_dir.as_uri())
    assert result.exit_code == 0, result.output
    return result


def flip_a_byte(store_dir, digest):
    path = store_dir / "sha256" / digest[:2] / digest
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_put_get_verify_ls_round_trip(files, store_dir, tmp_path):
    for path, digest in files:
        assert put(path, store_dir).stdout.split() == [digest, "5000"]
    listed = invoke("ls", "--store", store_dir)
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == sorted(f"{digest}  5000" for _, digest in files)

    (path, digest), _ = files
    out = tmp_path / "fetched.bin"
    fetched = invoke("get", digest, "--out", out, "--store", store_dir)
    assert fetched.exit_code == 0, fetched.output
    assert out.read_bytes() == path.read_bytes()
    to_stdout = invoke("get", digest, "--store", store_dir)
    assert to_stdout.exit_code == 0 and to_stdout.stdout_bytes == path.read_bytes()

    verified = invoke("verify", "--store", store_dir)
    assert verified.exit_code == 0, verified.output
    assert "2 of 2 objects ok" in verified.stdout


def test_store_defaults_to_moeforge_store_from_the_environment(files, store_dir):
    (path, digest), _ = files
    env = {"MOEFORGE_STORE": store_dir.as_uri()}
    assert invoke("put", path, env=env).exit_code == 0
    assert (store_dir / "sha256" / digest[:2] / digest).is_file()
    assert invoke("ls", env=env).stdout.split() == [digest, "5000"]


def test_verify_reports_each_corrupt_object_and_exits_1(files, store_dir):
    (path_a, good), (path_b, bad) = files
    put(path_a, store_dir)
    put(path_b, store_dir)
    flip_a_byte(store_dir, bad)
    result = invoke("verify", "--store", store_dir)
    assert result.exit_code == 1
    reported = [line for line in result.stderr.splitlines() if line.startswith("bad:")]
    assert len(reported) == 1 and bad in reported[0] and "corrupt" in reported[0]
    assert good not in result.stderr
    assert "1 of 2 objects ok" in result.stdout
    assert invoke("verify", good, "--store", store_dir).exit_code == 0  # only the named objects are checked


def test_verify_of_a_missing_object_exits_1(store_dir):
    missing = hashlib.sha256(b"never stored").hexdigest()
    result = invoke("verify", missing, "--store", store_dir)
    assert result.exit_code == 1 and missing in result.stderr


def test_get_of_an_unknown_digest_is_one_error_line_and_exit_1(store_dir):
    missing = hashlib.sha256(b"never stored").hexdigest()
    result = invoke("get", missing, "--store", store_dir)
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert missing in line and "is not in store" in line
    assert "Traceback" not in result.output and result.stdout == ""


def test_get_of_a_malformed_digest_quotes_it(store_dir):
    result = invoke("get", "deadbeef", "--store", store_dir)
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "'deadbeef' is not an artifact digest" in line


def test_put_of_a_missing_file_is_one_error_line(tmp_path, store_dir):
    result = invoke("put", tmp_path / "nowhere.bin", "--store", store_dir)
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "nowhere.bin" in line


def test_unknown_store_scheme_is_one_error_line(files):
    (path, _), _ = files
    result = invoke("put", path, "--store", "ftp://host/store")
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "unknown scheme" in line and "s3://bucket/prefix" in line


def test_s3_store_takes_its_credentials_from_moeforge_settings(files, s3_endpoint, tmp_path):  # noqa: F811
    (path, digest), _ = files
    env = {
        "MOEFORGE_STORE": f"s3://{BUCKET}/cli?endpoint={s3_endpoint}",
        "MOEFORGE_S3_ACCESS_KEY": "cli-key",
        "MOEFORGE_S3_SECRET_KEY": "cli-secret",
        # boto3's own chain finds nothing, so the upload works only if the settings reached the store
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    assert invoke("put", path, env=env).stdout.split() == [digest, "5000"]
    assert invoke("get", digest, env=env).stdout_bytes == path.read_bytes()
    assert invoke("verify", env=env).exit_code == 0


@pytest.mark.parametrize("command", [[], ["put"], ["get"], ["verify"], ["ls"]])
def test_every_store_command_has_help(command):
    result = runner.invoke(app, ["store", *command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output

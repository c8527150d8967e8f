"""`moeforge bundle`: an export made air-gap ready; `sha256sum -c` and `moeforge bundle verify` check it offline and
name every missing, extra or altered file; the signature refuses another key; the wheelhouse installs with --no-index."""

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app

pytestmark = pytest.mark.slow
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def bundle(small_testbed, tmp_path_factory):
    _, model_dir = small_testbed
    tmp = tmp_path_factory.mktemp("bundle")
    for args in (("export", "--model", model_dir, "--data", "math", "--out", tmp / "export", "--k", 4, "--profile-tokens", 2048,
                  "--eval-tokens", 1024),
                 ("bundle", "keygen", "--out", tmp / "keys" / "pub.pem"),
                 ("bundle", "create", tmp / "export", "--out", tmp / "bundle", "--key", tmp / "keys" / "pub.pem", "--tar")):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    return tmp


def _copy(bundle, tmp_path):
    shutil.copytree(bundle / "bundle", tmp_path / "b")
    return tmp_path / "b"


def test_a_fresh_bundle_verifies_with_coreutils_and_with_the_pinned_key(bundle):
    done = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle / "bundle", capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model/model.safetensors: OK" in done.stdout and "bom.cdx.json: OK" in done.stdout
    result = invoke("bundle", "verify", bundle / "bundle", "--public-key", bundle / "keys" / "pub.pub")
    assert result.exit_code == 0 and "verified" in result.output, result.output
    assert (bundle / "bundle.tar").stat().st_size > 0


def test_verify_names_every_missing_extra_and_altered_file(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    (b / "model" / "README.md").unlink()
    (b / "model" / "extra.bin").write_bytes(b"x")
    data = bytearray((b / "model" / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (b / "model" / "model.safetensors").write_bytes(bytes(data))
    result = invoke("bundle", "verify", b)
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "missing: model/README.md" in out and "extra: model/extra.bin" in out and "altered: model/model.safetensors" in out
    assert "signature" in out


def test_another_publishers_key_is_refused(bundle, tmp_path):
    assert invoke("bundle", "keygen", "--out", tmp_path / "other.pem").exit_code == 0
    result = invoke("bundle", "verify", bundle / "bundle", "--public-key", tmp_path / "other.pub")
    assert result.exit_code == 1 and "signature does not verify" in " ".join(result.output.split())


def test_the_wheelhouse_installs_moeforge_with_no_index(bundle, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(bundle / "bundle" / "wheelhouse"),
                           "--no-deps", "moeforge"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lock = (bundle / "bundle" / "wheelhouse" / "requirements.lock").read_text()
    assert "torch==2.13.0" in lock and "transformers==5.24.0" in lock


def test_bundle_bad_input(bundle, tmp_path):
    cases = [
        (("bundle", "verify", tmp_path), "no SHA256SUMS"),
        (("bundle", "create", tmp_path, "--out", tmp_path / "o"), "not a moeforge export"),
        (("bundle", "keygen", "--out", bundle / "keys" / "pub.pem"), "exists already"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (args, result.output)

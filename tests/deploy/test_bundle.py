"""`moeforge bundle`: an export made air-gap ready; `sha256sum -c` and `moeforge bundle verify` check it offline and
name every missing, extra or altered file; the signature refuses another key; the wheelhouse installs the server with no network."""

import os
import platform
import re
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
                 ("bundle", "create", tmp / "export", "--out", tmp / "bundle", "--key", tmp / "keys" / "pub.pem", "--tar",
                  "--no-wheelhouse")):  # the wheelhouse (hundreds of MB) has a test of its own
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    return tmp


def _copy(bundle, tmp_path):
    shutil.copytree(bundle / "bundle", tmp_path / "b")
    return tmp_path / "b"


def test_a_fresh_bundle_verifies_with_coreutils_and_with_the_pinned_key(bundle):
    done = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=bundle / "bundle", capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "model/model.safetensors: OK" in done.stdout and "bom.cdx.json: OK" in done.stdout and "README.txt: OK" in done.stdout
    readme = (bundle / "bundle" / "README.txt").read_text()  # what a newcomer holding only the bundle reads first
    assert "sha256sum -c SHA256SUMS" in readme and "moeforge serve ." in readme and "carries no wheels" in readme
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


def test_the_wheelhouse_installs_the_server_with_no_network_and_it_serves_the_bundle(bundle, tmp_path):
    """In a network namespace with nothing but loopback, pip with no index and no configuration installs the server from
    the bundle's wheelhouse alone into a fresh virtual environment, whose `moeforge serve` then answers a chat request."""
    b = tmp_path / "bundle"
    result = invoke("bundle", "create", bundle / "export", "--out", b, "--key", bundle / "keys" / "pub.pem")
    assert result.exit_code == 0, result.output
    assert invoke("bundle", "verify", b, "--public-key", bundle / "keys" / "pub.pub").exit_code == 0
    lock = (b / "wheelhouse" / "requirements.lock").read_text().splitlines()
    assert {"transformers==5.24.0", "fastapi==0.163.2", "moeforge==0.1.0"} <= set(lock)
    assert any(pin.split("+")[0] == "torch==2.13.0" for pin in lock)  # the local build's tag, e.g. torch==2.13.0+cpu
    assert len(lock) == len(list((b / "wheelhouse").glob("*.whl")))
    readme = (b / "wheelhouse" / "README.txt").read_text()
    assert readme.count("--no-index --find-links wheelhouse") == 1 and f"Python {platform.python_version()}" in readme
    top = (b / "README.txt").read_text()
    assert "wheelhouse/README.txt" in top and "--no-index --find-links wheelhouse" in top and "carries no wheels" not in top
    venv, key = tmp_path / "venv", "sk-offline-install-test"
    script = f"""
set -e
ip link set lo up 2>/dev/null || true
{sys.executable} -m venv {venv}
cd {b}
{venv}/bin/pip install --quiet --no-index --find-links wheelhouse 'moeforge[serve,deploy]'
{venv}/bin/moeforge serve . --port 8793 --api-key {key} --ledger {tmp_path}/ledger --ledger-key {tmp_path}/k.pem &
for i in $(seq 1 600); do {venv}/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8793/health')" 2>/dev/null && break; sleep 0.2; done
{sys.executable} -c "
from openai import OpenAI
c = OpenAI(base_url='http://127.0.0.1:8793/v1', api_key='{key}', max_retries=0)
r = c.chat.completions.create(model='{b.name}', messages=[{{'role': 'user', 'content': 'hi'}}], max_tokens=4)
print('ANSWER', r.usage.completion_tokens)
"
kill %1
"""
    # no pip configuration (this machine's names an index and a folder of wheels) and no PIP_* variables
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull,
                                                                              "MOEFORGE_HOME": str(tmp_path / "home")}
    isolate = ["unshare", "-n"] if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    done = subprocess.run([*isolate, "bash", "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    answered = re.search(r"ANSWER (\d+)", done.stdout)
    assert answered and int(answered.group(1)) >= 1, done.stdout


def test_bundle_bad_input(bundle, tmp_path):
    cases = [
        (("bundle", "verify", tmp_path), "no SHA256SUMS"),
        (("bundle", "create", tmp_path, "--out", tmp_path / "o"), "not a moeforge export"),
        (("bundle", "keygen", "--out", bundle / "keys" / "pub.pem"), "exists already"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 1 and message in " ".join(result.output.split()), (args, result.output)

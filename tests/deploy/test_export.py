"""`moeforge export` on the small testbed: a standard checkpoint that plain transformers loads strictly in a fresh
virtual environment without moeforge, its sidecar, card and measured gaps; bad input is one line and exit 1."""

import json
import subprocess
import sys
import sysconfig

import pytest
import torch
from typer.testing import CliRunner

from moeforge.cli.main import app

pytestmark = pytest.mark.slow
runner = CliRunner()

_LOAD = """
import json, sys, torch
try:
    import moeforge
    print(json.dumps({"moeforge": True})); sys.exit(0)
except ImportError:
    pass
from transformers import AutoModelForCausalLM
model, info = AutoModelForCausalLM.from_pretrained(sys.argv[1], output_loading_info=True, local_files_only=True)
ids = torch.tensor([[5, 17, 33, 42, 8, 99, 12, 7]])
with torch.no_grad():
    logits = model.eval()(input_ids=ids).logits
print(json.dumps({"moeforge": False, "info": {k: sorted(map(str, v)) for k, v in info.items()}, "class": type(model).__name__,
                  "experts": model.config.n_routed_experts, "logits": logits[0, -1, :8].tolist()}))
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def delta(small_testbed, tmp_path_factory):
    """A real ESFT delta on the maths data (profile, select, train), as `moeforge train` writes it."""
    _, model_dir = small_testbed
    tmp = tmp_path_factory.mktemp("export")
    for args in (("profile", model_dir, "math", "--out", tmp / "prof", "--tokens", 4096, "--seq-len", 64),
                 ("select", tmp / "prof" / "profile.json", "--out", f"{tmp}/sel/"),
                 ("train", model_dir, tmp / "sel" / "expert_config.json", "--out", tmp / "run", "--tokens", 20_000, "--lr", "1e-2",
                  "--batch-size", 8, "--seq-len", 64, "--warm-start", "none")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    return model_dir, tmp / "run" / "delta"


def test_the_export_loads_strictly_with_plain_transformers_in_a_fresh_venv_without_moeforge(delta, tmp_path):
    from moeforge.deploy.export import SIDECAR
    from moeforge.model.load import load_model

    model_dir, delta_dir = delta
    out = tmp_path / "export"
    result = invoke("export", "--model", model_dir, "--delta", delta_dir, "--data", "math", "--out", out, "--coverage", 0.6,
                    "--profile-tokens", 4096, "--eval-tokens", 2048)
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / SIDECAR).read_text())
    assert sidecar["k"] < sidecar["num_experts"] and sidecar["routing"] == "denominator" and sidecar["approximate"]
    assert all(len(experts) == sidecar["k"] for experts in sidecar["layers"].values())
    assert {e["entry"] for experts in sidecar["layers"].values() for e in experts} <= {"delta", None}
    gaps = sidecar["gaps"]
    assert f"{gaps['standard_domain_loss']:.4f}" in result.output and f"{gaps['exact_domain_loss']:.4f}" in result.output
    card = (out / "README.md").read_text()
    assert "**approximate**" in card and f"{gaps['exact_domain_loss']:.4f}" in card and "routed_scaling_factor" in card

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = sysconfig.get_paths()["purelib"]  # transformers and torch from ours; moeforge's editable hook (a .pth) is not read
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", _LOAD, str(out)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": site, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["moeforge"] is False, "the fresh environment must not see moeforge"
    assert all(not v for v in loaded["info"].values()), loaded["info"]  # strict: nothing missing, unexpected or mismatched
    assert loaded["class"] == "DeepseekV2ForCausalLM" and loaded["experts"] == sidecar["k"]
    here = load_model(out)
    with torch.no_grad():
        want = here(input_ids=torch.tensor([[5, 17, 33, 42, 8, 99, 12, 7]])).logits[0, -1, :8]
    assert torch.allclose(torch.tensor(loaded["logits"]), want, atol=1e-5)


def test_the_exact_runtime_reproduces_the_measured_exact_loss(delta, tmp_path):
    from moeforge.data.corpora import load_corpus
    from moeforge.data.splits import split_records
    from moeforge.deploy.export import load_exact
    from moeforge.eval.domain import packed_rows, rows_loss
    from moeforge.cli.export import EXPORT_SALT
    from transformers import AutoTokenizer

    model_dir, delta_dir = delta
    out = tmp_path / "export"
    assert invoke("export", "--model", model_dir, "--delta", delta_dir, "--data", "math", "--out", out, "--k", 4,
                  "--profile-tokens", 4096, "--eval-tokens", 2048).exit_code == 0
    model, sidecar = load_exact(out)
    assert sidecar["k"] == 4
    tokenizer = AutoTokenizer.from_pretrained(out)
    held = split_records(load_corpus("math", "train"), EXPORT_SALT, validation=0.1, heldout=0.2).heldout
    rows = packed_rows(tokenizer, held, seq_len=64, max_tokens=2048 // 64 * 64)
    assert rows_loss(model, *rows).loss == pytest.approx(sidecar["gaps"]["exact_domain_loss"], abs=1e-6)


def test_bad_export_input_is_one_clear_line(delta, tmp_path):
    model_dir, delta_dir = delta
    cases = [
        (("--coverage", 1.5), "outside (0, 1]"),
        (("--coverage", 0), "outside (0, 1]"),
        (("--k", 1), "fewer experts than the router's top-k"),
        (("--score", "gate"), "expected token or saliency"),
        (("--entry", "abcdef12"), "no library entry 'abcdef12'"),
    ]
    for extra, message in cases:
        source = () if "--entry" in extra else ("--delta", delta_dir)
        result = invoke("export", "--model", model_dir, *source, "--data", "math", "--out", tmp_path / "x", "--profile-tokens", 1024,
                        *extra)
        assert result.exit_code == 1, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output, (extra, result.output)
    assert not (tmp_path / "x").exists()


def test_a_gap_budget_takes_k_below_the_coverage_while_calibration_loss_allows(delta, tmp_path):
    from moeforge.deploy.export import SIDECAR

    model_dir, delta_dir = delta
    common = ("--model", model_dir, "--delta", delta_dir, "--data", "math", "--coverage", 0.9, "--profile-tokens", 4096,
              "--eval-tokens", 2048)
    loose = invoke("export", *common, "--out", tmp_path / "loose", "--gap-budget", 0.5)
    plain = invoke("export", *common, "--out", tmp_path / "plain", "--gap-budget", 0)
    assert loose.exit_code == 0 and plain.exit_code == 0, loose.output + plain.output
    a, b = (json.loads((tmp_path / name / SIDECAR).read_text()) for name in ("loose", "plain"))
    assert b["k"] == b["coverage_k"] and a["coverage_k"] == b["coverage_k"]
    assert a["k"] == 2 < b["k"]  # a 50% budget on the calibration rows lets every K down to top-k through
    assert "the gap budget on calibration rows took it to K=2" in " ".join(loose.output.split())


def test_an_entry_trained_on_another_base_is_refused_naming_both_bases(delta, tmp_path):
    """A library entry deposited on a base whose weights differ (here: one norm weight nudged) cannot go into an export
    of this base: exit 1, one clear line naming the entry and both fingerprints, nothing written."""
    from harness.market import synthetic_entries
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.library.open import open_library
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.profile.stats import ProfileConfig, profile_records

    model_dir, _ = delta
    model, tokenizer = load_checkpoint(model_dir)
    base = model_fingerprint(model)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "norm" in n).add_(1e-3)
    other = model_fingerprint(model)
    assert other != base
    background = profile_records(model, tokenizer, load_corpus("wikitext", "train"),
                                 ProfileConfig(tokens=1024, seq_len=64, saliency=False), base_fingerprint=other)
    catalog, store = f"sqlite:///{tmp_path}/catalog.sqlite", str(tmp_path / "library")
    [entry] = synthetic_entries(open_library(catalog, store), model, background, 1, seed=3)
    result = invoke("export", "--model", model_dir, "--entry", entry[:12], "--data", "math", "--out", tmp_path / "x",
                    "--profile-tokens", 1024, "--catalog", catalog, "--library-store", store)
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in out, result.output
    assert f"library entry {entry[:12]}… was trained on base {other[:16]}…, not this base ({base[:16]}…)" in out, out
    assert not (tmp_path / "x").exists()

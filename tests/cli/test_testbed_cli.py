import re
import pytest
from typer.testing import CliRunner

from moeforge.cli.main import app
from moeforge.network.history import RESULT_FILE, JobRecord
from moeforge.network.job import JobSpec
from moeforge.network.owner import ENTRY_FILE, JOB_FILE

runner = CliRunner()


def test_build_reuses_the_cached_build_and_prints_domain_losses(small_testbed):
    report, out = small_testbed
    result = runner.invoke(app, ["testbed", "build", "--preset", "small", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for domain, loss in report.domain_losses.items():
        assert domain in result.output and f"{loss:.3f}" in result.output


@pytest.mark.slow
@pytest.mark.integration
def test_demo_reports_the_testbed_losses_and_runs_the_maths_job_through_a_local_network(small_testbed, tmp_path):
    report, out = small_testbed
    result = runner.invoke(app, ["demo", "--preset", "small", "--out", str(out), "--miners", "2", "--validators", "1",
                                 "--rounds", "1", "--eval-tokens", "1024", "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"{report.domain_losses['math']:.3f}" in result.output
    record = JobRecord.model_validate_json((tmp_path / "run" / "job" / RESULT_FILE).read_text())
    assert len(record.rounds) == 1 and record.heldout_loss_after < record.heldout_loss_before
    assert f"{record.heldout_loss_before:.4f}" in result.output and f"{record.heldout_loss_after:.4f}" in result.output
    assert "GSM8K test loss" in result.output and "after 1 network round " in result.output
    # the job went into the expert library; run again, the demo's job warm-starts from it and says so
    entry = (tmp_path / "run" / "job" / ENTRY_FILE).read_text().strip()
    assert "cold start" in result.output and f"expert library entry {entry[:12]}" in result.output
    # and deployed: exported right-sized, bundled and verified, served, one streamed answer metered in a verified ledger
    output = " ".join(result.output.split())
    assert "export: " in output and "verified: every file matches SHA256SUMS and the signature verifies" in output
    assert "assistant:" in output and "usage metered: 1 request" in output and "ledger verified" in output
    assert (tmp_path / "run" / "export" / "config.json").is_file() and (tmp_path / "run" / "bundle" / "SHA256SUMS").is_file()
    # and on the marketplace: listed at a price, licensed, its usage priced and split into a ledger that reconciles
    assert f"listed {entry[:12]}… as lst-" in output and "active" in output and "priced" in output
    reconciled = re.search(r"reconciliation \d{4}-\d{2}: revenue ([0-9.]+) = payouts [0-9.]+ \+ fee [0-9.]+: exact", output)
    assert reconciled and float(reconciled.group(1)) > 0, output
    again = runner.invoke(app, ["demo", "--preset", "small", "--out", str(out), "--miners", "2", "--validators", "1",
                                "--rounds", "1", "--eval-tokens", "1024", "--run", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert "warm start" in again.output and f"from library entry {entry[:12]}" in again.output
    assert "warm start (library experts)" in again.output  # its own row in the before/after table
    assert "records 1–1" in " ".join(again.output.split())  # the server's ledger of the day went on: its new record is priced
    job = JobSpec.model_validate_json((tmp_path / "again" / "job" / JOB_FILE).read_text())
    assert [w.entry for w in job.warm_start] == [entry]


def test_unknown_preset_is_refused(tmp_path):
    result = runner.invoke(app, ["testbed", "build", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown testbed preset 'huge'" in result.stderr
    assert not (tmp_path / "x").exists()

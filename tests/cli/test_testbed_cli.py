from typer.testing import CliRunner

from moeforge.cli.main import app

runner = CliRunner()


def test_build_reuses_the_cached_build_and_prints_domain_losses(small_testbed):
    report, out = small_testbed
    result = runner.invoke(app, ["testbed", "build", "--preset", "small", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for domain, loss in report.domain_losses.items():
        assert domain in result.output and f"{loss:.3f}" in result.output


def test_demo_reports_the_testbed_losses_and_runs_the_maths_job(small_testbed):
    report, out = small_testbed
    result = runner.invoke(app, ["demo", "--preset", "small", "--out", str(out), "--train-tokens", "2048",
                                 "--eval-tokens", "1024"])
    assert result.exit_code == 0, result.output
    assert f"{report.domain_losses['math']:.3f}" in result.output
    assert "ESFT on GSM8K" in result.output and "after ESFT" in result.output


def test_unknown_preset_is_refused(tmp_path):
    result = runner.invoke(app, ["testbed", "build", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown testbed preset 'huge'" in result.stderr
    assert not (tmp_path / "x").exists()

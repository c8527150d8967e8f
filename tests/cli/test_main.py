import subprocess
import sys

from typer.testing import CliRunner

from moeforge.cli.main import app

runner = CliRunner()


def test_every_command_has_help():
    for args in ([], ["testbed"], ["testbed", "build"], ["model"], ["model", "inspect"], ["model", "size"],
                 ["data"], ["data", "prepare"], ["eval"], ["profile"], ["select"], ["extract"], ["train"], ["demo"], ["chain"], ["chain", "metagraph"], ["store"], ["store", "verify"],
                 ["owner"], ["owner", "publish"], ["owner", "run"], ["miner"], ["miner", "run"], ["validator"],
                 ["validator", "run"], ["network"], ["network", "up"], ["library"],
                 *[["library", c] for c in ("ls", "show", "search", "lineage", "card", "retire", "verify", "add", "match",
                                            "combine", "migrate")],
                 ["export"], ["serve"], ["bundle"], ["bundle", "create"], ["bundle", "verify"], ["bundle", "keygen"], ["usage"],
                 ["usage", "report"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_user_error_is_one_red_line_and_exit_1_without_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    missing.mkdir()
    proc = subprocess.run([sys.executable, "-m", "moeforge", "model", "inspect", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "no config.json" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "moeforge", "--debug", "model", "inspect", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr

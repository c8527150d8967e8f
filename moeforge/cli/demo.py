"""`moeforge demo`: the pipeline as far as it exists, on the embedded defaults."""

from pathlib import Path

import typer

from moeforge.cli.testbed import build_or_reuse, print_report


def demo(
    preset_name: str = typer.Option("default", "--preset", help="Testbed preset to build or reuse."),
    out: Path | None = typer.Option(None, "--out", help="Testbed directory (default: the cache under $MOEFORGE_HOME)."),
) -> None:
    """Build or reuse the testbed base model and report its held-out loss per domain."""
    report, path = build_or_reuse(preset_name, out, force=False)
    print_report(report, path)

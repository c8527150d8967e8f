"""`moeforge testbed …`: build the small CPU base model and its tokenizer."""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.progress import training_bar
from moeforge.cli.settings import testbed_dir
from moeforge.testbed.config import PRESETS, preset

app = typer.Typer(no_args_is_help=True, help="Build the testbed base model (tokenizer + small DeepSeek-V2-class MoE).")
console = Console()


def build_or_reuse(preset_name: str, out: Path | None, force: bool):
    """(TestbedReport, directory) of the preset's testbed, built unless a finished build is cached."""
    from moeforge.testbed.build import build_testbed

    from moeforge.cli.inputs import output_dir

    cfg = preset(preset_name)
    out = output_dir(out, "--out") if out is not None else testbed_dir(preset_name, cfg)
    with training_bar(f"testbed[{preset_name}]", console) as on_step:
        report = build_testbed(cfg, out, force=force, on_step=on_step)
    return report, out


def print_report(report, out: Path) -> None:
    import math

    table = Table(title=f"testbed held-out loss per domain (ln vocab = {report.ln_vocab:.2f})")
    table.add_column("domain")
    table.add_column("loss", justify="right")
    table.add_column("perplexity", justify="right")
    for domain, loss in report.domain_losses.items():
        label = f"{domain} (never trained on)" if domain == "math" else domain
        table.add_row(label, f"{loss:.3f}", f"{math.exp(loss):,.1f}")
    console.print(table)
    console.print(
        f"{report.params:,} parameters · vocab {report.vocab_size} · {report.train_tokens:,} training tokens "
        f"in {report.train_seconds:.0f} s ({report.train_tokens_per_s:,.0f} tok/s) · {out}"
    )


@app.command("build")
def build(
    preset_name: str = typer.Option("default", "--preset", help=f"Build preset: {', '.join(PRESETS)}."),
    out: Path | None = typer.Option(None, "--out", help="Checkpoint directory (default: the cache under $MOEFORGE_HOME)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a finished build is cached."),
) -> None:
    """Train the tokenizer and testbed model (cached), then report held-out loss per domain."""
    report, path = build_or_reuse(preset_name, out, force)
    print_report(report, path)

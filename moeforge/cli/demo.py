"""`moeforge demo`: the pipeline as far as it exists, on the embedded defaults.

1. build (or reuse) the testbed base model; 2. a maths job on GSM8K through a local network:
the owner profiles the routing and selects experts by ESFT-Token, miners (one per memory mode)
train them in rounds, validators score every update on held-out data and merge the best; then
3. GSM8K test loss and WikiText-2 perplexity of the base model and of the job's final experts.
"""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.inputs import DeviceOption
from moeforge.cli.testbed import build_or_reuse, print_report

console = Console()

_SMALL_JOB = dict(  # the small testbed trains in a blink: fewer and stronger steps, smaller samples
    inner_steps=10,
    train={"lr": 1e-2, "batch_size": 8, "warmup_steps": 1, "weight_decay": 0.0, "checkpoint_every": 0},
    profile_tokens=4096, score_rows=16, merge_rows=16, report_rows=32,
)
JOB_DEFAULTS = {"default": {}, "small": _SMALL_JOB}  # per testbed preset; JobRequest's own defaults fit "default"


def demo(
    preset_name: str = typer.Option("default", "--preset", help="Testbed preset to build or reuse."),
    out: Path | None = typer.Option(None, "--out", help="Testbed directory (default: the cache under $MOEFORGE_HOME)."),
    miners: int = typer.Option(3, "--miners", min=1, help="Miner processes (memory modes full, quantized, subset in turn)."),
    validators: int = typer.Option(2, "--validators", min=1, help="Validator processes (stake 100, 50, …)."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds of the maths job."),
    eval_tokens: int = typer.Option(32_768, "--eval-tokens", min=2, help="Tokens scored per GSM8K test loss and WikiText-2 perplexity."),
    run: Path | None = typer.Option(None, "--run", help="Network run folder (default: $MOEFORGE_HOME/network/<time>)."),
    device: DeviceOption = "auto",
) -> None:
    """Build or reuse the testbed, run a GSM8K maths job through a local network, and report before/after."""
    from moeforge.cli.job_view import print_record
    from moeforge.cli.network import start_and_follow

    report, path = build_or_reuse(preset_name, out, force=False)
    print_report(report, path)
    console.print("[bold]maths job (GSM8K) through a local network[/bold]: the owner selects experts by ESFT-Token (p=0.2); "
                  "miners train them, validators score every update on held-out data and merge the best")
    record, net = start_and_follow(
        miners=miners, validators=validators, modes=None, model=path, preset_name=preset_name, data="math",
        data_options={"prompt_field": None, "response_field": None, "text_field": None}, run=run, store=None, chain=None,
        config=None, metrics_port=None, flags={"rounds": rounds, "job_id": "demo-maths"},
        defaults=JOB_DEFAULTS.get(preset_name, {}), device=device,
    )
    print_record(record, console, net.names())
    _before_after(path, report.config.seq_len, record, net, eval_tokens, device)
    console.print(f"run folder: {net.plan.run_dir}", highlight=False, soft_wrap=True)


def _before_after(model_dir: Path, seq_len: int, record, net, eval_tokens: int, device: str) -> None:
    """GSM8K test loss and WikiText-2 perplexity with the base experts, then with the job's final experts."""
    from moeforge.cli import settings
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.eval.domain import domain_loss
    from moeforge.eval.general import general_perplexity
    from moeforge.model.slices import apply_slice, extract_slice
    from moeforge.network.state import StateRef, fetch_state
    from moeforge.store.open import open_store

    model, tokenizer = load_checkpoint(model_dir, device)
    test_records = load_corpus("math", "test")

    def scores() -> tuple[float, float]:
        maths = domain_loss(model, tokenizer, test_records, seq_len=seq_len, max_tokens=eval_tokens).loss
        return maths, general_perplexity(model, tokenizer, seq_len=seq_len, max_tokens=eval_tokens).perplexity

    before = scores()
    job = net.job()
    store = open_store(net.store_url, credentials=settings.s3_credentials())
    final = StateRef(sha256=record.final_state_sha256, digest=record.final_state_digest, round=len(record.rounds) - 1)
    apply_slice(model, fetch_state(store, final, job=job, reference=extract_slice(model, job.slots, job.base_fingerprint)))
    after = scores()
    table = Table(title=f"the job's {len(job.slots)} experts on data no role trained or scored on")
    for col in ("", "GSM8K test loss", "WikiText-2 perplexity"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("base", f"{before[0]:.3f}", f"{before[1]:.2f}")
    n = len(record.rounds)
    table.add_row(f"after {n} network round{'s' if n != 1 else ''}", f"{after[0]:.3f}",
                  f"{after[1]:.2f} ({100 * (after[1] / before[1] - 1):+.1f}%)")
    console.print(table)

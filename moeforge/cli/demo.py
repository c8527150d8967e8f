"""`moeforge demo`: the pipeline as far as it exists, on the embedded defaults.

1. build (or reuse) the testbed base model; 2. a maths job on GSM8K: profile the routing,
select experts by ESFT-Token, train only those experts, and compare held-out maths loss and
WikiText-2 perplexity before and after.
"""

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.progress import training_bar
from moeforge.cli.testbed import build_or_reuse, print_report

console = Console()


def demo(
    preset_name: str = typer.Option("default", "--preset", help="Testbed preset to build or reuse."),
    out: Path | None = typer.Option(None, "--out", help="Testbed directory (default: the cache under $MOEFORGE_HOME)."),
    train_tokens: int = typer.Option(200_000, "--train-tokens", help="ESFT training budget for the maths job."),
    eval_tokens: int = typer.Option(32_768, "--eval-tokens", help="Tokens scored per held-out loss."),
) -> None:
    """Build or reuse the testbed, then run a GSM8K maths job with ESFT and report before/after."""
    report, path = build_or_reuse(preset_name, out, force=False)
    print_report(report, path)
    _maths_job(path, report.config.seq_len, train_tokens, eval_tokens)


def _maths_job(model_dir: Path, seq_len: int, train_tokens: int, eval_tokens: int) -> None:
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.data.formatting import encode_records
    from moeforge.data.packing import pack_examples
    from moeforge.eval.domain import domain_loss
    from moeforge.eval.general import general_perplexity
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.model.slices import apply_slice
    from moeforge.profile.selection import SelectConfig, select_experts
    from moeforge.profile.stats import ProfileConfig, profile_records
    from moeforge.train.config import TrainConfig
    from moeforge.train.esft import train_experts

    model, tokenizer = load_checkpoint(model_dir)
    fingerprint = model_fingerprint(model)
    train_records, test_records = load_corpus("math", "train"), load_corpus("math", "test")

    def scores() -> tuple[float, float]:
        maths = domain_loss(model, tokenizer, test_records, seq_len=seq_len, max_tokens=eval_tokens).loss
        return maths, general_perplexity(model, tokenizer, seq_len=seq_len, max_tokens=eval_tokens).perplexity

    console.print("[bold]maths job (GSM8K)[/bold]: profiling routing, selecting experts by ESFT-Token (p=0.2)")
    profile = profile_records(model, tokenizer, train_records, ProfileConfig(seq_len=seq_len, saliency=False),
                              base_fingerprint=fingerprint)
    selection = select_experts(profile, SelectConfig(score="token"))
    before = scores()
    packed = pack_examples(encode_records(train_records, tokenizer), seq_len, tokenizer.pad_token_id)
    cfg = TrainConfig(lr=1e-3, tokens=train_tokens, batch_size=16, warmup_steps=5, weight_decay=0.0, checkpoint_every=0)
    with training_bar(f"ESFT ({selection.count} experts)", console) as on_step:
        delta, result = train_experts(model, selection.slots(), packed, cfg, base_fingerprint=fingerprint, on_step=on_step)
    apply_slice(model, delta)
    after = scores()
    table = Table(title=f"ESFT on GSM8K: {selection.count} of {profile.num_experts * len(profile.layers)} routed experts "
                        f"({100 * selection.share:.1f}%), {result.trainable_params:,} trained parameters")
    for col in ("", "held-out maths loss", "WikiText-2 perplexity"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("base", f"{before[0]:.3f}", f"{before[1]:.2f}")
    table.add_row("after ESFT", f"{after[0]:.3f}", f"{after[1]:.2f}")
    console.print(table)
    console.print(f"{result.tokens:,} training tokens at {result.tokens_per_s:,.0f} tok/s")

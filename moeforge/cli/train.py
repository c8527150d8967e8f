"""`moeforge train`: ESFT on a job's data — train only the selected experts, write the delta."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from moeforge.cli.inputs import DeviceOption, job_records, load_checkpoint, output_dir, selected_on, validated
from moeforge.cli.progress import training_bar
from moeforge.data.corpora import DOMAINS
from moeforge.errors import ConfigError

console = Console()
DELTA_DIR = "delta"
RUN_DIR = "run"


def train(
    model: Annotated[Path, typer.Argument(help="Base model: a checkpoint directory with its tokenizer.")],
    experts: Annotated[Path, typer.Argument(help="Expert config JSON written by `moeforge select`.")],
    out: Annotated[Path, typer.Option("--out", help=f"Folder for the delta ({DELTA_DIR}/) and the run ({RUN_DIR}/).")],
    data: Annotated[str, typer.Option(help=f"A data file, or a vendored corpus ({', '.join(DOMAINS)}; its train split).")] = "math",
    prompt_field: Annotated[str | None, typer.Option(help="Data file field with the prompt (loss masked).")] = None,
    response_field: Annotated[str | None, typer.Option(help="Data file field with the response to learn.")] = None,
    text_field: Annotated[str | None, typer.Option(help="Data file field with plain text.")] = None,
    tokens: Annotated[int, typer.Option(help="Training token budget.")] = 300_000,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Packed rows per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed row.")] = 256,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the run's last checkpoint.")] = True,
    device: DeviceOption = "auto",
) -> None:
    """Train only the selected routed experts on the data; write the exact delta (new − base)."""
    from moeforge.data.formatting import encode_records
    from moeforge.data.packing import pack_examples
    from moeforge.model.slices import save_slice
    from moeforge.profile.selection import load_expert_config
    from moeforge.train.config import TrainConfig
    from moeforge.train.esft import train_experts

    output_dir(out, "--out")
    cfg = validated(TrainConfig, tokens=tokens, lr=lr, batch_size=batch_size, grad_accum=grad_accum, checkpoint_every=25)
    selection = load_expert_config(experts)
    records = job_records(data, "train", prompt_field=prompt_field, response_field=response_field, text_field=text_field)
    base, tokenizer = load_checkpoint(model, device)
    limit = getattr(base.config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's max_position_embeddings {limit}.")
    selection.check_against(base)
    fingerprint = selected_on(selection, experts, base, model)
    packed = pack_examples(encode_records(records, tokenizer), seq_len, tokenizer.pad_token_id)
    with training_bar(f"ESFT ({selection.count} experts)", console) as on_step:
        delta, result = train_experts(
            base, selection.slots(), packed, cfg, base_fingerprint=fingerprint, run_dir=out / RUN_DIR,
            on_step=on_step, resume=resume,
        )
    save_slice(delta, out / DELTA_DIR)
    console.print(
        f"trained {selection.count} experts ({result.trainable_params:,} parameters) on {result.tokens:,} tokens · "
        f"final loss {result.final_loss:.3f} · {result.tokens_per_s:,.0f} tok/s · wrote {out / DELTA_DIR}"
    )

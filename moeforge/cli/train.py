"""`moeforge train`: ESFT on a job's data — train only the selected experts, write the delta."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from moeforge.cli.inputs import (
    DataSaltOpt,
    DeviceOption,
    MessagesFieldOpt,
    PromptFieldOpt,
    ResponseFieldOpt,
    TextFieldOpt,
    load_checkpoint,
    output_dir,
    selected_on,
    split_data,
    validated,
)
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
    data: Annotated[str, typer.Option(help=(
        f"A data file (its train split; `eval` then scores its held-out split), or a vendored corpus ({', '.join(DOMAINS)}; "
        "its train split)."))] = "math",
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    messages_field: MessagesFieldOpt = None,
    salt: DataSaltOpt = None,
    tokens: Annotated[int, typer.Option(help="Training token budget.")] = 300_000,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(help="Packed rows per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    seq_len: Annotated[int, typer.Option(help="Tokens per packed row.")] = 256,
    resume: Annotated[bool | None, typer.Option(
        "--resume/--no-resume",
        help="Continue the run already in --out from its last checkpoint, or start it over. Required when --out holds a run.",
    )] = None,
    device: DeviceOption = "auto",
) -> None:
    """Train only the selected routed experts on the data; write the exact delta (new − base)."""
    from moeforge.atomic import write_text
    from moeforge.data.formatting import encode_records
    from moeforge.data.packing import pack_examples
    from moeforge.data.salts import SPLIT_FILE
    from moeforge.model.slices import save_slice
    from moeforge.profile.selection import load_expert_config
    from moeforge.train.config import TrainConfig
    from moeforge.train.esft import train_experts
    from moeforge.train.metrics import FINAL_LOSS_STEPS

    output_dir(out, "--out")
    if resume is None and (out / RUN_DIR).exists():
        raise ConfigError(f"--out {out} already holds a training run ({out / RUN_DIR}): pass --resume to continue it from its "
                          "last checkpoint, --no-resume to start it over, or another --out.")
    cfg = validated(TrainConfig, tokens=tokens, lr=lr, batch_size=batch_size, grad_accum=grad_accum, checkpoint_every=25)
    selection = load_expert_config(experts)
    records, note = split_data(data, "train", salt=salt, prompt_field=prompt_field, response_field=response_field,
                               text_field=text_field, messages_field=messages_field)
    console.print(f"training on {escape(note.describe())}", highlight=False, soft_wrap=True)
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
            on_step=on_step, resume=bool(resume),
        )
    save_slice(delta, out / DELTA_DIR)
    write_text(out / SPLIT_FILE, note.model_dump_json(indent=2) + "\n")
    console.print(
        f"trained {selection.count} experts ({result.trainable_params:,} parameters) on {result.tokens:,} tokens · "
        f"final loss {result.final_loss:.3f} (mean of the last {min(FINAL_LOSS_STEPS, len(result.history))} steps) · "
        f"{result.tokens_per_s:,.0f} tok/s · wrote {out / DELTA_DIR} and {out / SPLIT_FILE}", highlight=False, soft_wrap=True,
    )

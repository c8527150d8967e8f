"""`moeforge train`: ESFT on a job's data — train only the selected experts, write the delta."""

import json
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
WARM_FILE = "warm_start.json"  # the library entries the experts started from (the lineage `library add` records)


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
    warm_start: Annotated[str, typer.Option("--warm-start", help=(
        "Start the selected experts from the expert library: auto (the best match for the data above the similarity "
        "threshold that lowers its loss), none (the base's experts), or entry ids best first, comma-separated."))] = "auto",
    catalog: Annotated[str | None, typer.Option("--catalog", help="The library's catalog (see `moeforge library --help`).")] = None,
    library_store: Annotated[str | None, typer.Option("--library-store", help="The library's blob store.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Train only the selected routed experts on the data; write the exact delta (new − base, warm start included)."""
    from moeforge.atomic import write_text
    from moeforge.data.formatting import encode_records
    from moeforge.data.packing import pack_examples
    from moeforge.data.salts import SPLIT_FILE
    from moeforge.model.slices import apply_slice, extract_slice, make_delta, save_slice
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
    original = extract_slice(base, selection.slots(), fingerprint)
    sources = _warm_start(warm_start, base, tokenizer, records, fingerprint, seq_len, selection, catalog, library_store)
    with training_bar(f"ESFT ({selection.count} experts)", console) as on_step:
        step, result = train_experts(
            base, selection.slots(), packed, cfg, base_fingerprint=fingerprint, run_dir=out / RUN_DIR,
            on_step=on_step, resume=bool(resume),
        )
    apply_slice(base, step)
    delta = make_delta(original, extract_slice(base, selection.slots(), fingerprint))  # from the base, not the warm start
    save_slice(delta, out / DELTA_DIR)
    write_text(out / WARM_FILE, json.dumps({"warm_start": [{"entry": s.entry, "slots": s.slots} for s in sources]}, indent=2) + "\n")
    write_text(out / SPLIT_FILE, note.model_dump_json(indent=2) + "\n")
    console.print(
        f"trained {selection.count} experts ({result.trainable_params:,} parameters) on {result.tokens:,} tokens · "
        f"final loss {result.final_loss:.3f} (mean of the last {min(FINAL_LOSS_STEPS, len(result.history))} steps) · "
        f"{result.tokens_per_s:,.0f} tok/s · wrote {out / DELTA_DIR} and {out / SPLIT_FILE}", highlight=False, soft_wrap=True,
    )


def _warm_start(choice: str, base, tokenizer, records, fingerprint: str, seq_len: int, selection, catalog, library_store):
    """Write the warm start's weights into `base` (library/warm.py); the sources it used. A library with no match, or an
    absent one under `auto`, starts from the base's experts."""
    import re

    if choice == "none":
        return []
    if choice != "auto" and not re.fullmatch(r"[0-9a-f]{6,64}(,[0-9a-f]{6,64})*", choice):
        raise ConfigError(f"--warm-start {choice!r}: expected auto, none, or entry ids (6+ hex characters) separated by commas.")
    from moeforge.cli.library import open_library_urls
    from moeforge.library.match import chosen, match_records
    from moeforge.library.warm import warm_start

    library = open_library_urls(catalog, library_store)
    if choice == "auto":
        ranking = match_records(library, base, tokenizer, records, fingerprint, seq_len=seq_len,
                                selected={(s.layer, s.expert) for s in selection.slots()})
        picked = chosen(ranking)
        if not picked:
            console.print("warm start: no library entry matches this data; starting from the base's experts")
            return []
        console.print(f"warm start: library entry {picked[0].entry[:12]}… ({escape(picked[0].domain)}), {picked[0].why()}",
                      highlight=False, soft_wrap=True)
        entries = [picked[0].entry]
    else:
        entries = choice.split(",")
    sources = warm_start(base, library, entries, selection.slots(), fingerprint)
    for s in sources:
        console.print(f"warm start: {s.slots} of {selection.count} experts from {s.entry[:12]}…", highlight=False)
    return sources

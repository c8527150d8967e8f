"""`moeforge profile` and `moeforge select`: how a base model routes a domain, then ESFT's choice of experts.

Two plain functions; `cli/main.py` registers them as top-level commands. Heavy modules (torch,
transformers, matplotlib) are imported inside them so `moeforge --help` stays fast.
"""

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from moeforge.cli.inputs import (
    DataSaltOpt,
    DeviceOption,
    MessagesFieldOpt,
    PromptFieldOpt,
    ResponseFieldOpt,
    TextFieldOpt,
    load_checkpoint,
    output_dir,
    output_file,
    split_data,
    validated,
)
from moeforge.data.corpora import DOMAINS
from moeforge.errors import ConfigError

log = logging.getLogger(__name__)
console = Console()

PROFILE_FILE = "profile.json"
HEATMAP_FILE = "heatmap.png"
EXPERT_CONFIG_FILE = "expert_config.json"
_SHOWN_TOP = 4  # experts listed per layer in the profile table


def profile(
    model: Annotated[str, typer.Argument(help="Base model: a checkpoint directory with its tokenizer.")],
    data: Annotated[
        Path,
        typer.Argument(
            help=f"Domain data: a .jsonl/.csv/.txt/.parquet file or saved HF dataset, "
            f"or a vendored corpus ({', '.join(DOMAINS)}; its train split). A file's train split is profiled (as `train` uses)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help=f"Folder for {PROFILE_FILE} and {HEATMAP_FILE}.")],
    tokens: Annotated[int, typer.Option(help="Real tokens to profile (ESFT: 131,072).")] = 131_072,
    batch_size: Annotated[int, typer.Option(help="Packed rows per forward pass.")] = 8,
    seq_len: Annotated[
        int | None, typer.Option(help="Tokens per packed row (default: the model's context, at most 256).")
    ] = None,
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    messages_field: MessagesFieldOpt = None,
    salt: DataSaltOpt = None,
    no_saliency: Annotated[
        bool, typer.Option("--no-saliency", help="Skip REAP saliency (saves one pass through the routed experts).")
    ] = False,
    device: DeviceOption = "auto",
) -> None:
    """Profile how the base model routes DATA: per layer and expert, token share, gate score and saliency."""
    from moeforge.profile.heatmap import plot_profile
    from moeforge.profile.profile_file import save_profile
    from moeforge.profile.stats import ProfileConfig, profile_records

    config = validated(ProfileConfig, tokens=tokens, seq_len=seq_len, batch_size=batch_size, saliency=not no_saliency)
    output_dir(out, "--out")
    records, note = split_data(str(data), "train", flag="DATA", salt=salt, prompt_field=prompt_field,
                               response_field=response_field, text_field=text_field, messages_field=messages_field)
    console.print(f"profiling {escape(note.describe())}", highlight=False, soft_wrap=True)
    base, tokenizer = load_checkpoint(model, device)
    with _profiling_bar() as on_batch:
        result = profile_records(base, tokenizer, records, config, on_batch=on_batch)
    out.mkdir(parents=True, exist_ok=True)
    save_profile(result, out / PROFILE_FILE)
    plot_profile(result, out / HEATMAP_FILE)
    _print_profile(result)
    console.print(f"{result.tokens:,} tokens profiled · wrote {out / PROFILE_FILE} and {out / HEATMAP_FILE}")


def select(
    profile_path: Annotated[Path, typer.Argument(help=f"A {PROFILE_FILE} written by `moeforge profile`.")],
    out: Annotated[
        str, typer.Option("--out", help=f"Expert config JSON to write (a folder, or a path ending in /, gets {EXPERT_CONFIG_FILE}).")
    ],
    score: Annotated[Literal["token", "gate", "saliency"], typer.Option(help="Score to rank experts by.")] = "token",
    p: Annotated[
        float | None, typer.Option("--p", help="Cumulative score to reach per layer (default: token 0.2, gate 0.1).")
    ] = None,
    min_per_layer: Annotated[int, typer.Option(help="Fewest experts per layer.")] = 1,
    max_per_layer: Annotated[int | None, typer.Option(help="Most experts per layer.")] = None,
) -> None:
    """Choose the experts to train: per layer, the smallest top set whose score reaches p (ESFT)."""
    from moeforge.profile.profile_file import load_profile
    from moeforge.profile.selection import SelectConfig, save_expert_config, select_experts

    config = validated(SelectConfig, score=score, p=p, min_per_layer=min_per_layer, max_per_layer=max_per_layer)
    target = _selection_target(out)
    routing = load_profile(profile_path)
    if config.min_per_layer > routing.num_experts:
        raise ConfigError(f"--min-per-layer {config.min_per_layer}: {profile_path} has only {routing.num_experts} "
                          "routed experts per layer. Pass a smaller --min-per-layer.")
    selected = select_experts(routing, config)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_expert_config(selected, target)
    _print_selection(selected, routing)
    console.print(
        f"selected {selected.count} of {routing.num_experts * len(routing.layers)} routed experts "
        f"({100 * selected.share:.1f}%) by {config.score} score, p={config.threshold:g} · wrote {target}"
    )


@contextmanager
def _profiling_bar() -> Iterator[Callable]:
    """A rich bar over the tokens profiled; yields the on_batch callback that feeds it."""
    columns = (
        TextColumn("[bold]profiling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens · batch {task.fields[batch]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("profiling", total=None, batch="")

        def on_batch(info) -> None:  # a moeforge.profile.stats.BatchInfo
            progress.update(task, total=info.total_tokens, completed=info.tokens, batch=f"{info.batch}/{info.batches}")

        yield on_batch


def _selection_target(out: str) -> Path:
    """The expert config file --out OUT names: OUT itself, or OUT/expert_config.json for a folder or a path ending in /."""
    if out.endswith(("/", os.sep)) or Path(out).is_dir():
        folder = Path(out)
        return output_dir(folder, "--out") / EXPERT_CONFIG_FILE
    return output_file(Path(out), "--out")


def _print_profile(routing) -> None:  # a RoutingProfile
    from moeforge.profile.selection import DEFAULT_P, top_p_experts

    title = f"{routing.model_type}: routing of {routing.tokens:,} tokens (top-{routing.top_k} of {routing.num_experts})"
    table = Table(title=title, caption="the last two columns: experts needed to reach p in the layer")
    table.add_column("layer", justify="right")
    table.add_column("top experts (token share)")
    table.add_column(f"token p={DEFAULT_P['token']:g}", justify="right")
    table.add_column(f"gate p={DEFAULT_P['gate']:g}", justify="right")
    for layer in routing.layers:
        shares = routing.token[layer]
        top = sorted(range(len(shares)), key=lambda e: (-shares[e], e))[:_SHOWN_TOP]
        table.add_row(
            str(layer),
            "  ".join(f"{e}:{100 * shares[e]:.1f}%" for e in top),
            str(len(top_p_experts(shares, DEFAULT_P["token"]))),
            str(len(top_p_experts(routing.gate[layer], DEFAULT_P["gate"]))),
        )
    console.print(table)


def _print_selection(selected, routing) -> None:  # an ExpertConfig and its RoutingProfile
    scores = routing.scores(selected.score_function)
    table = Table(title=f"experts selected by {selected.score_function} score, p={selected.p:g}")
    table.add_column("layer", justify="right")
    table.add_column("selected", justify="right")
    table.add_column("experts")
    table.add_column("score held", justify="right")
    for layer, ids in sorted(selected.experts.items()):
        held = sum(scores[layer][e] for e in ids)
        table.add_row(str(layer), f"{len(ids)} / {routing.num_experts}", " ".join(map(str, ids)), f"{100 * held:.1f}%")
    console.print(table)

"""`moeforge model …`: look inside an MoE checkpoint, size one from its config alone, or plan a miner's device memory."""

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from moeforge.errors import ConfigError
from moeforge.model.shipped import SHIPPED_CONFIGS, shipped_config


app = typer.Typer(no_args_is_help=True, help="Inspect MoE models and plan their memory.")
console = Console()


@app.command("inspect")
def inspect(
    source: str = typer.Argument(..., help="Checkpoint directory or hub id."),
    online: bool = typer.Option(False, "--online", help="Allow downloading from a model hub."),
) -> None:
    """Load a checkpoint strictly and list its MoE layers, experts and size."""
    from moeforge.model.families import moe_layers
    from moeforge.model.load import load_model
    from moeforge.model.sizing import size_of_model

    model = load_model(source, online=online)
    table = Table(title=f"{type(model).__name__} ({model.config.model_type})")
    for col in ("layer", "routed experts", "top-k", "shared experts", "router"):
        table.add_column(col, justify="right" if col != "router" else "left")
    for layer in moe_layers(model):
        table.add_row(str(layer.index), str(layer.num_experts), str(layer.top_k), str(layer.num_shared), type(layer.router).__name__)
    console.print(table)
    _print_size(size_of_model(model))


@app.command("size")
def size(
    config: str = typer.Argument(..., help=f"A shipped config ({', '.join(SHIPPED_CONFIGS)}), a config.json, or a checkpoint directory."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Dtype to count bytes in: bfloat16, float16 or float32."),
) -> None:
    """Exact parameter and byte counts from a config alone (built on the meta device)."""
    import torch

    from moeforge.model.sizing import size_of_config

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype not in dtypes:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(dtypes)}.")
    _print_size(size_of_config(_config(config), dtype=dtypes[dtype]))


@app.command("plan")
def plan(
    config: str = typer.Argument(..., help=f"A shipped config ({', '.join(SHIPPED_CONFIGS)}), a config.json, or a checkpoint directory."),
    mode: str | None = typer.Option(None, "--mode", help="full, quantized, subset or offload; default: one row per mode."),
    parts: int = typer.Option(1, "--parts", "--part", help="Miners the selected experts are split between; the plan is for the largest part."),
    batch: int = typer.Option(1, "--batch", help="Rows per micro-batch."),
    seq: int = typer.Option(2048, "--seq", help="Tokens per row."),
    checkpointing: bool = typer.Option(True, "--checkpointing/--no-checkpointing", help="Plan activations with per-layer gradient checkpointing."),
    optimizer: str = typer.Option("adamw", "--optimizer", help="AdamW states: adamw (float32) or adamw_8bit (bitsandbytes)."),
    loss_chunk: int = typer.Option(0, "--loss-chunk", help="Positions the LM head and loss take at a time (0: all at once)."),
    prefetch: bool = typer.Option(False, "--prefetch", help="Offload: count the next layer's prefetched working set too."),
    trainable_per_layer: int | None = typer.Option(None, "--trainable-per-layer", help="Experts trained per MoE layer (default: a tenth of them, ESFT-typical)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plans as JSON."),
) -> None:
    """Exact device bytes a miner must hold, by kind, and the smallest common card that fits (meta device)."""
    import json

    from moeforge.errors import ModelError
    from moeforge.extract.package import MODES
    from moeforge.extract.plan import plan_device

    cfg = _config(config)
    plans, unavailable = [], {}
    for m in MODES if mode is None else (mode,):
        try:
            plans.append(plan_device(cfg, m, parts=parts, trainable_per_layer=trainable_per_layer, batch=batch, seq=seq,
                                     checkpointing=checkpointing, optimizer=optimizer, loss_chunk_tokens=loss_chunk,
                                     prefetch=prefetch))
        except ModelError as exc:
            if mode is not None:
                raise
            unavailable[m] = str(exc)
    if as_json:
        typer.echo(json.dumps({"plans": [p.to_json() for p in plans], "unavailable": unavailable}, indent=2))
        return
    if mode is None:
        _print_modes(plans, unavailable)
    else:
        _print_plan(plans[0])


def _config(spec: str):
    from transformers import CONFIG_MAPPING, AutoConfig

    from moeforge.model.families import FAMILIES
    from moeforge.model.load import load_config

    if spec in SHIPPED_CONFIGS:
        return shipped_config(spec)
    path = Path(spec)
    if path.is_file():
        from huggingface_hub.errors import StrictDataclassError

        from moeforge.json_file import read_json_object

        fields = read_json_object(path, what="model config", fix="Pass a config.json as save_pretrained writes it.")
        model_type = fields.pop("model_type", None)
        if not isinstance(model_type, str):
            raise ConfigError(f"{path}: no \"model_type\" string in this config.json; expected e.g. \"model_type\": "
                              f"\"{next(iter(FAMILIES))}\". Supported families: {', '.join(FAMILIES)}.")
        if model_type not in CONFIG_MAPPING:
            raise ConfigError(f"{path}: model_type {model_type!r} is not a model type transformers knows. "
                              f"Supported families: {', '.join(FAMILIES)}.")
        try:
            return AutoConfig.for_model(model_type, **fields)
        except (StrictDataclassError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: not a valid {model_type} config ({' '.join(str(exc).split())}).") from exc
    if path.is_dir():
        return load_config(path)
    raise ConfigError(f"{spec!r} is neither a shipped config ({', '.join(SHIPPED_CONFIGS)}) nor a file or directory.")


def _print_size(s) -> None:  # a moeforge.model.sizing.ModelSize
    table = Table(title=f"{s.model_type} in {s.dtype}")
    table.add_column("what")
    table.add_column("parameters", justify="right")
    table.add_column("bytes", justify="right")
    table.add_row("total", f"{s.total_params:,}", f"{s.total_bytes:,}")
    table.add_row(f"routed experts ({s.moe_layers} layers × {s.experts_per_layer})", f"{s.routed_expert_params:,}", f"{s.routed_expert_bytes:,}")
    table.add_row("one routed expert", f"{s.params_per_expert:,}", f"{s.bytes_per_expert:,}")
    table.add_row("backbone (all but routed experts)", f"{s.backbone_params:,}", f"{s.backbone_bytes:,}")
    table.add_row(f"active per token (top-{s.top_k})", f"{s.active_params:,}", "")
    console.print(table)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def _card(gib: int | None) -> str:
    return f"{gib} GB" if gib else "none"


def _setting(p) -> str:  # a moeforge.extract.plan.DevicePlan
    lean = (f", {p.optimizer_kind}" if p.optimizer_kind != "adamw" else "") + (f", loss in chunks of {p.loss_chunk_tokens}"
                                                                                 if p.loss_chunk_tokens else "")
    return (f"{p.model_type}, batch {p.batch} × seq {p.seq}, {'with' if p.checkpointing else 'without'} checkpointing{lean}, "
            f"{p.trainable_per_layer} trained experts per MoE layer split in {p.parts} part(s): {p.part_experts} on this miner")


def _print_modes(plans, unavailable: dict[str, str]) -> None:
    table = Table(title=_setting(plans[0]), caption="GiB. backbone: all but routed experts; trained: the part's state; --mode M: bytes by kind", box=box.SIMPLE_HEAD)
    table.add_column("mode", no_wrap=True)
    for col in ("backbone", "experts", "trained", "activ.", "total", "× full", "fits"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in plans:
        table.add_row(p.mode, _gib(p.non_expert), _gib(p.routed_experts), _gib(p.trainable_state), _gib(p.activations),
                      _gib(p.total), f"{p.fraction_of_full:.3f}", _card(p.card_gib))
    console.print(table)
    for m, why in unavailable.items():
        console.print(f"{m}: not available ({why})")
    _print_notes()


def _print_plan(p) -> None:
    table = Table(title=f"{p.mode}: {_setting(p)}")
    for col in ("kind", "GiB", "bytes"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    routed = f"routed experts: working set (worst routing, {'two layers, prefetch' if p.prefetch else 'one layer'})" if p.mode == "offload" else "routed experts (frozen, held)"
    rows = [("embeddings and LM head", p.embeddings), ("attention", p.attention), ("dense-layer MLPs", p.dense_mlps),
            ("shared experts", p.shared_experts), ("routers", p.routers), ("norms and buffers", p.norms_buffers),
            (routed, p.routed_experts), ("trained experts: float32 master", p.master), ("their gradients (float32)", p.grads),
            (f"AdamW moments ({'8-bit, block-wise' if p.optimizer_kind == 'adamw_8bit' else 'float32'})", p.optimizer),
            (f"activations, {'with' if p.checkpointing else 'without'} checkpointing (estimate)", p.activations)]
    for kind, n in rows:
        table.add_row(kind, _gib(n), f"{n:,}")
    table.add_row("total", _gib(p.total), f"{p.total:,}")
    console.print(table)
    other = p.activations_stored if p.checkpointing else p.activations_checkpointed
    console.print(f"activations {'without' if p.checkpointing else 'with'} checkpointing would be {_gib(other)} GiB")
    if p.kept_per_layer is not None:
        console.print(f"subset: {p.kept_per_layer} experts held per MoE layer (with the trained ones)")
    if p.host_experts:
        console.print(f"host memory holds the routed experts: {_gib(p.host_experts)} GiB")
    console.print(f"{p.fraction_of_full:.3f} of full mode as built ({_gib(p.full_total)} GiB: unpartitioned, float32 AdamW, "
                  f"the whole loss at once); fits: {_card(p.card_gib)}")
    if (p.optimizer_kind, p.loss_chunk_tokens) != ("adamw", 0):
        console.print(f"{p.fraction_of_full_same_training:.3f} of an unpartitioned full-mode miner with the same optimizer and "
                      f"loss chunking ({_gib(p.full_total_same_training)} GiB)")
    _print_notes()


def _print_notes() -> None:
    console.print("Weights are exact counts of the model built on the meta device; activations are an estimate "
                  "(moeforge.extract.plan.activation_bytes); a card fits at most its capacity in GiB, "
                  "the CUDA context not counted.", style="dim")

"""`moeforge model …`: look inside an MoE checkpoint, or size one from its config alone."""

from pathlib import Path

import typer
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

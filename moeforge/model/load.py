"""Load MoE causal LMs from a local directory or a hub id, strictly and offline by default.

Lesson of the one live system (DESIGN.md): its miners built the model from config with random
weights and loaded non-strictly. Here a missing, unexpected or mis-shaped weight is an error
that lists every offending key, never a warning.
"""

import logging
from pathlib import Path

import re

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from moeforge.errors import ArtifactNotFound, ModelError
from moeforge.model.families import family_of

log = logging.getLogger(__name__)

_MAX_LISTED = 20
_EXPERT_KEY = re.compile(r"(?P<prefix>.+\.experts)\.(?P<expert>\d+)\.(?P<part>.+)")


def load_config(source: str | Path, *, online: bool = False) -> PretrainedConfig:
    """The config of a local checkpoint directory or hub id; checks the family is supported."""
    path = Path(source).expanduser()
    looks_local = path.is_absolute() or str(source).startswith((".", "~")) or str(source).count("/") > 1
    if looks_local and not path.exists():
        raise ArtifactNotFound(f"{source}: no such model directory. Build one with `moeforge testbed build`.")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ArtifactNotFound(
            f"{source}: not a model directory (no config.json; it has: {_listing(path)}). "
            "Point to a folder written by save_pretrained, or build one with `moeforge testbed build`."
        )
    try:
        config = AutoConfig.from_pretrained(str(source), local_files_only=not online)
    except StrictDataclassError as exc:  # a field of the wrong type, e.g. "num_hidden_layers": "x"
        raise ModelError(f"{source}: config.json has a bad field: {' '.join(str(exc).split())}. Fix the field, or "
                         "re-export the checkpoint with save_pretrained.") from exc
    except (OSError, ValueError) as exc:
        where = "a hub id" if online else "a hub id in the local cache (offline; pass --online to download)"
        raise ModelError(f"{source}: neither a model directory nor {where}: {exc}") from exc
    family_of(config)
    return config


def load_model(source: str | Path, *, dtype: torch.dtype | None = None, online: bool = False):
    """A supported MoE causal LM in eval mode, every weight loaded from the checkpoint."""
    config = load_config(source, online=online)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(source),
            config=config,
            dtype=dtype or "auto",
            local_files_only=not online,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported below and refused: we name every key ourselves
        )
    except SafetensorError as exc:  # a weights file that is not safetensors (truncated, or another format renamed)
        raise ModelError(f"{source}: a weights file is not a readable safetensors file ({exc}). Re-export the "
                         "checkpoint with save_pretrained, or copy the weights again.") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        gaps = _expert_key_gaps(Path(source))
        detail = f"missing keys: {_shown(gaps)}" if gaps else str(exc)
        raise ModelError(f"{source}: cannot load the weights (strict load): {detail}") from exc
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(_describe(k) for k in info.get(kind, ()))
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')}: {_shown(keys)}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(map(str, info["error_msgs"])))
    if problems:
        raise ModelError(
            f"{source}: the checkpoint does not match the {config.model_type} architecture "
            f"(strict load): {'; '.join(problems)}. Re-export the checkpoint with save_pretrained."
        )
    model.eval()
    log.debug("loaded %s (%s) from %s", type(model).__name__, model.dtype, source)
    return model


def _expert_key_gaps(path: Path) -> list[str]:
    """Per-expert checkpoint keys absent where their siblings exist (transformers cannot fuse them).

    When one expert's tensor is missing, transformers fails while fusing the layer rather than
    reporting a missing key; this names the key instead.
    """
    if not path.is_dir():
        return []
    present: dict[tuple[str, str], set[int]] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for key in f.keys():
                m = _EXPERT_KEY.match(key)
                if m:
                    present.setdefault((m["prefix"], m["part"]), set()).add(int(m["expert"]))
    if not present:
        return []
    n_experts = max(max(ids) for ids in present.values()) + 1
    return [
        f"{prefix}.{e}.{part}"
        for (prefix, part), ids in sorted(present.items())
        for e in range(n_experts)
        if e not in ids
    ]


def _describe(entry) -> str:
    """A key, or for a mismatched key '(key, checkpoint shape, model shape)' as one readable string."""
    if isinstance(entry, tuple) and len(entry) == 3:
        key, have, want = entry
        return f"{key} (checkpoint {tuple(have)}, model {tuple(want)})"
    return str(entry)


def _shown(keys: list[str]) -> str:
    more = f" … and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())[:10]
    return ", ".join(names) or "nothing"

"""Training checkpoints: trainable tensors, AdamW state and RNG as safetensors, progress as JSON.

Never pickle: a checkpoint is `run_dir/checkpoint/state.safetensors` plus `progress.json`. It is
written by `moeforge.atomic.write_folder` (the previous one kept as `checkpoint.old/` until the new
one is in place), so a crash at any moment leaves a whole checkpoint behind. Restoring the tensors, the optimizer state and the RNG state makes a resumed
run bit-identical to one that was never interrupted.
"""

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from moeforge.atomic import OLD_SUFFIX, PARTIAL_SUFFIX, previous_folder, write_folder

from moeforge.errors import DataError
from moeforge.train.config import TrainConfig
from moeforge.train.metrics import StepInfo

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
TENSORS_FILE = "state.safetensors"
PROGRESS_FILE = "progress.json"


class Progress(BaseModel):
    """Where a run stood when the checkpoint was written, and what it was."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    step: int  # optimizer steps done
    config: TrainConfig
    identity: dict[str, str]  # what was trained on what: method, slots, base and data fingerprints
    param_shapes: list[tuple[int, ...]]
    seconds: float  # training wall time so far
    history: list[StepInfo]


@dataclass(frozen=True, eq=False)
class Checkpoint:
    directory: Path
    progress: Progress
    tensors: dict[str, torch.Tensor]


SCALAR = "#scalar"  # a number the optimizer keeps outside a tensor, saved as a 0-d tensor


def save_checkpoint(run_dir: Path, progress: Progress, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Write the checkpoint of `params` and `optimizer` at `progress.step`, atomically."""
    tensors, shared = {}, set()
    for i, p in enumerate(params):
        tensors[f"param.{i}"] = p.detach().cpu().contiguous()
        for name, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().contiguous()
                if value.untyped_storage().data_ptr() in shared:  # bitsandbytes shares its quantization maps
                    value = value.clone()
                shared.add(value.untyped_storage().data_ptr())
                tensors[f"optim.{i}.{name}"] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):  # bitsandbytes counts steps in an int
                tensors[f"optim.{i}.{name}{SCALAR}"] = torch.tensor(value, dtype=torch.int64 if isinstance(value, int) else torch.float64)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for d, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{d}"] = state

    def fill(folder: Path) -> None:
        save_file(tensors, folder / TENSORS_FILE, metadata={"format": "pt", "step": str(progress.step)})
        (folder / PROGRESS_FILE).write_text(progress.model_dump_json(indent=1) + "\n")

    final = write_folder(Path(run_dir) / CHECKPOINT_DIR, fill)
    log.debug("checkpoint at step %d written to %s", progress.step, final)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's latest whole checkpoint, or None if it has none."""
    run_dir = Path(run_dir)
    directory = previous_folder(run_dir / CHECKPOINT_DIR)  # or the one a crash between write_folder's renames left
    if directory is None:
        return None
    try:
        progress = Progress.model_validate_json((directory / PROGRESS_FILE).read_text())
        tensors = load_file(directory / TENSORS_FILE)
    except (OSError, UnicodeDecodeError, ValidationError, SafetensorError) as exc:
        raise DataError(
            f"{directory}: unreadable training checkpoint ({exc}). Delete it to start over, or resume=False."
        ) from exc
    return Checkpoint(directory=directory, progress=progress, tensors=tensors)


def remove_checkpoint(run_dir: Path) -> None:
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + OLD_SUFFIX, CHECKPOINT_DIR + PARTIAL_SUFFIX):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def restore_checkpoint(checkpoint: Checkpoint, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Copy the saved tensors into `params`, the optimizer and the RNG (shapes were checked by the caller)."""
    t = checkpoint.tensors
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(t[f"param.{i}"])
    state = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(params)}
    order = [p for group in optimizer.param_groups for p in group["params"]]  # state_dict numbers params this way
    state["state"] = {}
    for k, p in enumerate(order):
        i = index[id(p)]
        saved = {name.split(".", 2)[2]: v for name, v in t.items() if name.startswith(f"optim.{i}.")}
        saved = {k.removesuffix(SCALAR): v.item() if k.endswith(SCALAR) else v for k, v in saved.items()}
        if saved:
            state["state"][k] = saved
    optimizer.load_state_dict(state)
    torch.set_rng_state(t["rng.cpu"])
    cuda_states = []
    while f"rng.cuda.{len(cuda_states)}" in t:
        cuda_states.append(t[f"rng.cuda.{len(cuda_states)}"])
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)

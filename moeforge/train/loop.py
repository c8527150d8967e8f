"""The training loop: AdamW over the given parameters only, written out step by step.

One loop serves ESFT (the selected experts), full fine-tuning, LoRA and the testbed's
pre-training; they differ only in which parameters they pass and in extra loss terms (`LossTerm`,
e.g. pre-training's router balance loss) added to the language-model loss. Per optimizer step: set the learning rate (linear warm-up then
cosine decay, `schedule.lr_at`), run `grad_accum` micro-batches of `batch_size` rows with
each loss weighted by its share of the step's labelled tokens (so 2 × b rows accumulated equal
one batch of 2b), clip the global gradient norm, step, and report. Rows are drawn in a seeded
order, one permutation per epoch, so a run is a pure function of (model, data, config).

With a run folder the loop writes `config.json`, one `metrics.jsonl` line per step and, every
`checkpoint_every` steps, a checkpoint it resumes from bit-identically (checkpoint.py).
"""

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from moeforge.data.formatting import IGNORE_INDEX
from moeforge.data.packing import Packed, row_order
from moeforge.errors import ConfigError
from moeforge.extras import require
from moeforge.model.loss import chunked_lm_loss
from moeforge.train.checkpoint import (
    Checkpoint,
    Progress,
    load_checkpoint,
    remove_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from moeforge.train.config import TrainConfig
from moeforge.train.memory import PeakMemory
from moeforge.train.schedule import lr_at
from moeforge.train.metrics import StepCallback, StepInfo, TrainResult, append_metrics, write_metrics
from moeforge.versions import software_versions

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
BETAS = (0.9, 0.95)


@dataclass(frozen=True)
class LossTerm:
    """`weight · compute()` added to each micro-batch's loss; `compute` is called right after the forward pass
    (reading what it recorded, e.g. the router's choices) and its mean is reported per step as `terms[name]`."""

    name: str
    compute: Callable[[], torch.Tensor]
    weight: float


class RunConfig(BaseModel):
    """`run_dir/config.json`: the exact config and versions beside the run's outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int = 1
    config: TrainConfig
    steps: int
    identity: dict[str, str]
    trainable_params: int
    versions: dict[str, str]


def train(
    model: nn.Module,
    params: list[nn.Parameter],
    packed: Packed,
    cfg: TrainConfig,
    *,
    run_dir: Path | None = None,
    on_step: StepCallback | None = None,
    resume: bool = True,
    identity: dict[str, str] | None = None,
    terms: Sequence[LossTerm] = (),
) -> TrainResult:
    """Train `params` (and nothing else) on `packed` with loss `model(input_ids, labels=labels).loss`.

    `identity` names what is trained (method, slots, base fingerprint); with the data's digest and
    `cfg` it must match a checkpoint in `run_dir` for `resume` to continue from it.
    """
    if not params:
        raise ConfigError("nothing to train: the parameter list is empty.")
    seq_len = packed.input_ids.shape[1]
    steps = cfg.total_steps(seq_len)
    device = params[0].device
    bf16 = _use_bf16(cfg, device)
    identity = {**(identity or {}), "data_sha256": _data_digest(packed)}
    optimizer = _adamw(params, cfg)
    memory = PeakMemory(model, params, device)
    trainable = sum(p.numel() for p in params)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        done, history, prior_seconds = 0, [], 0.0
        if run_dir is not None:
            run_dir = Path(run_dir)
            checkpoint = _open_run(run_dir, cfg, steps, identity, params, resume)
            if checkpoint is not None:
                restore_checkpoint(checkpoint, params, optimizer)
                done, history, prior_seconds = checkpoint.progress.step, list(checkpoint.progress.history), checkpoint.progress.seconds
                log.info("resuming %s at step %d of %d", run_dir, done, steps)
            write_metrics(run_dir, history)
        log.info(
            "training %d parameters for %d steps of %d×%d rows (bf16 %s)",
            trainable, steps, cfg.grad_accum, cfg.batch_size, "on" if bf16 else "off",
        )
        order = row_order(packed.input_ids.shape[0], steps * cfg.rows_per_step, cfg.seed)
        tokens = history[-1].tokens if history else 0
        seconds = prior_seconds
        was_training, was_checkpointing = model.training, model.is_activation_checkpointing
        model.train()
        if cfg.activation_checkpointing and not was_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        try:
            for step in range(done, steps):
                started = time.perf_counter()
                lr = lr_at(step, steps, cfg.lr, cfg.warmup_steps)
                rows = order[step * cfg.rows_per_step : (step + 1) * cfg.rows_per_step]
                loss, grad_norm, term_means = _train_step(model, params, optimizer, packed, rows, cfg, lr, bf16, memory, terms)
                elapsed = time.perf_counter() - started
                seconds += elapsed
                step_tokens = len(rows) * seq_len
                tokens += step_tokens
                info = StepInfo(
                    step=step + 1, steps=steps, loss=loss, lr=lr, grad_norm=grad_norm,
                    tokens=tokens, tokens_per_s=step_tokens / elapsed, terms=term_means,
                )
                history.append(info)
                log.debug("step %d/%d: loss %.4f, lr %.2e, grad norm %.3f", info.step, steps, loss, lr, grad_norm)
                if run_dir is not None:
                    append_metrics(run_dir, info)
                    if cfg.checkpoint_every and (info.step % cfg.checkpoint_every == 0 or info.step == steps):
                        progress = Progress(
                            step=info.step, config=cfg, identity=identity, param_shapes=[tuple(p.shape) for p in params],
                            seconds=seconds, history=history,
                        )
                        save_checkpoint(run_dir, progress, params, optimizer)
                if on_step is not None:
                    on_step(info)
        finally:
            model.train(was_training)
            if cfg.activation_checkpointing and not was_checkpointing:
                model.activation_checkpointing_disable()
            optimizer.zero_grad(set_to_none=True)

    result = TrainResult(
        history=history,
        tokens=tokens,
        seconds=round(seconds, 3),
        tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
        peak_mem_bytes=memory.peak_bytes(optimizer),
        memory_method=memory.method,
        trainable_params=trainable,
    )
    log.debug(
        "trained %d steps: final loss %.4f, %.0f tok/s, peak memory %.1f MB (%s)",
        len(history), result.final_loss, result.tokens_per_s, result.peak_mem_bytes / 2**20, result.memory_method,
    )
    return result


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients so their global L2 norm is at most `max_norm` (0: no clipping); the norm before."""
    limit = max_norm if max_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, limit))


def _train_step(model, params, optimizer, packed: Packed, rows, cfg: TrainConfig, lr: float, bf16: bool, memory: PeakMemory,
                terms: Sequence[LossTerm]):
    """One optimizer step over `rows`; (token-weighted mean loss, gradient norm before clipping, mean of each term)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = params[0].device
    micro_batches = rows.split(cfg.batch_size)
    counts = [int((packed.labels[r, 1:] != IGNORE_INDEX).sum()) for r in micro_batches]  # the loss shifts labels by one
    total = sum(counts)
    loss_sum = 0.0
    term_sums = dict.fromkeys((t.name for t in terms), 0.0)
    for r, n in zip(micro_batches, counts):
        if n == 0:
            continue  # nothing to learn here (the loss would be 0/0)
        input_ids, labels = packed.input_ids[r].to(device), packed.labels[r].to(device)
        with memory.micro_batch():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                if cfg.loss_chunk_tokens:
                    loss = chunked_lm_loss(model, input_ids, labels, cfg.loss_chunk_tokens)
                else:
                    loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
                objective = loss
                for term in terms:
                    value = term.compute()
                    objective = objective + term.weight * value
                    term_sums[term.name] += value.item() * n
            (objective * (n / total)).backward()
        loss_sum += loss.item() * n
    if total == 0:
        log.warning("a step of %d rows had no labelled tokens; skipped", len(rows))
        return float("nan"), 0.0, {name: float("nan") for name in term_sums}
    mean_loss = loss_sum / total
    if not math.isfinite(mean_loss):
        raise ConfigError(
            f"training diverged: the loss is {mean_loss} at lr {lr:.2e}. Lower lr (now {cfg.lr}), "
            f"keep max_grad_norm > 0 (now {cfg.max_grad_norm}), or set bf16='off'."
        )
    grad_norm = clip_gradients(params, cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm, {name: value / total for name, value in term_sums.items()}


def _adamw(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm weights and biases are not decayed).

    `cfg.optimizer` "adamw_8bit": bitsandbytes' AdamW8bit, whose moments are 8-bit with a float32
    scale per 256 values (about 2 bytes per parameter instead of 8); tensors under its 4,096-value
    threshold keep 32-bit states, as bitsandbytes decides."""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    if cfg.optimizer == "adamw_8bit":
        return _bitsandbytes().optim.AdamW8bit(groups, lr=cfg.lr, betas=BETAS)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=BETAS)


def _bitsandbytes():
    """bitsandbytes, imported quietly: its CPU backend warns about a 4-bit kernel moeforge does not use."""
    import logging as logging_

    quiet = logging_.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging_.ERROR)
    try:
        (bnb,) = require("lean", "--optimizer adamw_8bit")
    finally:
        quiet.setLevel(level)
    return bnb


def _use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.bf16 == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg.bf16 == "on"


def _data_digest(packed: Packed) -> str:
    digest = hashlib.sha256()
    for t in (packed.input_ids, packed.labels):
        digest.update(f"{tuple(t.shape)}|{t.dtype}\n".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _open_run(run_dir: Path, cfg: TrainConfig, steps: int, identity: dict[str, str], params, resume: bool) -> Checkpoint | None:
    """Prepare `run_dir`; the checkpoint to resume from, if any (a mismatched one is a ConfigError)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(run_dir)
    else:
        remove_checkpoint(run_dir)
    if checkpoint is not None:
        _check_resumable(checkpoint, cfg, identity, params)
    run = RunConfig(
        config=cfg, steps=steps, identity=identity, trainable_params=sum(p.numel() for p in params),
        versions=software_versions(),
    )
    (run_dir / CONFIG_FILE).write_text(run.model_dump_json(indent=2) + "\n")
    return checkpoint


def _check_resumable(checkpoint: Checkpoint, cfg: TrainConfig, identity: dict[str, str], params) -> None:
    saved = checkpoint.progress
    problems = []
    old, new = saved.config.model_dump(), cfg.model_dump()
    problems += [f"{k} was {old[k]!r}, now {new[k]!r}" for k in sorted(new) if old.get(k) != new[k]]
    for k in sorted(set(saved.identity) | set(identity)):
        if saved.identity.get(k) != identity.get(k):
            problems.append(f"{k} was {saved.identity.get(k)!r}, now {identity.get(k)!r}")
    shapes = [tuple(p.shape) for p in params]
    if [tuple(s) for s in saved.param_shapes] != shapes:
        problems.append(f"trainable tensor shapes were {saved.param_shapes}, now {shapes}")
    if problems:
        raise ConfigError(
            f"{checkpoint.directory}: cannot resume, the checkpoint (step {saved.step}) is of another run: "
            + "; ".join(problems)
            + ". Resume with the same config and data, pass resume=False to start over, or use another run folder."
        )

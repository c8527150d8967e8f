"""What a training run reports: one record per optimizer step, the run's result, `metrics.jsonl`."""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
FINAL_LOSS_STEPS = 10  # a run's final loss is the mean over its last this-many steps (one step's batch is noisy)


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based optimizer step
    steps: int  # of the whole run
    loss: float  # token-weighted mean loss over the step's micro-batches
    lr: float
    grad_norm: float  # global gradient norm before clipping
    tokens: int  # tokens processed so far in the run, this step included
    tokens_per_s: float  # this step's throughput
    terms: dict[str, float] = field(default_factory=dict)  # each extra loss term's mean (unweighted), e.g. "balance"


StepCallback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class TrainResult:
    history: list[StepInfo]  # every step of the run, resumed steps included
    tokens: int  # tokens processed (rows × seq_len, padding included)
    seconds: float  # wall time of the training steps, over all resumed segments
    tokens_per_s: float
    peak_mem_bytes: int  # see moeforge/train/memory.py for how it is measured
    memory_method: str  # "cuda_max_memory_allocated" or "counted_tensors"
    trainable_params: int

    @property
    def final_loss(self) -> float:
        """Mean loss of the last (up to) FINAL_LOSS_STEPS steps."""
        tail = self.history[-FINAL_LOSS_STEPS:]
        return sum(h.loss for h in tail) / len(tail) if tail else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def write_metrics(run_dir: Path, history: list[StepInfo]) -> None:
    """Rewrite `metrics.jsonl` with exactly these steps (drops lines a crashed run wrote past its checkpoint)."""
    with open(Path(run_dir) / METRICS_FILE, "w") as f:
        for info in history:
            f.write(json.dumps(asdict(info)) + "\n")


def append_metrics(run_dir: Path, info: StepInfo) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(asdict(info)) + "\n")

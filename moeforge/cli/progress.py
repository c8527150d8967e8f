"""Rich progress bars for long work; library code reports through callbacks, the CLI draws."""

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from moeforge.train.metrics import FINAL_LOSS_STEPS, StepInfo


@contextmanager
def training_bar(label: str, console: Console | None = None) -> Iterator[Callable]:
    """A bar that advances once per training step and shows the loss (the mean of the last ten steps, the figure the
    run's summary calls its final loss) and throughput."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=None, stats="")
        recent: deque[float] = deque(maxlen=FINAL_LOSS_STEPS)

        def on_step(info: StepInfo) -> None:
            recent.append(info.loss)
            extra = "".join(f" · {name} {value:.3f}" for name, value in info.terms.items())
            stats = f"loss {sum(recent) / len(recent):.3f}{extra} · {info.tokens_per_s:,.0f} tok/s"
            progress.update(task, total=info.steps, completed=info.step, stats=stats)

        yield on_step


@contextmanager
def job_bar(label: str, console: Console | None = None) -> Iterator[Callable]:
    """A bar over a job's blocks, from round 0's first block to the last round's end: `on_block(job, head)`."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=None, stats="waiting for the job")

        def on_block(job, head: int) -> None:  # a moeforge.network.job.JobSpec and the chain's head
            start, end = job.schedule.start_block, job.schedule.round_end(job.last_round)
            if head < start:
                stats = f"block {head}: round 0 starts at block {start}"
            else:
                r, phase = job.schedule.phase_at(min(head, end))
                stats = f"round {r + 1}/{job.rounds} · {phase} · block {min(head, end)}/{end}"
            progress.update(task, total=end - start + 1, completed=max(0, min(head, end) - start + 1), stats=stats)

        yield on_block

"""`moeforge network up`: a whole network on this machine, one command: chain, store, owner, miners, validators."""

import secrets
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from moeforge.cli.endpoints import DataOpt, MetricsPortOpt
from moeforge.cli.inputs import DeviceOption, PromptFieldOpt, ResponseFieldOpt, TextFieldOpt
from moeforge.cli.owner import (
    ConfigOpt,
    ExpertsOpt,
    InnerStepsOpt,
    LrOpt,
    PartsOpt,
    RoundsOpt,
)
from moeforge.errors import ConfigError
from moeforge.cli.endpoints import MODES

app = typer.Typer(no_args_is_help=True, help="Run a whole network locally: chain, store, owner, miners and validators.")
console = Console()

# The schedule flags, with the defaults of the network's own lock-step chain (network/local.py LOCKSTEP_SCHEDULE)
BlockSecondsOpt = Annotated[float | None, typer.Option("--block-seconds", help=(
    "The lock-step chain's ceiling: the longest a block waits for a busy or dead role \\[default: 60]."))]
TrainBlocksOpt = Annotated[int | None, typer.Option("--train-blocks", help="Blocks in each round's train phase \\[default: 2].")]
ScoreBlocksOpt = Annotated[int | None, typer.Option("--score-blocks", help="Blocks in each round's score phase \\[default: 3].")]

DEFAULT_KEEP = 5
KeepOpt = Annotated[int, typer.Option("--keep", help=(
    "Run folders to keep under $MOEFORGE_HOME/network (the newest); older ones are removed after the run."))]

DEFAULT_MODES = ("full", "quantized", "subset")  # miner i runs DEFAULT_MODES[i % 3]: every mode takes part


@app.command()
def up(
    miners: Annotated[int, typer.Option("--miners", min=1, help="Miner processes.")] = 3,
    validators: Annotated[int, typer.Option("--validators", min=1, help="Validator processes (stake 100, 50, 25, …).")] = 2,
    rounds: RoundsOpt = None,
    modes: Annotated[str | None, typer.Option("--modes", help="Comma-separated memory mode per miner, cycled "
                                              "\\[default: full,quantized,subset].")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Base model folder \\[default: the testbed of --preset].")] = None,
    preset_name: Annotated[str, typer.Option("--preset", help="Testbed preset to build or reuse when --model is not given.")] = "default",
    data: DataOpt = "math",
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    run: Annotated[Path | None, typer.Option("--run", help="Run folder \\[default: $MOEFORGE_HOME/network/<time>].")] = None,
    store: Annotated[str | None, typer.Option("--store", help="Store URL \\[default: a folder store in the run folder].")] = None,
    chain: Annotated[str | None, typer.Option("--chain", help="A local chain URL \\[default: a new chain in the run folder].")] = None,
    config: ConfigOpt = None,
    inner_steps: InnerStepsOpt = None,
    parts: PartsOpt = None,
    lr: LrOpt = None,
    block_seconds: BlockSecondsOpt = None,
    train_blocks: TrainBlocksOpt = None,
    score_blocks: ScoreBlocksOpt = None,
    metrics_port: MetricsPortOpt = None,
    device: DeviceOption = "auto",
    experts: ExpertsOpt = None,
    keep: KeepOpt = DEFAULT_KEEP,
) -> None:
    """Start a local network on the job, follow its rounds, and print losses, accepted updates and shares.
    A role process killed by a signal (the OOM killer, say) is restarted with its exact command."""
    record, net = start_and_follow(
        miners=miners, validators=validators, modes=modes, model=model, preset_name=preset_name, data=data,
        data_options={"prompt_field": prompt_field, "response_field": response_field, "text_field": text_field},
        run=run, store=store, chain=chain, config=config, metrics_port=metrics_port, device=device, experts=experts, keep=keep,
        flags=dict(rounds=rounds, inner_steps=inner_steps, parts=parts, lr=lr, block_seconds=block_seconds, train_blocks=train_blocks,
                   score_blocks=score_blocks),
    )
    from moeforge.cli.job_view import print_record

    print_record(record, console, net.names())
    console.print(f"run folder: {net.plan.run_dir}", highlight=False, soft_wrap=True)


def start_and_follow(*, miners: int, validators: int, modes: str | None, model: Path | None, preset_name: str, data: str,
                     data_options: dict, run: Path | None, store: str | None, chain: str | None, config: Path | None,
                     metrics_port: int | None, flags: dict, defaults: dict | None = None, device: str = "cpu",
                     experts: Path | None = None, keep: int = DEFAULT_KEEP):
    """Build the plan from the options, run the network to its record; → (record, LocalNetwork). Shared with `demo`."""
    from moeforge.cli import settings
    from moeforge.cli.endpoints import read_job_data, require_model
    from moeforge.cli.inputs import output_dir
    from moeforge.cli.owner import job_request
    from moeforge.cli.progress import job_bar
    from moeforge.model.device import resolve_device
    from moeforge.network.local import LOCKSTEP_SCHEDULE, NetworkPlan, run_local_network

    resolve_device(device)  # a bad --device fails here, before any role starts
    mode_list = _modes(modes, miners)
    _, domain = read_job_data(data, **data_options)  # bad --data or field flags fail here, before anything starts
    if model is None:
        from moeforge.cli.testbed import build_or_reuse

        _, model = build_or_reuse(preset_name, None, force=False)
    model = require_model(model)
    if experts is not None:  # a bad selection fails here, before anything starts
        from moeforge.profile.selection import load_expert_config

        load_expert_config(experts)
        experts = experts.resolve()
    runs = settings.home() / "network"
    if keep < 0:
        raise ConfigError(f"--keep {keep}: expected a number of run folders ≥ 0.")
    run = output_dir(run or runs / time.strftime("%Y%m%d-%H%M%S"), "--run").resolve()
    if chain is None:  # the network's own lock-step chain: tight blocks are safe on it
        defaults = {**LOCKSTEP_SCHEDULE, **(defaults or {})}
    request = job_request(config, model, domain, defaults, **flags)
    plan = NetworkPlan(
        run_dir=run, request=request, data=str(Path(data).resolve()) if Path(data).exists() else data,
        data_options={k: v for k, v in data_options.items() if v is not None}, miner_modes=mode_list,
        validator_stakes=tuple(100.0 / 2**j for j in range(validators)), chain_url=chain, store_url=store,
        metrics_port=metrics_port, device=device, experts=experts,
    )
    console.print(f"local network in {run}: {miners} miners ({', '.join(mode_list)}), {validators} validators, "
                  f"{request.rounds} rounds of job {request.job_id}", highlight=False, soft_wrap=True)
    try:
        with _terminate_as_interrupt(), job_bar("network", console) as on_block:
            record, net = run_local_network(plan, secrets.token_hex(16), credentials=settings.s3_credentials(),
                                            on_block=lambda job, head: on_block(job, head) if job is not None else None,
                                            restart_killed=True)
    finally:
        _keep_last(runs, keep)
    return record, net


def _keep_last(runs: Path, keep: int) -> None:
    from moeforge.network.local import prune_runs

    gone = prune_runs(runs, keep)
    if gone:
        console.print(f"removed {len(gone)} older run folder{'s' * (len(gone) > 1)} from {runs} (kept the last {keep}; "
                      "--keep sets how many)", highlight=False, soft_wrap=True)


@app.command()
def clean(keep: Annotated[int, typer.Option("--keep", help="Run folders to keep (the newest).")] = 0) -> None:
    """Remove the run folders `network up` and `demo` left under $MOEFORGE_HOME/network, all but the last --keep."""
    from moeforge.cli import settings
    from moeforge.network.local import prune_runs

    runs = settings.home() / "network"
    gone = prune_runs(runs, keep)
    console.print(f"removed {len(gone)} run folder{'s' * (len(gone) != 1)} from {runs}"
                  + (f", kept the last {keep}" if keep else ""), highlight=False, soft_wrap=True)


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block, so the role processes are stopped as on Ctrl-C."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _modes(modes: str | None, miners: int) -> tuple[str, ...]:
    given = [m.strip() for m in modes.split(",") if m.strip()] if modes else list(DEFAULT_MODES)
    bad = [m for m in given if m not in MODES]
    if bad or not given:
        raise ConfigError(f"--modes {modes!r}: {', '.join(bad) or 'empty'} is not a memory mode; use a comma-separated "
                          f"list of {', '.join(MODES)}.")
    return tuple(given[i % len(given)] for i in range(miners))

"""`moeforge miner run`: train the owner's job round after round and submit each delta by commit-reveal."""

from typing import Annotated

import typer
from rich.console import Console

from moeforge.cli.endpoints import (
    DEFAULT_WALLET_PATH,
    ChainOpt,
    JobTimeoutOpt,
    MetricsPortOpt,
    OwnerOpt,
    RunOpt,
    StoreOpt,
    WalletOpt,
    WalletPathOpt,
    default_run,
    hotkey_of,
    open_chain_url,
    open_store_url,
)
from moeforge.cli.inputs import DeviceOption
from moeforge.cli.endpoints import MODES
from moeforge.train.config import OPTIMIZERS

app = typer.Typer(no_args_is_help=True, help="Mine: train the job's experts on your shard and submit deltas.")
console = Console()


@app.command()
def run(
    wallet: WalletOpt,
    owner: OwnerOpt,
    mode: Annotated[str, typer.Option("--mode", help=f"Memory mode: {', '.join(MODES)}.")] = "full",
    checkpointing: Annotated[bool, typer.Option("--checkpointing/--no-checkpointing",
                                                help="Recompute each decoder layer in the backward pass (less "
                                                     "activation memory, same delta).")] = False,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="AdamW states: adamw (float32) or adamw_8bit "
                                                  "(bitsandbytes, the 'lean' extra); default: the job's.")] = None,
    loss_chunk: Annotated[int, typer.Option("--loss-chunk", min=0, help="Positions the LM head and loss take at a time "
                                            "(0: all at once).")] = 0,
    prefetch: Annotated[bool, typer.Option("--prefetch", help="Offload mode: fetch the next layer's likely experts while "
                                           "one computes (faster on CUDA, a second working set on the device).")] = False,
    wallet_path: WalletPathOpt = DEFAULT_WALLET_PATH,
    run: RunOpt = None,
    store: StoreOpt = None,
    chain: ChainOpt = None,
    metrics_port: MetricsPortOpt = None,
    job_timeout: JobTimeoutOpt = 600.0,
    device: DeviceOption = "auto",
) -> None:
    """Wait for the owner's job, then take part in every remaining round."""
    from moeforge.cli import settings
    from moeforge.cli.progress import training_bar
    from moeforge.errors import ConfigError
    from moeforge.network.job import wait_for_job
    from moeforge.network.miner import Miner, run_miner
    from moeforge.network.role import RoleContext

    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: a miner runs in one of the memory modes {', '.join(MODES)}.")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {optimizer!r}: expected one of {', '.join(OPTIMIZERS)}.")
    fault = settings.fault()
    keypair = hotkey_of(wallet, wallet_path)
    chain_, store_ = open_chain_url(chain), open_store_url(store)
    _, job = wait_for_job(chain_, store_, owner, timeout_s=job_timeout, hotkey=keypair.ss58_address)
    with training_bar(f"miner {keypair.ss58_address[:10]} ({mode})", console) as on_step:
        ctx = RoleContext(chain_, store_, keypair, run_dir=run or default_run("miner", keypair.ss58_address),
                          metrics_port=metrics_port, fault=fault, device=device)
        miner = Miner(ctx, job=job, mode=mode, checkpointing=checkpointing, optimizer=optimizer, loss_chunk_tokens=loss_chunk,
                      prefetch=prefetch, on_step=on_step)
        run_miner(miner)

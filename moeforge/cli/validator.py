"""`moeforge validator run`: judge every round of the owner's job on held-out data, merge, set weights."""

import typer

from moeforge.cli.endpoints import (
    DEFAULT_WALLET_PATH,
    ChainOpt,
    DataOpt,
    JobTimeoutOpt,
    MetricsPortOpt,
    OwnerOpt,
    RunOpt,
    SaltOpt,
    StoreOpt,
    WalletOpt,
    WalletPathOpt,
    default_run,
    hotkey_of,
    open_chain_url,
    open_store_url,
    read_job_data,
    require_salt,
)
from moeforge.cli.inputs import DeviceOption, PromptFieldOpt, ResponseFieldOpt, TextFieldOpt

app = typer.Typer(no_args_is_help=True, help="Validate: score every submission by Proof-of-Loss, merge the best, set weights.")


@app.command()
def run(
    wallet: WalletOpt,
    owner: OwnerOpt,
    data: DataOpt = "math",
    salt: SaltOpt = None,
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    wallet_path: WalletPathOpt = DEFAULT_WALLET_PATH,
    run: RunOpt = None,
    store: StoreOpt = None,
    chain: ChainOpt = None,
    metrics_port: MetricsPortOpt = None,
    job_timeout: JobTimeoutOpt = 600.0,
    device: DeviceOption = "auto",
) -> None:
    """Wait for the owner's job, derive the held-out split from --data and the salt, and judge each round."""
    from moeforge.cli import settings
    from moeforge.network.job import wait_for_job
    from moeforge.network.validator import Validator, run_validator
    from moeforge.network.role import RoleContext

    fault = settings.fault()
    salt = require_salt(salt)
    records, _ = read_job_data(data, prompt_field, response_field, text_field)
    keypair = hotkey_of(wallet, wallet_path)
    chain_, store_ = open_chain_url(chain), open_store_url(store)
    digest, job = wait_for_job(chain_, store_, owner, timeout_s=job_timeout, hotkey=keypair.ss58_address)
    ctx = RoleContext(chain_, store_, keypair, run_dir=run or default_run("validator", keypair.ss58_address),
                      metrics_port=metrics_port, fault=fault, device=device)
    validator = Validator(ctx, job=job, job_digest=digest, records=records, salt=salt)
    run_validator(validator)

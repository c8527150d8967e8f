"""What every role command opens the same way: its wallet, the chain, the store, its run folder, the job data.

The options are declared once here (typed `Annotated` aliases) and each `moeforge owner|miner|validator`
command lists the ones it takes; the openers turn a bad value into one error that names the flag.
"""

from pathlib import Path
from typing import Annotated

import typer

from moeforge.chain.keys import DEFAULT_WALLET_PATH as DEFAULT_WALLET_PATH  # re-exported for the role commands
from moeforge.cli import settings
from moeforge.data.corpora import DOMAINS
from moeforge.errors import ConfigError

MODES = ("full", "quantized", "subset", "offload")  # extract.package.MODES, without importing torch for --help

WalletOpt = Annotated[str, typer.Option("--wallet", help="The role's wallet, as NAME or NAME/HOTKEY (btcli's files).")]
WalletPathOpt = Annotated[Path, typer.Option("--wallet-path", help="Wallets folder (btcli's default).")]
ChainOpt = Annotated[
    str | None, typer.Option("--chain", help="Chain URL (default: $MOEFORGE_CHAIN, or the local chain under $MOEFORGE_HOME).")
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Store URL: file:///folder or s3://bucket/prefix?endpoint=… (default: $MOEFORGE_STORE, "
                 "or the folder store under $MOEFORGE_HOME)."),
]


def _run_folder(run: Path | None) -> Path | None:
    """--run must be a folder, or a path where one can be made."""
    from moeforge.cli.inputs import output_dir

    return run if run is None else output_dir(run, "--run")


RunOpt = Annotated[Path | None, typer.Option("--run", callback=_run_folder,
                                             help="The role's run folder: events, metrics, resumable state.")]
MetricsPortOpt = Annotated[
    int | None, typer.Option("--metrics-port", min=1, max=65535, help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics.")
]
OwnerOpt = Annotated[str, typer.Option("--owner", help="The job owner's hotkey (ss58): whose job to work on.")]
JobTimeoutOpt = Annotated[float, typer.Option("--job-timeout", min=1, help="Seconds to wait for the owner to publish its job.")]
DataOpt = Annotated[str, typer.Option("--data", help=f"The job's data file, or a vendored corpus ({', '.join(DOMAINS)}; its train split).")]
SaltOpt = Annotated[
    str | None,
    typer.Option("--salt", envvar="MOEFORGE_DATA_SALT", show_envvar=True,
                 help="Secret the owner and validators share: it decides the held-out split."),
]


def open_chain_url(url: str | None):
    from moeforge.chain.open import open_chain

    return open_chain(url or settings.chain_url())


def open_store_url(url: str | None):
    from moeforge.store.open import open_store

    return open_store(url or settings.store_url(), credentials=settings.s3_credentials())


def hotkey_of(wallet: str, path: Path):
    """The hotkey keypair of wallet NAME[/HOTKEY] under `path`."""
    from moeforge.chain.keys import load_wallet

    name, _, hotkey = wallet.partition("/")
    if not name:
        raise ConfigError(f"--wallet {wallet!r}: expected NAME or NAME/HOTKEY.")
    return load_wallet(name, hotkey or "default", path).hotkey


def require_salt(salt: str | None) -> str:
    if not salt:
        raise ConfigError(
            "no held-out salt: pass --salt SECRET or set MOEFORGE_DATA_SALT, the secret the job's owner split its data "
            "with. Validators must use the owner's salt; miners never get it."
        )
    return salt


def read_job_data(data: str, prompt_field: str | None, response_field: str | None, text_field: str | None):
    """(records, domain name) of --data with its field options."""
    from moeforge.cli.inputs import job_records

    records = list(job_records(data, "train", prompt_field=prompt_field, response_field=response_field, text_field=text_field))
    domain = data if data in DOMAINS and not Path(data).exists() else Path(data).name
    return records, domain


def require_model(model: Path) -> Path:
    """`model` if it is a checkpoint folder; ArtifactNotFound naming --model otherwise."""
    from moeforge.errors import ArtifactNotFound

    if not (model / "config.json").is_file():
        raise ArtifactNotFound(
            f"--model {model}: not a checkpoint folder (no config.json). Pass a folder written by save_pretrained with "
            "its tokenizer, e.g. one built with `moeforge testbed build --out DIR`."
        )
    return model.resolve()


def default_run(role: str, hotkey: str) -> Path:
    """`$MOEFORGE_HOME/runs/<role>-<first 10 characters of the hotkey>`."""
    return settings.home() / "runs" / f"{role}-{hotkey[:10]}"


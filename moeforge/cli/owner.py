"""`moeforge owner …`: publish a job to the network, or publish it and see it through to its record."""

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from moeforge.cli.endpoints import (
    DEFAULT_WALLET_PATH,
    ChainOpt,
    DataOpt,
    MetricsPortOpt,
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
    require_model,
    require_salt,
)
from moeforge.cli.inputs import DeviceOption, PromptFieldOpt, ResponseFieldOpt, TextFieldOpt, flag
from moeforge.cli.library import CatalogOpt, LibraryStoreOpt
from moeforge.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Publish a job (base model, data, experts, schedule) and record how it went.")
console = Console()

ModelOpt = Annotated[Path, typer.Option("--model", help="Base model: a checkpoint folder with its tokenizer.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A JSON job request; flags given here override its fields.")]
JobIdOpt = Annotated[str | None, typer.Option("--job-id", help="The job's name (letters, digits, . _ -).")]
RoundsOpt = Annotated[int | None, typer.Option("--rounds", help="Rounds in the job \\[default: 3].")]
InnerStepsOpt = Annotated[int | None, typer.Option("--inner-steps", help="H: optimizer steps a miner trains per round \\[default: 16].")]
PartsOpt = Annotated[int | None, typer.Option("--parts", help="Split the selected experts into this many parts; each miner "
                                              "trains the one assigned to it each round \\[default: 1].")]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Miners' peak learning rate \\[default: 2e-3].")]
BlockSecondsOpt = Annotated[float | None, typer.Option("--block-seconds", help="The chain's block time the schedule is sized for \\[default: 1].")]
TrainBlocksOpt = Annotated[int | None, typer.Option("--train-blocks", help="Blocks in each round's train phase \\[default: 60].")]
ExpertsOpt = Annotated[Path | None, typer.Option("--experts", help=(
    "The experts to train: an expert_config.json written by `moeforge select` on this base model \\[default: profile the "
    "job's train split and select by --config's select rule]."))]
WarmStartOpt = Annotated[str | None, typer.Option("--warm-start", help=(
    "Start the selected experts from the library: auto (the best match above the similarity threshold that lowers the train "
    "split's loss), none (the base's experts), or entry ids best first, comma-separated \\[default: auto]."))]
LibraryFlag = Annotated[bool, typer.Option("--library/--no-library", help=(
    "Use the expert library (--catalog, --library-store): match for a warm start, deposit the final state."))]
ScoreBlocksOpt = Annotated[int | None, typer.Option("--score-blocks", help="Blocks in each round's score phase \\[default: 30].")]


def job_request(config: Path | None, model: Path, domain: str, defaults: dict | None = None, **flags):
    """The owner's JobRequest: `defaults`, then --config's fields, then every flag that was given; one ConfigError
    naming all bad ones, each as the flag or the config file's key it came from."""
    from pydantic import ValidationError

    from moeforge.json_file import read_json_object, shown, validation_problems
    from moeforge.network.owner import JobRequest

    from_file = {} if config is None else read_json_object(
        config, what="job request", name="--config",
        fix="Pass a JSON object of JobRequest fields, e.g. {\"rounds\": 3, \"train\": {\"lr\": 0.002}}.")
    fields = {**(defaults or {}), **from_file}
    lr = flags.pop("lr", None)
    if lr is not None:
        fields["train"] = {**fields.get("train", JobRequest.model_fields["train"].default.model_dump()), "lr": lr}
    given = {name: value for name, value in flags.items() if value is not None}
    infinite = [f"{flag(name)} {value}" for name, value in {**given, "lr": lr}.items()
                if isinstance(value, float) and not math.isfinite(value)]
    if infinite:
        raise ConfigError(f"bad option: {', '.join(infinite)}: expected a finite number.")
    fields.update(given)
    fields.setdefault("job_id", f"{domain}-job".replace("/", "-")[:64])
    fields["base_model"] = str(model)
    fields.setdefault("domain", domain)  # a --config that names the domain (the Centre's jobs do) keeps it
    try:
        return JobRequest(**fields)
    except ValidationError as exc:
        def rename(loc: tuple, value: object) -> str | None:
            if loc == ("train", "lr") and lr is not None:
                return f"--lr {shown(lr)}"
            if loc and loc[0] in given:
                return f"{flag(str(loc[0]))} {shown(given[loc[0]])}"
            return None  # a key of --config (or of the defaults)

        source = f" (flags, and the keys of --config {config})" if config is not None else ""
        raise ConfigError(f"bad job request{source}: {validation_problems(exc, rename)}.") from None


def _owner(wallet, wallet_path, model, data, prompt_field, response_field, text_field, salt, config, run, store, chain,
           metrics_port, device, experts, library, catalog, library_store, **flags):
    from moeforge.cli import settings
    from moeforge.network.owner import Owner
    from moeforge.network.role import RoleContext

    fault = settings.fault()
    salt = require_salt(salt)
    model = require_model(model)
    records, domain = read_job_data(data, prompt_field, response_field, text_field)
    request = job_request(config, model, domain, **flags)
    selection = None
    if experts is not None:
        from moeforge.profile.selection import load_expert_config

        selection = load_expert_config(experts)
    keypair = hotkey_of(wallet, wallet_path)
    ctx = RoleContext(open_chain_url(chain), open_store_url(store), keypair, run_dir=run or default_run("owner", keypair.ss58_address),
                      metrics_port=metrics_port, fault=fault, device=device)
    lib = None
    if library:
        from moeforge.cli.library import open_library_urls

        lib = open_library_urls(catalog, library_store)
    return Owner(ctx, request=request, records=records, salt=salt, selection=selection, library=lib)


@app.command()
def publish(
    wallet: WalletOpt, model: ModelOpt, data: DataOpt = "math", salt: SaltOpt = None,
    prompt_field: PromptFieldOpt = None, response_field: ResponseFieldOpt = None, text_field: TextFieldOpt = None,
    config: ConfigOpt = None, job_id: JobIdOpt = None, rounds: RoundsOpt = None, inner_steps: InnerStepsOpt = None,
    parts: PartsOpt = None, lr: LrOpt = None, block_seconds: BlockSecondsOpt = None, train_blocks: TrainBlocksOpt = None,
    score_blocks: ScoreBlocksOpt = None, wallet_path: WalletPathOpt = DEFAULT_WALLET_PATH, run: RunOpt = None,
    store: StoreOpt = None, chain: ChainOpt = None, device: DeviceOption = "auto", experts: ExpertsOpt = None,
    warm_start: WarmStartOpt = None, library: LibraryFlag = True, catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None,
) -> None:
    """Select the experts, upload the train rows and initial state, and publish the job; print its digest."""
    owner = _owner(wallet, wallet_path, model, data, prompt_field, response_field, text_field, salt, config, run, store, chain,
                   None, device, experts, library, catalog, library_store, warm_start=warm_start, job_id=job_id, rounds=rounds, inner_steps=inner_steps, parts=parts, lr=lr, block_seconds=block_seconds,
                   train_blocks=train_blocks, score_blocks=score_blocks)
    digest, job = owner.publish()
    _print_job(digest, job)


@app.command()
def run(
    wallet: WalletOpt, model: ModelOpt, data: DataOpt = "math", salt: SaltOpt = None,
    prompt_field: PromptFieldOpt = None, response_field: ResponseFieldOpt = None, text_field: TextFieldOpt = None,
    config: ConfigOpt = None, job_id: JobIdOpt = None, rounds: RoundsOpt = None, inner_steps: InnerStepsOpt = None,
    parts: PartsOpt = None, lr: LrOpt = None, block_seconds: BlockSecondsOpt = None, train_blocks: TrainBlocksOpt = None,
    score_blocks: ScoreBlocksOpt = None, wallet_path: WalletPathOpt = DEFAULT_WALLET_PATH, run: RunOpt = None,
    store: StoreOpt = None, chain: ChainOpt = None, metrics_port: MetricsPortOpt = None,
    device: DeviceOption = "auto", experts: ExpertsOpt = None, warm_start: WarmStartOpt = None, library: LibraryFlag = True,
    catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None,
) -> None:
    """Publish the job, follow its rounds on chain, then write and print its record (final state, history, shares)."""
    from moeforge.cli.job_view import print_record
    from moeforge.cli.progress import job_bar
    from moeforge.network.owner import run_owner

    owner = _owner(wallet, wallet_path, model, data, prompt_field, response_field, text_field, salt, config, run, store, chain,
                   metrics_port, device, experts, library, catalog, library_store, warm_start=warm_start, job_id=job_id, rounds=rounds, inner_steps=inner_steps, parts=parts, lr=lr, block_seconds=block_seconds,
                   train_blocks=train_blocks, score_blocks=score_blocks)
    with job_bar(f"job {owner.request.job_id}", console) as on_block:
        record = run_owner(owner, on_block=on_block)
    print_record(record, console)
    console.print(f"record: {owner.run_dir / 'result.json'}", highlight=False, soft_wrap=True)


def _print_job(digest: str, job) -> None:
    s = job.schedule
    console.print(f"job {job.job_id}: {digest}", highlight=False, soft_wrap=True)
    console.print(f"owner {job.owner} · {len(job.slots)} experts · {job.train_rows:,} train rows in the store · "
                  f"{job.heldout_rows:,} held-out rows kept back", highlight=False, soft_wrap=True)
    console.print(f"{job.rounds} rounds of {s.round_blocks} blocks (train {s.train_blocks}, commit {s.commit_blocks}, "
                  f"reveal {s.reveal_blocks}, score {s.score_blocks}) from block {s.start_block} to "
                  f"{s.round_end(job.last_round)}", highlight=False, soft_wrap=True)

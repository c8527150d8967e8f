"""`moeforge service up|tenant|key`: the Customization Centre on this machine, and its tenants and keys."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from moeforge.cli.inputs import DeviceOption

app = typer.Typer(no_args_is_help=True, help="The Customization Centre: an HTTP API and web UI from data to a trained model.")
tenant_app = typer.Typer(no_args_is_help=True, help="The Centre's tenants (customers).")
key_app = typer.Typer(no_args_is_help=True, help="Tenants' API keys.")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
console = Console()

HomeOpt = Annotated[Path | None, typer.Option("--home", help="The Centre's folder \\[default: $MOEFORGE_HOME/service].")]
DatabaseOpt = Annotated[str | None, typer.Option("--database", help=(
    "The database (the expert library's catalog): sqlite:///… or postgresql://… \\[default: $MOEFORGE_CATALOG or the "
    "library's SQLite file]."))]
WORKER_RESTARTS = 5


def resolve_settings(home: Path | None, database: str | None, preset_name: str = "default", miners: int = 3,
                     validators: int = 2, device: str = "cpu", max_upload_mib: int = 512, model: Path | None = None,
                     worker_nice: int = 10, api_workers: int | None = None):
    """The settings `service up` runs on: the embedded defaults, the testbed of `preset_name` (or the checkpoint
    `model`, with the job settings of that preset) as the one base."""
    from moeforge.cli import settings
    from moeforge.cli.demo import JOB_DEFAULTS
    from moeforge.cli.testbed import build_or_reuse
    from moeforge.service.settings import MIB, ServiceSettings

    home = (home or settings.home() / "service").resolve()
    if model is None:
        _, base = build_or_reuse(preset_name, None, force=False)
        name = f"testbed-{preset_name}"
    else:
        from moeforge.cli.endpoints import require_model

        base = require_model(model)
        name = base.name
    return ServiceSettings(home=home, database=database or settings.catalog_url(), store=(home / "store").as_uri(),
                           library_store=settings.library_store_url(), bases={name: str(base)},
                           job_defaults={name: JOB_DEFAULTS.get(preset_name, {})}, miners=miners, validators=validators,
                           device=device, max_upload_bytes=max_upload_mib * MIB, worker_nice=worker_nice,
                           **({} if api_workers is None else {"api_workers": api_workers}))


@app.command()
def up(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8100,
    home: HomeOpt = None,
    database: DatabaseOpt = None,
    preset_name: Annotated[str, typer.Option("--preset", help="Testbed preset that is the Centre's base model.")] = "default",
    miners: Annotated[int, typer.Option("--miners", min=1, help="Miner processes per job's local network.")] = 3,
    validators: Annotated[int, typer.Option("--validators", min=1, help="Validator processes per job.")] = 2,
    max_upload_mib: Annotated[int, typer.Option("--max-upload-mib", min=1, help="Largest data file accepted, in MiB.")] = 512,
    model: Annotated[Path | None, typer.Option("--model", help="A base checkpoint folder instead of the testbed (the "
                                                "--preset's job settings apply).")] = None,
    device: DeviceOption = "cpu",
    worker_nice: Annotated[int, typer.Option("--worker-nice", min=0, max=19, help="Niceness of the worker and the jobs' "
                                             "roles: the API answers first, jobs train on the CPU left.")] = 10,
    api_workers: Annotated[int | None, typer.Option("--api-workers", min=1, max=16, help="API processes serving the port "
                                                    "\\[default: 2 on a machine with 2 or more cores, else 1].")] = None,
) -> None:
    """Start the Centre: the API and web UI on HOST:PORT, and its worker process, on the embedded defaults."""
    from moeforge.extras import require

    require("serve", "the Customization Centre")
    require("service", "the Customization Centre")
    import uvicorn

    from moeforge.network.local import die_with_parent
    from moeforge.service.app import create_app
    from moeforge.service.auth import create_tenant
    from moeforge.service.db import Database
    from moeforge.service.settings import write_settings

    cfg = resolve_settings(home, database, preset_name, miners, validators, device, max_upload_mib, model, worker_nice,
                           api_workers)
    path = write_settings(cfg)
    db = Database(cfg.database)
    if _no_tenant(db):
        tenant, key = create_tenant(db, "default")
        console.print(f"created the tenant [bold]default[/bold]; its admin API key (shown once, keep it):\n{key}", highlight=False,
                      soft_wrap=True)
    log = open(cfg.home / "worker.log", "ab")
    command = [sys.executable, "-m", "moeforge", "service", "worker", "--settings", str(path)]

    def lowered():  # in the worker before exec: its niceness (its roles inherit it), and it dies with this process
        os.nice(cfg.worker_nice)
        die_with_parent()

    def start_worker() -> subprocess.Popen:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=lowered)

    worker = {"proc": start_worker(), "restarts": 0}
    stop = threading.Event()

    def supervise():  # a worker that dies is started again: the database tells it where every job was
        while not stop.wait(1.0):
            code = worker["proc"].poll()
            if code is not None and worker["restarts"] < WORKER_RESTARTS:
                worker["restarts"] += 1
                console.print(f"the worker exited ({code}); starting it again (see {cfg.home / 'worker.log'})", highlight=False)
                worker["proc"] = start_worker()

    threading.Thread(target=supervise, daemon=True, name="worker-supervisor").start()
    try:
        if cfg.api_workers == 1:
            server = uvicorn.Server(uvicorn.Config(create_app(cfg), host=host, port=port, log_level="warning"))
            threading.Thread(target=_announce, args=(server, host, cfg), daemon=True).start()
            server.run()
        else:  # several API processes accept on one socket, bound here; it queues connections until they are up
            from uvicorn.supervisors import Multiprocess

            from moeforge.service.app import SETTINGS_ENV

            os.environ[SETTINGS_ENV] = str(path)
            config = uvicorn.Config("moeforge.service.app:from_environment", factory=True, host=host, port=port,
                                    workers=cfg.api_workers, log_level="warning")
            sock = config.bind_socket()
            sock.listen(config.backlog)  # connections wait in the backlog until an API process accepts them
            _say_up(host, sock.getsockname()[1], cfg)
            Multiprocess(config, sockets=[sock]).run()
    finally:
        stop.set()
        worker["proc"].terminate()
        try:
            worker["proc"].wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker["proc"].kill()


def _announce(server, host: str, cfg) -> None:
    while not server.started:
        time.sleep(0.05)
    _say_up(host, server.servers[0].sockets[0].getsockname()[1], cfg)


def _say_up(host: str, port: int, cfg) -> None:
    console.print(f"the Customization Centre is up: http://{host}:{port}/ (web UI), http://{host}:{port}/v1 (API, the "
                  f"OpenAI client's base_url); base model {cfg.default_base}; database {cfg.database}; worker log "
                  f"{cfg.home / 'worker.log'}", highlight=False, soft_wrap=True)


def _no_tenant(db) -> bool:
    from sqlalchemy import select

    from moeforge.service.schema import TenantRow

    with db.session() as s:
        return s.scalar(select(TenantRow).limit(1)) is None


@app.command(hidden=True)
def worker(settings_file: Annotated[Path, typer.Option("--settings", help="The settings.json `service up` wrote.")]) -> None:
    """The Centre's worker process (`service up` starts it)."""
    from moeforge.service.settings import read_settings
    from moeforge.service.worker import main_loop

    main_loop(read_settings(settings_file))


def _db(database: str | None):
    from moeforge.cli import settings
    from moeforge.service.db import Database

    return Database(database or settings.catalog_url())


@tenant_app.command("add")
def tenant_add(name: Annotated[str, typer.Argument(help="The tenant's name.")], database: DatabaseOpt = None) -> None:
    """Create a tenant and print its first (admin) API key."""
    from moeforge.service.auth import create_tenant

    tenant, key = create_tenant(_db(database), name)
    console.print(f"tenant {name} ({tenant}); its admin API key (shown once):\n{key}", highlight=False, soft_wrap=True)


@tenant_app.command("ls")
def tenant_ls(database: DatabaseOpt = None) -> None:
    """List the tenants."""
    from sqlalchemy import select

    from moeforge.service.schema import TenantRow

    with _db(database).session() as s:
        rows = list(s.scalars(select(TenantRow).order_by(TenantRow.created_at)))
    for row in rows:
        console.print(f"{row.name}\t{row.id}\t{row.created_at:%Y-%m-%d %H:%M}", highlight=False)
    if not rows:
        console.print("no tenants yet: `moeforge service tenant add NAME`")


@key_app.command("create")
def key_create(tenant: Annotated[str, typer.Option("--tenant", help="The tenant's name.")],
               name: Annotated[str, typer.Option("--name", help="A name for the key.")] = "cli",
               scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: read, write, admin.")] = "read,write",
               database: DatabaseOpt = None) -> None:
    """Create an API key for a tenant and print it (shown once)."""
    from moeforge.service.auth import create_key, tenant_id_of

    db = _db(database)
    key_id, key = create_key(db, tenant_id_of(db, tenant), name, [s.strip() for s in scopes.split(",") if s.strip()])
    console.print(f"key {key_id} ({scopes}) for {tenant}:\n{key}", highlight=False, soft_wrap=True)


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key-…).")], database: DatabaseOpt = None) -> None:
    """Revoke an API key: every request with it is refused from now on."""
    from moeforge.errors import ConfigError
    from moeforge.service.auth import revoke_key

    if not revoke_key(_db(database), key_id):
        raise ConfigError(f"no API key {key_id!r}.")
    console.print(f"revoked {key_id}", highlight=False)

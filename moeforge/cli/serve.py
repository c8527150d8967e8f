"""`moeforge serve` and `moeforge usage report`: the local OpenAI-compatible server of an export, and its ledger."""

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.inputs import DeviceOption
from moeforge.errors import ConfigError

console = Console()
usage_app = typer.Typer(no_args_is_help=True, help="The usage ledger a server writes: verify it and sum it per entry.")


def serve(
    path: Annotated[Path, typer.Argument(help="An export folder (`moeforge export`) or a bundle (`moeforge bundle create`).")],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help="An accepted API key (repeatable) \\[default: "
                                                                        "$MOEFORGE_API_KEYS, comma-separated, else one made and printed].")] = None,
    routing: Annotated[str, typer.Option("--routing", help="exact (moeforge's runtime, from the full router rows) or "
                                                          "standard (the checkpoint as stock transformers runs it).")] = "exact",
    keys: Annotated[Path | None, typer.Option("--keys", help="A keys file (`moeforge serve-key create`): its keys that "
                                                           "have not expired or been revoked are accepted, read again as it "
                                                           "changes.")] = None,
    ledger: Annotated[Path | None, typer.Option("--ledger", help="Folder of the usage ledger \\[default: $MOEFORGE_HOME/usage/NAME].")] = None,
    ledger_key: Annotated[Path | None, typer.Option("--ledger-key", help="EC private key signing the ledger \\[default: "
                                                                         "$MOEFORGE_HOME/keys/usage.pem, created on first use].")] = None,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", min=1)] = 2048,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens one request may generate.")] = 512,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Requests decoded together.")] = 16,
    max_in_flight: Annotated[int, typer.Option("--max-in-flight", min=1, help="Requests admitted at once; beyond, 429.")] = 64,
    device: DeviceOption = "auto",
) -> None:
    """Serve the export on an OpenAI-compatible HTTP API, offline, metering usage per expert into a signed ledger."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    app, info = build_app(path, api_key, routing, ledger, ledger_key, max_prompt_tokens, max_tokens, max_batch, max_in_flight, device,
                          keys_file=keys)
    import uvicorn

    console.print(f"serving {info['name']} ({info['routing']} routing) on http://{host}:{port}/v1 · ledger {info['ledger']}",
                  highlight=False, soft_wrap=True)
    if info["made_key"]:
        console.print(f"API key: {info['keys'][0]}", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def build_app(path: Path, api_key, routing: str, ledger, ledger_key, max_prompt_tokens: int, max_tokens: int, max_batch: int,
              max_in_flight: int, device: str, *, keys_file: Path | None = None):
    """(ASGI app, facts) for `serve`; also what the tests and the demo start in a thread."""
    from transformers import AutoTokenizer

    from moeforge.extras import require

    require("serve", "the local server")
    from moeforge.cli import settings
    from moeforge.cli.bundle import default_key
    from moeforge.deploy.bundle import MODEL, SUMS, describe, generate_key, verify_bundle
    from moeforge.deploy.engine import Engine
    from moeforge.deploy.export import SIDECAR, load_exact
    from moeforge.deploy.keys import Keys
    from moeforge.deploy.server import Limits, create_app
    from moeforge.deploy.usage import Ledger
    from moeforge.model.device import resolve_device

    if routing not in ("exact", "standard"):
        raise ConfigError(f"--routing {routing!r}: expected exact or standard.")
    keys = list(api_key or [k for k in os.environ.get("MOEFORGE_API_KEYS", "").split(",") if k.strip()])
    made = not keys and keys_file is None
    if made:
        keys = ["sk-moeforge-" + secrets.token_urlsafe(24)]
    accepted = Keys(keys, keys_file)  # a bad keys file is refused before the model loads
    if (path / SUMS).is_file():  # a bundle: check it before serving a byte of it
        check = verify_bundle(path)
        if not check.ok:
            raise ConfigError(f"{path}: the bundle does not verify ({describe(check)}); refusing to serve it.")
        path = path / MODEL
    if not (path / SIDECAR).is_file():
        raise ConfigError(f"{path}: not a moeforge export or bundle (no {SIDECAR}).")
    target = resolve_device(device)
    if routing == "exact":
        model, sidecar = load_exact(path, device=target)
    else:
        from moeforge.deploy.export import read_sidecar
        from moeforge.model.load import load_model

        model, sidecar = load_model(path).to(target), read_sidecar(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    name = path.resolve().name if path.name != MODEL else path.resolve().parent.name
    mapping = {(int(layer), e["id"]): (e["original"], e.get("entry")) for layer, experts in sidecar["layers"].items() for e in experts}
    ledger = ledger or settings.home() / "usage" / name
    key = ledger_key or default_key().with_name("usage.pem")
    if not key.is_file():
        generate_key(key)
    engine = Engine(model, tokenizer, max_batch=max_batch).start()
    app = create_app(engine, model_name=name, keys=accepted,
                     limits=Limits(max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens, max_in_flight=max_in_flight),
                     ledger=Ledger(ledger, key, model=name, mapping=mapping))
    app.state.engine = engine
    return app, {"name": name, "routing": routing if sidecar.get("approximate") else "exact", "keys": keys, "made_key": made,
                 "ledger": ledger, "ledger_key": key}


@usage_app.command()
def report(
    ledger: Annotated[Path, typer.Argument(help="A ledger file or folder written by `moeforge serve`.")],
    public_key: Annotated[Path, typer.Option("--public-key", help="The server's ledger public key (usage.pub).")],
) -> None:
    """Verify the ledger's hash chain and signatures, and sum usage per library entry; exit 1 on any broken record."""
    from moeforge.deploy.usage import verify_ledger

    totals, problems = verify_ledger(ledger, public_key)
    table = Table(title=f"usage: {totals['requests']} requests, {totals['prompt_tokens']:,} tokens in, "
                        f"{totals['completion_tokens']:,} out")
    table.add_column("library entry")
    table.add_column("routed expert hits", justify="right")
    for entry, hits in totals["entries"].most_common():
        table.add_row(entry, f"{hits:,}")
    console.print(table)
    for p in problems:
        console.print(f"[red]BAD[/red] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print("every record's chain link and signature verified", highlight=False)


keys_app = typer.Typer(no_args_is_help=True, help="The local server's API keys: made, listed and revoked in a keys file "
                                                  "that `moeforge serve --keys` reads (only hashes are kept).")
KeysOption = Annotated[Path, typer.Option("--keys", help="The keys file (made by the first `create`).")]


@keys_app.command("create")
def key_create(
    keys: KeysOption,
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    expires: Annotated[str | None, typer.Option("--expires", help="When it stops working: 30d, 12h, 90m, or an ISO date or "
                                                                  "time (UTC) \\[default: never].")] = None,
) -> None:
    """Add a key to the keys file and print it once; a running server accepts it at its next request."""
    from moeforge.deploy.keys import create_key

    entry, key = create_key(keys, name, expires)
    until = entry.expires_at.isoformat(timespec="seconds") if entry.expires_at else "never"
    console.print(f"{entry.id} ({entry.name}), expires {until}; the key (shown once, keep it):", highlight=False)
    print(key)


@keys_app.command("ls")
def key_ls(keys: KeysOption) -> None:
    """The keys of the file: id, name, created, expires and state (active, expired or revoked); never the keys."""
    from datetime import UTC, datetime

    from moeforge.deploy.keys import read_keys

    now = datetime.now(UTC)
    table = Table(title=str(keys))
    for column in ("id", "name", "created", "expires", "state"):
        table.add_column(column)
    def shown(when):  # to the minute, UTC: the table keeps whole times on an 80-column terminal
        return when.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")

    for e in read_keys(keys).keys:
        table.add_row(e.id, e.name, shown(e.created_at), shown(e.expires_at) if e.expires_at else "never", e.state(now))
    console.print(table)


@keys_app.command("revoke")
def key_revoke(keys: KeysOption, key_id: Annotated[str, typer.Argument(help="The key's id (key-…), as `ls` shows it.")]) -> None:
    """Revoke a key; a running server refuses it from its next request."""
    from moeforge.deploy.keys import revoke_key

    entry = revoke_key(keys, key_id)
    console.print(f"{entry.id} ({entry.name}) revoked at {entry.revoked_at.isoformat(timespec='seconds')}", highlight=False)

"""`moeforge store …`: put, get, verify and list artifacts in the content-addressed store."""

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from moeforge.cli import settings
from moeforge.errors import ArtifactNotFound, StoreError
from moeforge.store.open import open_store
from moeforge.store.protocol import Store, check_digest

log = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True, help="Put, get, verify and list artifacts in the content-addressed store.")

StoreUrl = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Store URL: file:///folder, a folder, or s3://bucket/prefix?endpoint=…  "
        "\\[default: $MOEFORGE_STORE, else the folder store under $MOEFORGE_HOME]",
        show_default=False,
    ),
]


def _open(url: str | None) -> Store:
    return open_store(url or settings.store_url(), credentials=settings.s3_credentials())


@app.command()
def put(
    file: Annotated[Path, typer.Argument(help="The file to store.")],
    store: StoreUrl = None,
) -> None:
    """Store FILE; print its digest and size in bytes."""
    target = _open(store)
    digest = target.put_file(file)
    Console().print(f"{digest}  {target.size(digest)}", highlight=False, soft_wrap=True)


@app.command()
def get(
    digest: Annotated[str, typer.Argument(help="The object's sha256 digest.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
    store: StoreUrl = None,
) -> None:
    """Fetch the object DIGEST, checking its hash, to --out or stdout."""
    if out is not None:
        from moeforge.cli.inputs import output_file

        output_file(out, "--out")
    data = _open(store).get(digest)
    if out is None:
        stdout = typer.get_binary_stream("stdout")
        stdout.write(data)
        stdout.flush()
        return
    out.write_bytes(data)
    Console(stderr=True).print(f"wrote {len(data):,} bytes to {escape(str(out))}", highlight=False, soft_wrap=True)


@app.command()
def verify(
    digests: Annotated[list[str] | None, typer.Argument(help="Objects to check (default: every object).")] = None,
    store: StoreUrl = None,
) -> None:
    """Re-hash every object (or the given ones); report each bad one and exit 1 if there is any."""
    target = _open(store)
    wanted = [check_digest(digest) for digest in digests] if digests else list(target.digests())
    err = Console(stderr=True)
    bad = []
    with _bar(err) as progress:
        task = progress.add_task("verifying", total=len(wanted))
        for digest in wanted:
            try:
                target.get(digest)  # raises unless the bytes hash to digest
            except (StoreError, ArtifactNotFound) as exc:  # the outcome verify reports, one per object
                bad.append(digest)
                err.print(f"[red]bad:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            progress.advance(task)
    summary = f"{len(wanted) - len(bad)} of {len(wanted)} objects ok in {target.url}"
    Console().print(escape(summary), highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(1)


@app.command("ls")
def ls(store: StoreUrl = None) -> None:
    """List every object: digest and size in bytes."""
    target = _open(store)
    console = Console()
    for digest in target.digests():
        console.print(f"{digest}  {target.size(digest)}", highlight=False, soft_wrap=True)


def _bar(console: Console) -> Progress:
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=True)

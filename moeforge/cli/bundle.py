"""`moeforge bundle …`: an export made ready for an air-gapped site (checksums, signature, ML-BOM, licences, wheels)."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from moeforge.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="Bundle an export for an air-gapped site, and verify a bundle offline.")
console = Console()

KeyOpt = Annotated[Path | None, typer.Option("--key", help="The publisher's EC private key (PEM) \\[default: "
                                                           "$MOEFORGE_HOME/keys/publisher.pem, created on first use].")]


def default_key() -> Path:
    from moeforge.cli import settings

    return settings.home() / "keys" / "publisher.pem"


@app.command()
def create(
    export: Annotated[Path, typer.Argument(help="An export folder written by `moeforge export`.")],
    out: Annotated[Path, typer.Option("--out", help="The bundle folder to write.")],
    key: KeyOpt = None,
    tar: Annotated[bool, typer.Option("--tar/--no-tar", help="Also write OUT.tar.")] = False,
    wheelhouse: Annotated[bool, typer.Option("--wheelhouse/--no-wheelhouse", help="Include every wheel the server needs "
                                                           "(fetched from your package index), so it installs offline.")] = True,
) -> None:
    """Write the bundle: the export, SHA256SUMS, a model-signing signature, a CycloneDX ML-BOM, licences, wheels."""
    from moeforge.cli.inputs import output_dir
    from moeforge.deploy.bundle import generate_key, public_path

    output_dir(out, "--out")
    _sidecar(export)
    if key is None:
        key = default_key()
        if not key.is_file():
            generate_key(key)
            console.print(f"created the publisher key {key} (give {public_path(key)} to customers to pin)", highlight=False)
    if wheelhouse:
        console.print("building moeforge's wheel and fetching the server's dependencies for the wheelhouse …", highlight=False)
    build(export, out, key=key, tar=tar, wheelhouse=wheelhouse)
    console.print(f"wrote the bundle {out}" + (f" and {out.with_suffix('.tar')}" if tar else "")
                  + f"; check it with `sha256sum -c SHA256SUMS` there, or `moeforge bundle verify {out}`", highlight=False,
                  soft_wrap=True)


def build(export: Path, out: Path, *, key: Path, tar: bool, wheelhouse: bool, licences: dict[str, str] | None = None) -> Path:
    """The bundle of `export` in `out`, signed with `key`; `licences`: more LICENSES/ files (name → text) than the data's."""
    from moeforge.deploy.bundle import write_bundle
    from moeforge.versions import software_versions

    sidecar = _sidecar(export)
    entries = sorted({e["entry"] for experts in sidecar["layers"].values() for e in experts if e.get("entry")})
    bom = dict(name=export.resolve().name, version=str(sidecar.get("version", 1)), base_model=str(sidecar.get("base_model")),
               base_fingerprint=str(sidecar.get("base_fingerprint", "")), datasets=sidecar.get("datasets", {}),
               software=software_versions(), entries=entries)
    return write_bundle(export, out, key=key, licences={**_licences(sidecar), **(licences or {})}, bom=bom,
                        wheelhouse=wheelhouse, tar=tar)


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder.")],
    public_key: Annotated[Path | None, typer.Option("--public-key", help="The publisher's public key you pinned \\[default: the "
                                                                         "bundle's own, which proves integrity only].")] = None,
) -> None:
    """Check every file against SHA256SUMS and the signature against the publisher's key; exit 1 naming what is wrong."""
    from moeforge.deploy.bundle import describe, verify_bundle

    check = verify_bundle(bundle, public_key=public_key)
    if not check.ok:
        console.print(f"[red]bundle {escape(str(bundle))} does not verify[/red]: {escape(describe(check))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"bundle {bundle} verified: {describe(check)}"
                  + ("" if public_key else " (with the key the bundle carries: pin the publisher's key with --public-key)"),
                  highlight=False, soft_wrap=True)


@app.command()
def keygen(out: Annotated[Path, typer.Option("--out", help="Where to write the private key (PEM); the public key goes beside it.")]) -> None:
    """Create a publisher key pair for signing bundles."""
    from moeforge.deploy.bundle import generate_key, public_path

    if out.exists():
        raise ConfigError(f"--out {out} exists already; a key is never overwritten.")
    generate_key(out)
    console.print(f"wrote {out} (private, mode 0600) and {public_path(out)} (public)", highlight=False, soft_wrap=True)


def _sidecar(export: Path) -> dict:
    from moeforge.deploy.export import SIDECAR

    if not (export / SIDECAR).is_file():
        raise ConfigError(f"{export}: not a moeforge export (no {SIDECAR}); run `moeforge export` first.")
    return json.loads((export / SIDECAR).read_text())


def _licences(sidecar: dict) -> dict[str, str]:
    """The texts a bundle carries: the vendored corpora's (the testbed's data) and a note of the entries' licences."""
    from importlib import resources

    texts = {}
    corpora = resources.files("moeforge.data").joinpath("corpora")
    for folder in corpora.iterdir():
        for name in ("LICENSE", "LICENSE.md"):
            item = folder.joinpath(name)
            if item.is_file():
                texts[f"{folder.name}-{name}"] = item.read_text()
    texts["MODEL.txt"] = f"Licence of the exported experts: {sidecar.get('license', 'see README.md in model/')}\n"
    return texts

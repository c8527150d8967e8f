"""`moeforge extract`: the selected experts as a slice artifact, and what each miner mode holds."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.inputs import DeviceOption, load_checkpoint, output_dir, selected_on
from moeforge.errors import ConfigError

console = Console()


def extract(
    model: Annotated[Path, typer.Argument(help="Base model: a checkpoint directory.")],
    experts: Annotated[Path, typer.Argument(help="Expert config JSON written by `moeforge select`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for experts.safetensors and manifest.json.")],
    profile: Annotated[
        Path | None, typer.Option(help="profile.json of the domain: adds the subset mode, sized by --coverage.")
    ] = None,
    coverage: Annotated[float, typer.Option(help="Share of the routing mass the subset mode keeps.")] = 0.9,
    device: DeviceOption = "auto",
) -> None:
    """Write the selected experts as a slice (safetensors + manifest) and the bytes each miner mode holds."""
    from moeforge.extract.package import MODES, held_bytes, reduce_for_mode, slice_bytes
    from moeforge.model.load import load_model
    from moeforge.model.slices import extract_slice, save_slice
    from moeforge.profile.profile_file import load_profile
    from moeforge.profile.selection import coverage_selection, load_expert_config

    if not 0 < coverage <= 1:
        raise ConfigError(f"--coverage {coverage}: expected a share of the routing mass in (0, 1], e.g. 0.9.")
    output_dir(out, "--out")
    selection = load_expert_config(experts)
    base, _ = load_checkpoint(model, device)
    selection.check_against(base)
    fingerprint = selected_on(selection, experts, base, model)
    kept = None
    if profile is not None:
        covered = coverage_selection(load_profile(profile, expect_fingerprint=fingerprint), share=coverage)
        kept = {layer: list(ids) for layer, ids in covered.experts.items()}
    slots = selection.slots()
    manifest = save_slice(extract_slice(base, slots, fingerprint), out)
    full = held_bytes(base) + slice_bytes(base, slots)
    table = Table(title=f"miner memory modes for {selection.count} trainable experts")
    for col in ("mode", "bytes held", "of full"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode in MODES:
        if mode == "subset" and kept is None:
            continue
        miner = load_model(model)
        reduce_for_mode(miner, mode, slots, kept)
        held = held_bytes(miner) + slice_bytes(base, slots)
        table.add_row(mode, f"{held:,}", f"{100 * held / full:.1f}%")
    console.print(table)
    console.print(f"slice of {len(manifest.slots)} experts, {len(manifest.tensors)} tensors · sha256 {manifest.sha256[:16]}… · wrote {out}")

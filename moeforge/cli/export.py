"""`moeforge export`: a right-sized standard checkpoint of a base model with library entries' experts in place."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.inputs import DeviceOption, PromptFieldOpt, ResponseFieldOpt, TextFieldOpt, load_checkpoint, output_dir
from moeforge.cli.library import CatalogOpt, LibraryStoreOpt, open_library_urls
from moeforge.data.corpora import DOMAINS
from moeforge.errors import ConfigError

console = Console()
EXPORT_SALT = "moeforge-export"  # splits the customer's data into profile / calibration / evaluation rows, reproducibly


def export(
    model: Annotated[Path, typer.Option("--model", help="The base model: a checkpoint folder with its tokenizer.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported checkpoint.")],
    entry: Annotated[list[str] | None, typer.Option("--entry", help="A library entry whose experts go in (repeatable; the "
                                                                    "first that has a slot wins).")] = None,
    delta: Annotated[Path | None, typer.Option("--delta", help="Or a `moeforge train` delta folder (RUN/delta).")] = None,
    data: Annotated[str, typer.Option("--data", help=f"The customer's domain data: a file or a vendored corpus ({', '.join(DOMAINS)}).")] = "math",
    prompt_field: PromptFieldOpt = None, response_field: ResponseFieldOpt = None, text_field: TextFieldOpt = None,
    coverage: Annotated[float, typer.Option("--coverage", help="Share of the domain's routing the kept experts must hold per layer.")] = 0.9,
    k: Annotated[int | None, typer.Option("--k", help="Keep exactly K experts per layer instead (at least top-k).")] = None,
    gap_budget: Annotated[float, typer.Option("--gap-budget", min=0.0, help=(
        "Then go below the coverage's K while the served model's loss on calibration rows stays within this share of the "
        "unpruned model's (0: the coverage's K)."))] = 0.01,
    score: Annotated[str, typer.Option("--score", help="Rank experts by token (routing mass) or saliency (REAP).")] = "token",
    profile_tokens: Annotated[int, typer.Option("--profile-tokens", min=1, help="Tokens of the data profiled.")] = 32_768,
    eval_tokens: Annotated[int, typer.Option("--eval-tokens", min=1, help="Tokens per gap measurement.")] = 16_384,
    catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None, device: DeviceOption = "auto",
) -> None:
    """Keep the experts the domain is routed to (uniform K per layer), slice the router, write a standard checkpoint,
    and measure what slicing costs (standard export and exact routing against the unpruned fine-tuned model)."""
    from moeforge.cli.endpoints import read_job_data
    from moeforge.data.splits import split_records
    from moeforge.deploy.export import export_model
    from moeforge.eval.domain import packed_rows
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.model.slices import apply_slice, load_slice
    from moeforge.profile.stats import ProfileConfig, default_seq_len, profile_records

    if score not in ("token", "saliency"):
        raise ConfigError(f"--score {score!r}: expected token or saliency.")
    if not 0 < coverage <= 1:
        raise ConfigError(f"--coverage {coverage:g} is outside (0, 1]: it is the share of the domain's routing to keep.")
    if entry and delta is not None:
        raise ConfigError("give library entries (--entry) or a delta (--delta), not both.")
    output_dir(out, "--out")
    records, name = read_job_data(data, prompt_field, response_field, text_field)
    base, tokenizer = load_checkpoint(model, device)
    fingerprint = model_fingerprint(base)
    sources: dict = {}
    from moeforge.data.fingerprint import fingerprint_records

    card = {"base_model_name": model.resolve().name, "domain": name, "base_fingerprint": fingerprint,
            "datasets": {name: fingerprint_records(records)}, "license": "apache-2.0"}
    if entry:
        from moeforge.library.warm import warm_start

        library = open_library_urls(catalog, library_store)
        ids = [library.catalog.resolve(e) for e in entry]
        manifests = {i: library.manifest(i) for i in ids}
        slots = sorted({s for m in manifests.values() for s in m.expert_slots()})
        used = warm_start(base, library, ids, slots, fingerprint)
        for slot in slots:
            sources[(slot.layer, slot.expert)] = next(i for i in ids if (slot.layer, slot.expert) in manifests[i].slots)
        card["license"] = manifests[ids[0]].license.lower()
        console.print("experts from " + ", ".join(f"{u.entry[:12]}… ({u.slots})" for u in used), highlight=False)
    elif delta is not None:
        piece = load_slice(delta, expect_fingerprint=fingerprint)
        apply_slice(base, piece)
        sources = {(s.layer, s.expert): "delta" for s in piece.slots}
    splits = split_records(records, EXPORT_SALT, validation=0.1, heldout=0.2)
    if not splits.validation or not splits.heldout:
        raise ConfigError(f"--data {data}: {len(records)} records are too few to set calibration and evaluation rows aside.")
    seq_len = default_seq_len(base)
    with console.status("profiling the fine-tuned model's routing on the data"):
        profile = profile_records(base, tokenizer, splits.train, ProfileConfig(tokens=profile_tokens, seq_len=seq_len,
                                                                                saliency=score == "saliency"), base_fingerprint=fingerprint)
    rows = max(1, eval_tokens // seq_len)
    calibration = packed_rows(tokenizer, splits.validation, seq_len=seq_len, max_tokens=rows * seq_len)
    evaluation = packed_rows(tokenizer, splits.heldout, seq_len=seq_len, max_tokens=rows * seq_len)
    with console.status("slicing, calibrating and measuring the gaps"):
        report = export_model(base, tokenizer, profile, out, calibration=calibration, evaluation=evaluation, coverage=coverage,
                              k=k, score=score, sources=sources, seq_len=seq_len, general_tokens=eval_tokens, card=card,
                              gap_budget=gap_budget or None)
    _print(report)


def _print(report) -> None:
    g = report.gaps
    table = Table(title=f"export: {report.k} of {report.num_experts} experts per layer ({report.bytes:,} bytes of weights)")
    for col in ("model", "domain loss", "gap", "WikiText-2 ppl"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("unpruned fine-tuned", f"{g.unpruned_domain_loss:.4f}", "", f"{g.unpruned_general_ppl:.2f}")
    label = "standard export" + (" (approximate)" if report.approximate else " (exact routing)")
    table.add_row(label, f"{g.standard_domain_loss:.4f}", f"{100 * g.gap('standard'):+.2f}%", f"{g.standard_general_ppl:.2f}")
    if g.exact_domain_loss is not None:
        table.add_row("moeforge exact routing", f"{g.exact_domain_loss:.4f}", f"{100 * g.gap('exact'):+.2f}%", f"{g.exact_general_ppl:.2f}")
    console.print(table)
    if report.coverage_k != report.k:
        console.print(f"coverage gave K={report.coverage_k}; the gap budget on calibration rows took it to K={report.k}", highlight=False)
    if report.approximate and report.routing == "denominator":
        console.print(f"gate scale calibrated to {report.scale:.4f}", highlight=False)
    console.print(f"wrote {report.out} (loads with transformers.AutoModelForCausalLM.from_pretrained)", highlight=False, soft_wrap=True)

"""`moeforge library …`: the expert library — deposit, find, warm-start from, combine, browse and verify entries."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from moeforge.cli.inputs import DeviceOption, PromptFieldOpt, ResponseFieldOpt, TextFieldOpt, output_dir, output_file
from moeforge.data.corpora import DOMAINS
from moeforge.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="The expert library: every accepted expert set, kept, indexed and found again.")
console = Console()

CatalogOpt = Annotated[str | None, typer.Option(
    "--catalog", help="The catalog database: sqlite:///path or postgresql://user@host/db \\[default: $MOEFORGE_CATALOG, else "
                      "the SQLite file under $MOEFORGE_HOME/library].")]
LibraryStoreOpt = Annotated[str | None, typer.Option(
    "--library-store", help="Where the entries' blobs live: a folder, file:///… or s3://… \\[default: $MOEFORGE_LIBRARY_STORE, "
                            "else $MOEFORGE_HOME/library/store].")]
EntryArg = Annotated[str, typer.Argument(help="An entry id, or its first 6+ hex characters.")]
ModelOpt = Annotated[Path, typer.Option("--model", help="The base model: a checkpoint folder with its tokenizer.")]
SEQ_LEN = 256


def open_library_urls(catalog: str | None, store: str | None, *, migrate: bool | None = None):
    from moeforge.cli import settings
    from moeforge.library.open import open_library

    return open_library(catalog or settings.catalog_url(), store or settings.library_store_url(), migrate=migrate,
                        credentials=settings.s3_credentials())


@app.command("ls")
def ls(catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None,
       domain: Annotated[str | None, typer.Option("--domain", help="Only entries of this domain.")] = None,
       base: Annotated[str | None, typer.Option("--base", help="Only entries on this base fingerprint.")] = None,
       all_: Annotated[bool, typer.Option("--all", help="Include retired entries.")] = False) -> None:
    """List the library's entries, newest first."""
    lib = open_library_urls(catalog, library_store)
    _entries_table(lib.catalog.entries(base_fingerprint=base, domain=domain, include_retired=all_), f"library {lib.catalog.url}")


@app.command()
def search(text: Annotated[str, typer.Argument(help="Words in the domain, base model name, licence or id.")],
           catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None) -> None:
    """Find live entries by domain, base model, licence or id."""
    lib = open_library_urls(catalog, library_store)
    _entries_table(lib.catalog.entries(text=text), f"entries matching {text!r}")


@app.command()
def show(entry: EntryArg, catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None,
         heatmap: Annotated[Path | None, typer.Option("--heatmap", help="Also draw the routing heatmap PNG here.")] = None) -> None:
    """An entry in full: slots, metrics, lineage, contributors, and its routing profile per layer."""
    lib = open_library_urls(catalog, library_store)
    entry_id = lib.catalog.resolve(entry)
    row, manifest = lib.catalog.get(entry_id), lib.manifest(entry_id)
    m = manifest.metrics
    console.print(f"[bold]entry {entry_id}[/bold]" + (f" [red](retired: {escape(row.retired_reason or '')})[/red]" if row.retired else ""),
                  highlight=False, soft_wrap=True)
    console.print(f"{manifest.domain} · {len(manifest.slots)} experts of {manifest.base_model} ({manifest.model_type}, base "
                  f"{manifest.base_fingerprint[:12]}…) · {manifest.source}" + (f" job {manifest.job_id}" if manifest.job_id else "")
                  + f" · {manifest.license} · deposited {row.created_at:%Y-%m-%d %H:%M} UTC", highlight=False, soft_wrap=True)
    metrics = Table(title="metrics (on data the training never saw)")
    for col in ("metric", "base experts", "this entry"):
        metrics.add_column(col, justify="left" if col == "metric" else "right")
    metrics.add_row(f"held-out {manifest.domain} loss", _num(m.domain_loss_before), _num(m.domain_loss_after))
    metrics.add_row("WikiText-2 test perplexity", _num(m.general_ppl_before), _num(m.general_ppl_after))
    for task, value in sorted(m.tasks.items()):
        metrics.add_row(task, "", f"{value:.4f}")
    console.print(metrics)
    _contributors(manifest)
    parents = ", ".join(f"{p.relation.replace('_', ' ')} from {p.entry[:12]}… ({p.slots} experts)" for p in manifest.parents)
    console.print(f"lineage: {parents or 'trained from the base'}", highlight=False, soft_wrap=True)
    profile = lib.profile(manifest, entry_id)
    if profile is None:
        console.print("no routing profile recorded: this entry is never matched to new data.")
    else:
        _routing_table(profile, manifest)
        if heatmap is not None:
            from moeforge.profile.heatmap import plot_profile

            path = plot_profile(profile, output_file(heatmap, "--heatmap"),
                                title=f"{manifest.domain} routing on {manifest.base_model} (entry {entry_id[:12]})")
            console.print(f"routing heatmap: {path}", highlight=False, soft_wrap=True)


@app.command()
def lineage(entry: EntryArg, catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None) -> None:
    """The tree of an entry's parents (what it was warm-started or merged from), down to the base; and its children."""
    lib = open_library_urls(catalog, library_store)
    entry_id = lib.catalog.resolve(entry)

    def label(i: str, how: str = "") -> str:
        row = lib.catalog.get(i)
        return f"{how}{i[:12]}… {row.domain} ({row.n_slots} experts, {row.source})" + (" [retired]" if row.retired else "")

    tree = Tree(label(entry_id))

    def grow(node: Tree, i: str, seen: set[str]) -> None:
        parents = lib.catalog.parents(i)
        if not parents:
            node.add(f"base {lib.catalog.get(i).base_model} ({lib.catalog.get(i).base_fingerprint[:12]}…)")
        for parent, relation, slots in parents:
            if parent in seen:
                node.add(f"{parent[:12]}… (cycle)")
                continue
            grow(node.add(label(parent, f"{relation.replace('_', ' ')} ({slots} experts) from ")), parent, seen | {parent})

    grow(tree, entry_id, {entry_id})
    console.print(tree)
    children = lib.catalog.children(entry_id)
    if children:
        console.print("built on it: " + ", ".join(label(c) for c in children), highlight=False, soft_wrap=True)


@app.command()
def card(entry: EntryArg, catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None,
         out: Annotated[Path | None, typer.Option("--out", help="Write the card (README.md) here instead of printing it.")] = None) -> None:
    """The entry's model card (Hugging Face README.md conventions)."""
    from moeforge.atomic import write_text
    from moeforge.library.card import model_card

    lib = open_library_urls(catalog, library_store)
    entry_id = lib.catalog.resolve(entry)
    row = lib.catalog.get(entry_id)
    text = model_card(entry_id, lib.manifest(entry_id), created_at=row.created_at, retired=row.retired_reason if row.retired else None)
    if out is None:
        typer.echo(text, nl=False)
        return
    write_text(output_file(out, "--out"), text)
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)


@app.command()
def retire(entry: EntryArg, reason: Annotated[str, typer.Option("--reason", help="Why it is retired (shown on its card).")],
           catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None) -> None:
    """Hide an entry from search and matching; it stays resolvable (entries are never deleted)."""
    if not reason.strip():
        raise ConfigError("--reason is empty: say why the entry is retired.")
    lib = open_library_urls(catalog, library_store)
    entry_id = lib.catalog.resolve(entry)
    lib.catalog.retire(entry_id, reason.strip())
    console.print(f"retired {entry_id[:12]}…: {escape(reason.strip())}", highlight=False, soft_wrap=True)


@app.command()
def verify(entries: Annotated[list[str] | None, typer.Argument(help="Entries to check \\[default: all, retired ones too].")] = None,
           catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None) -> None:
    """Re-hash every entry's blobs (manifest, tensors, profile) and check them against the catalog; exit 1 on any problem."""
    lib = open_library_urls(catalog, library_store)
    ids = [lib.catalog.resolve(e) for e in entries] if entries else None
    checked, problems = lib.verify(ids)
    for p in problems:
        console.print(f"[red]BAD[/red] {p.entry[:12]}…: {escape(p.what)}", highlight=False, soft_wrap=True)
    if problems:
        console.print(f"{len(problems)} of {checked} entries have problems; they are never served.", highlight=False)
        raise typer.Exit(1)
    console.print(f"all {checked} entries verified: every blob present and re-hashing to its digest.", highlight=False)


@app.command()
def migrate(catalog: CatalogOpt = None) -> None:
    """Bring the catalog's schema to this moeforge's newest revision (Alembic)."""
    from moeforge.cli import settings
    from moeforge.library.catalog import current_revision, head_revision, open_catalog, shown_url

    url = catalog or settings.catalog_url()
    cat = open_catalog(url, migrate=True)
    console.print(f"catalog {shown_url(url)} is at schema revision {current_revision(cat.engine)} (newest: {head_revision()}).",
                  highlight=False, soft_wrap=True)


@app.command()
def add(
    folder: Annotated[Path, typer.Argument(help="A `moeforge train --out` folder (its delta/ is applied to --model).")],
    model: ModelOpt,
    domain: Annotated[str, typer.Option("--domain", help="What the data was (a name for people and matching).")],
    report: Annotated[Path | None, typer.Option("--report", help="`moeforge eval MODEL --delta FOLDER/delta` report: the "
                                                                 "entry's metrics.")] = None,
    base_report: Annotated[Path | None, typer.Option("--base-report", help="The same evaluation of the base model.")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="The `moeforge profile` JSON the experts were selected "
                                                                   "from (the routing the library matches on).")] = None,
    owner: Annotated[str, typer.Option("--owner", help="Who trained it: the sole contributor.")] = "owner",
    license_: Annotated[str, typer.Option("--license", help="SPDX licence id of the entry.")] = "Apache-2.0",
    catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None, device: DeviceOption = "auto",
) -> None:
    """Deposit a local `train` output (base + delta) with its evaluation report."""
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.cli.train import DELTA_DIR
    from moeforge.eval.report import read_report
    from moeforge.library.deposit import deposit
    from moeforge.library.entry import Contributor, Metrics, Parent, check_license
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.model.slices import apply_slice, extract_slice, load_slice
    from moeforge.profile.profile_file import load_profile
    from moeforge.versions import software_versions

    try:
        check_license(license_)
    except ValueError as exc:
        raise ConfigError(f"--license: {exc}.") from None
    if not (folder / DELTA_DIR).is_dir():
        raise ConfigError(f"{folder}: no {DELTA_DIR}/ folder; pass the --out folder of `moeforge train`.")
    base, _ = load_checkpoint(model, device)
    fingerprint = model_fingerprint(base)
    delta = load_slice(folder / DELTA_DIR, expect_fingerprint=fingerprint)
    apply_slice(base, delta)  # check_fits first: a delta for other shapes is refused before anything changes
    experts = extract_slice(base, delta.slots, fingerprint)
    after = read_report(report) if report is not None else None
    before = read_report(base_report) if base_report is not None else None
    metrics = Metrics(
        domain_loss_before=before.domain_loss if before else None, domain_loss_after=after.domain_loss if after else None,
        domain_tokens=after.domain_tokens if after else None, general_ppl_before=before.general_ppl if before else None,
        general_ppl_after=after.general_ppl if after else None,
        tasks={"gsm8k_accuracy": after.gsm8k.accuracy} if after is not None and after.gsm8k is not None else {},
    )
    profile_json = None
    if profile is not None:
        profile_json = load_profile(profile, expect_fingerprint=fingerprint).model_dump_json().encode("utf-8")
    lineage = _warm_lineage(folder)
    entry, new = deposit(open_library_urls(catalog, library_store), base, fingerprint, experts, profile_json=profile_json,
                         base_model=model.resolve().name, domain=domain, license=license_, source="train", metrics=metrics,
                         parents=tuple(Parent(entry=e, relation="warm_start", slots=n) for e, n in lineage),
                         contributors=(Contributor(id=owner, role="owner", share=1.0),), versions=software_versions(),
                         data_fingerprint=after.data_fingerprint if after else None)
    console.print(f"{'deposited' if new else 'already in the library:'} entry {entry} ({domain}, {len(experts.slots)} experts)",
                  highlight=False, soft_wrap=True)
    if profile_json is None:
        console.print("[yellow]no --profile given: the entry is kept but never matched to new data[/yellow]")


@app.command()
def match(
    data: Annotated[str, typer.Argument(help=f"The new job's data: a file, or a vendored corpus ({', '.join(DOMAINS)}).")],
    model: ModelOpt,
    prompt_field: PromptFieldOpt = None, response_field: ResponseFieldOpt = None, text_field: TextFieldOpt = None,
    tokens: Annotated[int, typer.Option("--tokens", min=1, help="Tokens of DATA profiled on the base.")] = 16_384,
    rerank: Annotated[int, typer.Option("--rerank", min=0, help="Top candidates re-ranked by loss on a sample of DATA.")] = 3,
    sample_rows: Annotated[int, typer.Option("--sample-rows", min=1, help="Rows of DATA the re-rank scores.")] = 16,
    out: Annotated[Path | None, typer.Option("--out", help="Write the ranking as JSON here.")] = None,
    catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None, device: DeviceOption = "auto",
) -> None:
    """Rank the library's entries on this base for new data: routing similarity over the background, then loss."""
    from moeforge.cli.endpoints import read_job_data
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.library.match import chosen, match_records
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.profile.stats import default_seq_len

    records, name = read_job_data(data, prompt_field, response_field, text_field)
    if out is not None:
        output_file(out, "--out")
    lib = open_library_urls(catalog, library_store)
    base, tokenizer = load_checkpoint(model, device)
    fingerprint = model_fingerprint(base)
    ranking = match_records(lib, base, tokenizer, records, fingerprint, seq_len=default_seq_len(base), tokens=tokens,
                            sample_rows=sample_rows, top=rerank)
    table = Table(title=f"library entries for {name} on {model.name}")
    for col in ("rank", "entry", "domain", "similarity", "raw cosine", "sample loss", "why here"):
        table.add_column(col, no_wrap=col == "entry", min_width=12 if col == "entry" else None, overflow="fold")
    for c in ranking:
        loss = "-" if c.loss_gain is None else f"{c.base_loss:.4f} → {c.entry_loss:.4f}"
        why = "by similarity (not re-ranked)" if c.loss_gain is None else f"loss gain {c.loss_gain:+.4f}"
        table.add_row(str(c.rank or "-"), c.entry[:12], c.domain, f"{c.similarity:.3f}", f"{c.raw_cosine:.3f}", loss, why)
    console.print(table if ranking else f"no entries on this base ({fingerprint[:12]}…) to match")
    picked = chosen(ranking)
    console.print(f"--warm-start auto would start from {picked[0].entry[:12]}… ({picked[0].domain})" if picked
                  else "--warm-start auto would start from the base (no entry above the threshold lowers the loss)",
                  highlight=False, soft_wrap=True)
    if out is not None:
        from moeforge.atomic import write_text

        write_text(out, json.dumps({"data": name, "base_fingerprint": fingerprint, "ranking": [c.to_json() for c in ranking],
                                    "warm_start": picked[0].entry if picked else None}, indent=2) + "\n")
        console.print(f"wrote {out}", highlight=False, soft_wrap=True)


@app.command()
def combine(
    entries: Annotated[list[str], typer.Argument(help="Two or more entries on the same base.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the combined expert set (a slice: experts.safetensors + manifest.json).")],
    deposit_: Annotated[bool, typer.Option("--deposit/--no-deposit", help="Also put the result in the library, with its parents.")] = True,
    check_tokens: Annotated[int, typer.Option("--check-tokens", min=256, help="Held-out tokens per domain the check scores.")] = 16_384,
    license_: Annotated[str, typer.Option("--license", help="SPDX licence id of the combined entry.")] = "Apache-2.0",
    catalog: CatalogOpt = None, library_store: LibraryStoreOpt = None, device: DeviceOption = "auto",
) -> None:
    """Merge entries into one expert set (mergekit's RAM rule) and check it by loss on each domain's held-out sample."""
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.eval.domain import domain_loss
    from moeforge.library.combine import combine_entries
    from moeforge.library.deposit import deposit
    from moeforge.library.entry import Contributor, Parent
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.model.slices import apply_slice, extract_slice, save_slice
    from moeforge.versions import software_versions

    output_dir(out, "--out")
    lib = open_library_urls(catalog, library_store)
    base, tokenizer = load_checkpoint(model, device)
    fingerprint = model_fingerprint(base)
    combined = combine_entries(lib, base, fingerprint, entries)
    ids = list(combined.sources)
    manifests = {i: lib.manifest(i) for i in ids}
    table = Table(title=f"combined {len(combined.experts.slots)} experts ({combined.merged_slots} merged by RAM): held-out loss")
    for col in ("domain", "base", "its own entry", "combined"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    original = extract_slice(base, combined.experts.slots, fingerprint)
    for i in ids:
        domain = manifests[i].domain
        if domain not in DOMAINS:
            table.add_row(domain, "no vendored held-out sample", "", "")
            continue
        records = load_corpus(domain, "test")

        def loss() -> float:
            return domain_loss(base, tokenizer, records, seq_len=SEQ_LEN, max_tokens=check_tokens).loss

        scores = [loss()]
        apply_slice(base, lib.experts(manifests[i], i))
        scores.append(loss())
        apply_slice(base, original)
        apply_slice(base, combined.experts)
        scores.append(loss())
        apply_slice(base, original)
        table.add_row(domain, *(f"{v:.4f}" for v in scores))
    console.print(table)
    save_slice(combined.experts, out)
    console.print(f"wrote {out}", highlight=False, soft_wrap=True)
    if deposit_:
        shares = _combined_contributors([manifests[i] for i in ids], [combined.sources[i] for i in ids])
        entry, _ = deposit(lib, base, fingerprint, combined.experts, profile_json=None, base_model=model.resolve().name,
                           domain="+".join(manifests[i].domain for i in ids), license=license_, source="combine",
                           parents=tuple(Parent(entry=i, relation="merge", slots=combined.sources[i]) for i in ids),
                           contributors=shares, versions=software_versions())
        console.print(f"deposited the combination as entry {entry}", highlight=False, soft_wrap=True)


def _combined_contributors(manifests, weights: list[int]):
    """Each parent's contributors, weighted by the slots the parent gave, summing to 1."""
    from moeforge.library.entry import Contributor

    total, shares, roles = sum(weights), {}, {}
    for manifest, w in zip(manifests, weights):
        for c in manifest.contributors:
            shares[c.id] = shares.get(c.id, 0.0) + c.share * w / total
            roles[c.id] = c.role
    s = sum(shares.values())
    return tuple(Contributor(id=k, role=roles[k], share=v / s) for k, v in sorted(shares.items())) if s > 0 else ()


def _warm_lineage(folder: Path) -> list[tuple[str, int]]:
    """The warm start a `train` output records (train.py's WARM_FILE): [(entry, slots)]."""
    from moeforge.cli.train import WARM_FILE

    path = folder / WARM_FILE
    if not path.is_file():
        return []
    try:
        return [(w["entry"], int(w["slots"])) for w in json.loads(path.read_text())["warm_start"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a warm-start record ({exc}).") from None


def _entries_table(rows, title: str) -> None:
    table = Table(title=title)
    table.add_column("entry", no_wrap=True, min_width=12)  # ids stay whole on a narrow terminal: they are what users copy
    for col in ("domain", "base", "experts", "source", "held-out loss", "general ppl", "licence", "deposited"):
        table.add_column(col, overflow="fold")
    for r in rows:
        loss = f"{_num(r.domain_loss_before)} → {_num(r.domain_loss_after)}" if r.domain_loss_after is not None else "-"
        ppl = f"{_num(r.general_ppl_before, 2)} → {_num(r.general_ppl_after, 2)}" if r.general_ppl_after is not None else "-"
        table.add_row(r.id[:12] + ("\n(retired)" if r.retired else ""), r.domain, f"{r.base_model} {r.base_fingerprint[:8]}",
                      str(r.n_slots), r.source, loss, ppl, r.license, f"{r.created_at:%Y-%m-%d %H:%M}")
    console.print(table if rows else f"{title}: no entries")


def _contributors(manifest) -> None:
    if not manifest.contributors:
        console.print("contributors: none recorded")
        return
    table = Table(title="contributors")
    for col in ("contributor", "role", "share"):
        table.add_column(col)
    for c in manifest.contributors:
        table.add_row(c.id, c.role, f"{c.share:.4f}")
    console.print(table)


def _routing_table(profile, manifest) -> None:
    """The routing heatmap as text: per MoE layer, the share of each expert (ESFT-Token), trained slots marked."""
    trained = set(manifest.slots)
    shades = " ░▒▓█"
    table = Table(title=f"routing of {manifest.domain} (ESFT-Token share per expert; * trained)")
    table.add_column("layer")
    table.add_column("experts 0…" + str(profile.num_experts - 1))
    table.add_column("top experts")
    for layer in profile.layers:
        shares = profile.token[layer]
        top = max(shares) or 1.0
        cells = "".join(shades[min(len(shades) - 1, int(len(shades) * v / top))] for v in shares)
        best = sorted(range(len(shares)), key=lambda e: -shares[e])[:4]
        table.add_row(str(layer), cells, ", ".join(f"{e}{'*' if (layer, e) in trained else ''} {100 * shares[e]:.0f}%" for e in best))
    console.print(table)


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

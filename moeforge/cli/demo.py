"""`moeforge demo`: the pipeline as far as it exists, on the embedded defaults.

1. build (or reuse) the testbed base model; 2. a maths job on GSM8K through a local network:
the owner profiles the routing and selects experts by ESFT-Token, miners (one per memory mode)
train them in rounds, validators score every update on held-out data and merge the best; then
3. GSM8K test loss and WikiText-2 perplexity of the base model and of the job's final experts; 4. the
expert library entry the job was deposited as; 5. that entry exported right-sized, bundled and
verified, served locally behind an OpenAI-compatible API for one streamed chat answer, and the
usage it metered per expert; 6. the marketplace: the entry listed at a price, licensed to a
customer, the served usage handed in, verified and priced, and the revenue split through the
entry's lineage into a ledger that reconciles exactly. Run again, the job is matched to the first run's entry and its
experts start from it (a warm start), which the output says.
"""

import time
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from moeforge.cli.inputs import DeviceOption
from moeforge.cli.testbed import build_or_reuse, print_report
from moeforge.errors import RoleFailed

console = Console()

_SMALL_JOB = dict(  # the small testbed trains in a blink: fewer and stronger steps, smaller samples
    inner_steps=10,
    train={"lr": 1e-2, "batch_size": 8, "warmup_steps": 1, "weight_decay": 0.0, "checkpoint_every": 0},
    profile_tokens=4096, score_rows=16, merge_rows=16, report_rows=32,
    # too small a model for a miner's shard to leave a reliable mark on its delta (tests/network/conftest.py): the
    # evidence is recorded, not required
    evidence_significance=1.0,
)
JOB_DEFAULTS = {"default": {}, "small": _SMALL_JOB}  # per testbed preset; JobRequest's own defaults fit "default"


def demo(
    preset_name: str = typer.Option("default", "--preset", help="Testbed preset to build or reuse."),
    out: Path | None = typer.Option(None, "--out", help="Testbed directory (default: the cache under $MOEFORGE_HOME)."),
    miners: int = typer.Option(3, "--miners", min=1, help="Miner processes (memory modes full, quantized, subset in turn)."),
    validators: int = typer.Option(2, "--validators", min=1, help="Validator processes (stake 100, 50, …)."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Rounds of the maths job."),
    eval_tokens: int = typer.Option(32_768, "--eval-tokens", min=2, help="Tokens scored per GSM8K test loss and WikiText-2 perplexity."),
    run: Path | None = typer.Option(None, "--run", help="Network run folder (default: $MOEFORGE_HOME/network/<time>)."),
    device: DeviceOption = "auto",
) -> None:
    """Build or reuse the testbed, run a GSM8K maths job through a local network, and report before/after."""
    from moeforge.cli.job_view import print_record
    from moeforge.cli.network import start_and_follow

    report, path = build_or_reuse(preset_name, out, force=False)
    print_report(report, path)
    console.print("[bold]maths job (GSM8K) through a local network[/bold]: the owner selects experts by ESFT-Token (p=0.2); "
                  "miners train them, validators score every update on held-out data and merge the best")
    record, net = start_and_follow(
        miners=miners, validators=validators, modes=None, model=path, preset_name=preset_name, data="math",
        data_options={"prompt_field": None, "response_field": None, "text_field": None}, run=run, store=None, chain=None,
        config=None, metrics_port=None, flags={"rounds": rounds, "job_id": "demo-maths"},
        defaults=JOB_DEFAULTS.get(preset_name, {}), device=device,
    )
    _warm_start_line(net.job())
    print_record(record, console, net.names())
    _before_after(path, report.config.seq_len, record, net, eval_tokens, device)
    entry = _library_entry(net)
    job = net.job()
    if entry is None and job.warm_start:  # nothing new was learnt: deploy what the job started from
        entry = job.warm_start[0].entry
        console.print(f"deploying the entry the job started from, {entry[:12]}…", highlight=False)
    if entry is not None:
        ledger, ledger_key = _deploy(path, entry, net.plan.run_dir, eval_tokens, device)
        _market(path, entry, ledger, ledger_key)
    console.print(f"run folder: {net.plan.run_dir}", highlight=False, soft_wrap=True)


def _warm_start_line(job) -> None:
    if job.warm_start:
        used = ", ".join(f"{w.slots} from library entry {w.entry[:12]}…" for w in job.warm_start)
        rest = len(job.slots) - sum(w.slots for w in job.warm_start)
        console.print(f"[bold]warm start[/bold]: the library matched this job's data to an earlier job's experts; of the "
                      f"{len(job.slots)} selected experts, {used}" + (f" (the other {rest} start from the base)" if rest else ""),
                      highlight=False, soft_wrap=True)
    else:
        console.print("cold start: no library entry matched this job's data, so its experts start from the base "
                      "(run `make demo` again: the next job starts from this one's)", highlight=False, soft_wrap=True)


def _library_entry(net) -> None:
    """The library entry the job was deposited as: card summary, lineage, contributors."""
    from moeforge.cli.library import open_library_urls
    from moeforge.network.owner import ENTRY_FILE

    path = net.owner.run_dir / ENTRY_FILE
    if not path.is_file():
        console.print("the job adopted no update, so nothing new went into the expert library")
        return None
    entry = path.read_text().strip()
    library = open_library_urls(None, None)
    manifest = library.manifest(entry)
    names = net.names()
    m = manifest.metrics
    table = Table(title=f"expert library entry {entry[:12]}… (moeforge library show {entry[:12]})")
    table.add_column("")
    table.add_column("")
    table.add_row("experts", f"{len(manifest.slots)} of {manifest.base_model}, domain {manifest.domain}, licence {manifest.license}")
    table.add_row("held-out loss", f"{m.domain_loss_before:.4f} → {m.domain_loss_after:.4f}")
    if m.general_ppl_before is not None and m.general_ppl_after is not None:
        table.add_row("WikiText-2 perplexity", f"{m.general_ppl_before:.2f} → {m.general_ppl_after:.2f}")
    table.add_row("lineage", ", ".join(f"warm start from {p.entry[:12]}… ({p.slots} experts)" for p in manifest.parents)
                  or "trained from the base")
    table.add_row("contributors", ", ".join(f"{names.get(c.id, c.id[:12] + '…')} {c.share:.1%}" for c in manifest.contributors))
    count = len(library.catalog.entries())
    table.add_row("library", f"{count} entr{'y' if count == 1 else 'ies'} in {library.catalog.url}")
    console.print(table)
    return entry


def _deploy(model_dir: Path, entry: str, run_dir: Path, eval_tokens: int, device: str) -> tuple[Path, Path]:
    """Export the entry right-sized, bundle and verify it, serve it locally, stream one chat answer, show its usage."""
    from moeforge.cli.bundle import create, default_key, verify
    from moeforge.cli.export import export
    from moeforge.cli.serve import build_app
    from moeforge.deploy.bundle import public_path
    from moeforge.deploy.usage import verify_ledger

    console.print("[bold]deployment[/bold]: the entry's experts exported right-sized, bundled for an air-gapped site, "
                  "and served locally behind an OpenAI-compatible API")
    export(model=model_dir, out=run_dir / "export", entry=[entry], delta=None, data="math", prompt_field=None, response_field=None,
           text_field=None, coverage=0.9, k=None, gap_budget=0.01, score="token", profile_tokens=16_384, eval_tokens=min(eval_tokens, 16_384),
           catalog=None, library_store=None, device=device)
    create(export=run_dir / "export", out=run_dir / "bundle", key=None, tar=False, wheelhouse=False)
    verify(bundle=run_dir / "bundle", public_key=public_path(default_key()))
    # the ledger in its default folder ($MOEFORGE_HOME/usage/NAME): one chain per server and day, across runs
    app, info = build_app(run_dir / "bundle", None, "exact", None, None, 1024, 48, 8, 16, device)
    try:
        with _on_loopback(app, "the local server") as url:
            port = int(url.rsplit(":", 1)[1])
            question = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell altogether?"
            console.print(f"POST http://127.0.0.1:{port}/v1/chat/completions (streamed), user: {question}", highlight=False, soft_wrap=True)
            console.print("assistant: ", end="", highlight=False)
            for piece in _stream_chat(port, info["keys"][0], info["name"], question):
                console.print(piece, end="", highlight=False, markup=False)
            console.print()
    finally:
        app.state.engine.close()
    totals, problems = verify_ledger(info["ledger"], public_path(info["ledger_key"]))
    hits = ", ".join(f"{e[:12] + '…' if e != 'base' else 'base'} {n:,}" for e, n in totals["entries"].most_common())
    n = totals["requests"]
    console.print(f"usage metered: {n} request{'' if n == 1 else 's'} in this server's ledger, {totals['prompt_tokens']} tokens in, {totals['completion_tokens']} "
                  f"out; routed-expert hits per library entry: {hits}; ledger {'verified' if not problems else 'BROKEN'} "
                  f"({info['ledger']}); server stopped", highlight=False, soft_wrap=True)
    return Path(info["ledger"]), info["ledger_key"]


def _market(model_dir: Path, entry: str, ledger: Path, ledger_key: Path) -> None:
    """The Centre's marketplace on this machine's catalog: the subnet owner lists the entry, a customer takes a grant and
    hands in the usage its server metered, and the revenue's split and reconciliation are shown."""
    from moeforge.cli import market
    from moeforge.cli.jobs import Client, ServiceError
    from moeforge.cli.service import resolve_settings
    from moeforge.deploy.bundle import public_path
    from moeforge.service.app import create_app
    from moeforge.errors import ConfigError
    from moeforge.service.auth import create_key, create_tenant, revoke_key, tenant_id_of

    console.print("[bold]marketplace[/bold]: the entry listed at a price, licensed to a customer, its served usage handed in "
                  "and priced, and the revenue split through its lineage")
    settings = resolve_settings(None, None, model=model_dir)
    app = create_app(settings)
    keys = {}  # tenant name → (key id, key): keys for this step only, revoked at its end
    for name in (settings.subnet_owner, "demo-customer"):
        try:
            tenant = tenant_id_of(app.state.db, name)
        except ConfigError:
            tenant, admin = create_tenant(app.state.db, name)
            console.print(f"created the Centre's tenant {name}; its admin API key (shown once, keep it): {admin}", highlight=False)
        keys[name] = create_key(app.state.db, tenant, "demo-market")
    try:
        with _on_loopback(app, "the Centre's API") as url:
            owner, customer = keys[settings.subnet_owner][1], keys["demo-customer"][1]
            mine = Client(url, owner).call("GET", "/v1/market/listings", params={"mine": True, "limit": 100})["data"]
            listing = next((x for x in mine if x["model"] == entry), None)
            if listing is None:
                market.list_entry(model=entry, title="GSM8K maths experts", description="ESFT experts trained by the demo's network",
                                  tag=["math", "gsm8k"], licence=None, licence_file=None, licence_name=None, commercial=False,
                                  redistribution=False, attribution=True, field_of_use=None, price="per_mtok:1000",
                                  visibility="public", url=url, key=owner, as_json=False)
                listing = next(x for x in Client(url, owner).call("GET", "/v1/market/listings", params={"mine": True, "limit": 100})["data"]
                               if x["model"] == entry)
            else:
                console.print(f"listed already as {listing['id']}: {listing['price']['text']}", highlight=False)
            market.request_access(listing=listing["id"], note="", url=url, key=customer, as_json=False)
            day = sorted(ledger.glob("usage-*.jsonl"))[-1]
            try:
                market.usage(ledger=day, public_key=public_path(ledger_key), server_name="demo-server", url=url, key=customer,
                             as_json=False)
            except ServiceError as exc:  # e.g. a ledger another demo on this machine handed in already
                console.print(f"[yellow]usage not priced[/yellow]: {exc}", highlight=False, soft_wrap=True)
            _print_statement(Client(url, owner))
    finally:
        for key_id, _ in keys.values():
            revoke_key(app.state.db, key_id)


def _print_statement(client) -> None:
    """This month's payout statement (every payee: the client is the subnet owner's) and its reconciliation."""
    from datetime import UTC, datetime

    from moeforge.service.market.terms import units

    period = datetime.now(UTC).strftime("%Y-%m")
    statement = client.call("GET", "/v1/market/statements", params={"period": period})
    table = Table("payee", "earned (units)", title=f"payout statement {period}", box=None)
    for st in statement["data"]:
        table.add_row(st["payee"], units(st["total_micros"]))
    console.print(table)
    r = statement["reconciliation"]
    console.print(f"reconciliation {period}: revenue {units(r['revenue'])} = payouts {units(r['payouts'])} + fee "
                  f"{units(r['fee'])}: {'exact' if r['exact'] else 'NOT EXACT'} over {r['transactions']} transactions",
                  highlight=False)


@contextmanager
def _on_loopback(app, what: str):
    """Serve `app` with uvicorn on a free loopback port in a thread; → its URL, until the block ends."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="moeforge-demo-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RoleFailed(f"{what} did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _stream_chat(port: int, key: str, model: str, question: str):
    """The text pieces of one streamed chat answer, read as server-sent events with the standard library."""
    import json
    import urllib.request

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 48,
                       "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            if delta.get("content"):
                yield delta["content"]


def _before_after(model_dir: Path, seq_len: int, record, net, eval_tokens: int, device: str) -> None:
    """GSM8K test loss and WikiText-2 perplexity with the base experts, then with the job's final experts."""
    from moeforge.cli import settings
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.eval.domain import domain_loss
    from moeforge.eval.general import general_perplexity
    from moeforge.model.slices import apply_slice, extract_slice
    from moeforge.network.state import StateRef, fetch_state
    from moeforge.store.open import open_store

    model, tokenizer = load_checkpoint(model_dir, device)
    test_records = load_corpus("math", "test")

    def scores() -> tuple[float, float]:
        maths = domain_loss(model, tokenizer, test_records, seq_len=seq_len, max_tokens=eval_tokens).loss
        return maths, general_perplexity(model, tokenizer, seq_len=seq_len, max_tokens=eval_tokens).perplexity

    before = scores()
    job = net.job()
    store = open_store(net.store_url, credentials=settings.s3_credentials())
    start = None
    if job.warm_start:  # the warm start's own scores: where the job began
        initial = StateRef(sha256=job.initial_state_sha256, digest=job.initial_state, round=0)
        reference = extract_slice(model, job.slots, job.base_fingerprint)
        apply_slice(model, fetch_state(store, initial, job=job, reference=reference))
        start = scores()
        apply_slice(model, reference)
    final = StateRef(sha256=record.final_state_sha256, digest=record.final_state_digest, round=len(record.rounds) - 1)
    apply_slice(model, fetch_state(store, final, job=job, reference=extract_slice(model, job.slots, job.base_fingerprint)))
    after = scores()
    table = Table(title=f"the job's {len(job.slots)} experts on data no role trained or scored on")
    for col in ("", "GSM8K test loss", "WikiText-2 perplexity"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("base", f"{before[0]:.3f}", f"{before[1]:.2f}")
    if start is not None:
        table.add_row("warm start (library experts)", f"{start[0]:.3f}", f"{start[1]:.2f} ({100 * (start[1] / before[1] - 1):+.1f}%)")
    n = len(record.rounds)
    table.add_row(f"after {n} network round{'s' if n != 1 else ''}", f"{after[0]:.3f}",
                  f"{after[1]:.2f} ({100 * (after[1] / before[1] - 1):+.1f}%)")
    console.print(table)

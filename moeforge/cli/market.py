"""`moeforge market …`: the Centre's marketplace over its HTTP API: find, list and license expert sets; usage; earnings."""

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moeforge.cli.jobs import Client, JsonOpt, KeyOpt, UrlOpt
from moeforge.errors import ConfigError

app = typer.Typer(no_args_is_help=True, help="The marketplace of a Customization Centre: listings, grants, usage, earnings.")
console = Console()
MICROS = 1_000_000  # as moeforge.service.market.terms (the CLI does not import the service)


def units(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, part = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{part:06d}"


def to_micros(text: str, option: str) -> int:
    """'2.5' units → 2_500_000 micros, exactly; ConfigError naming `option` for anything else."""
    try:
        micros = Decimal(text) * MICROS
    except InvalidOperation:
        micros = None
    if micros is None or not micros.is_finite() or micros != micros.to_integral_value() or micros < 0:
        raise ConfigError(f"{option} {text!r}: expected an amount of units, at least 0, with at most 6 decimals (e.g. 2.5).")
    return int(micros)


def parse_price(text: str) -> dict:
    """`free`, `per_mtok:2.5` (units per million routed tokens) or `per_export:100` → the API's price, in exact micros."""
    kind, _, amount = text.partition(":")
    if kind == "free" and not amount:
        return {"kind": "free", "micros": 0}
    if kind not in ("per_mtok", "per_export") or to_micros(amount, "--price") == 0:
        raise ConfigError(f"--price {text!r}: expected free, per_mtok:UNITS or per_export:UNITS (a positive amount, e.g. "
                          "per_mtok:2.5).")
    return {"kind": kind, "micros": to_micros(amount, "--price")}


def _table(listings: list[dict]) -> Table:
    table = Table("listing", "title", "domain", "licence", "price", "gain", "access", "why", box=None)
    for x in listings:
        gain = x["metrics"]["domain_gain"]
        table.add_row(x["id"], escape(x["title"]), x["domain"], x["licence_id"], x["price"]["text"],
                      "–" if gain is None else f"{gain:+.4f}", x["access"], escape((x.get("relevance") or {}).get("why", "")))
    return table


def _print(data, as_json: bool, render) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render(data)


@app.command("ls")
def ls(mine: Annotated[bool, typer.Option("--mine", help="Only your own listings.")] = False,
       limit: Annotated[int, typer.Option("--limit", min=1, max=100)] = 50, url: UrlOpt = None, key: KeyOpt = None,
       as_json: JsonOpt = False) -> None:
    """List the listings you may see (best held-out gain first)."""
    data = Client(url, key).call("GET", "/v1/market/listings", params={"mine": mine, "limit": limit})
    _print(data, as_json, lambda d: console.print(_table(d["data"]) if d["data"] else "no listings"))


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(help="Words to find in titles, tags, domains and descriptions.")] = None,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain (e.g. math).")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model", help="Only experts for this base model.")] = None,
    licence: Annotated[str | None, typer.Option("--licence", help="An SPDX id or LicenseRef- name.")] = None,
    price: Annotated[str | None, typer.Option("--price", help="free, per_mtok or per_export.")] = None,
    max_price: Annotated[str | None, typer.Option("--max-price", help="At most this many units.")] = None,
    min_gain: Annotated[float | None, typer.Option("--min-gain", help="At least this held-out loss gain (nats/token).")] = None,
    sort: Annotated[str, typer.Option("--sort", help="relevance, newest, gain or price.")] = "relevance",
    sample: Annotated[Path | None, typer.Option("--sample", help="Your data file: rank by routing match to it (uploaded "
                                                                 "and validated first).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100)] = 20,
    url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """Search the listings; with --sample, find the experts whose routing matches your data."""
    client = Client(url, key)
    params = {"q": query, "domain": domain, "base_model": base_model, "licence": licence, "price": price, "min_gain": min_gain,
              "sort": sort, "limit": limit}
    if max_price is not None:
        params["max_price_micros"] = to_micros(max_price, "--max-price")
    if sample is not None:
        params["sample"] = client.validated(sample, option="--sample")["id"]
    data = client.call("GET", "/v1/market/listings", params={k: v for k, v in params.items() if v is not None})
    _print(data, as_json, lambda d: console.print(_table(d["data"]) if d["data"] else "no listing matches"))


@app.command()
def show(listing: Annotated[str, typer.Argument(help="A listing id (lst-…).")], url: UrlOpt = None, key: KeyOpt = None,
         as_json: JsonOpt = False) -> None:
    """A listing in full: terms, metrics and how they were measured, lineage, contributors."""
    _print(Client(url, key).call("GET", f"/v1/market/listings/{listing}"), as_json, _render_detail)


def _render_detail(x: dict) -> None:
    m = x["metrics"]
    lines = [f"[bold]{escape(x['title'])}[/bold] ({x['id']}) · {x['domain']} experts on {x['base_model']} · {x['visibility']}",
             f"model {x['model']} · {x['experts']} experts · {x['price']['text']} · licence {x['licence_id']} · access {x['access']}",
             escape(x["description"]) if x["description"] else "",
             f"held-out loss {m['domain_loss_before']} → {m['domain_loss_after']} over {m['domain_tokens']} tokens "
             f"({escape(m['measured']['domain_loss'])})",
             f"WikiText-2 perplexity {m['general_ppl_before']} → {m['general_ppl_after']}"]
    lines += [f"parent {p['entry'][:12]}… ({p['relation']}, {p['experts']} experts)" + (f", listed as {p['listing']}" if p["listing"] else "")
              for p in x["lineage"]]
    lines += [f"contributor {c['id']} ({c['role']}) share {c['share']:.4f}" for c in x["contributors"]]
    console.print("\n".join(line for line in lines if line), highlight=False, soft_wrap=True)


@app.command("list")
def list_entry(
    model: Annotated[str, typer.Argument(help="The library entry (model id) to list: one your jobs made (a job's "
                                              "fine_tuned_model, see `moeforge jobs show`).")],
    title: Annotated[str, typer.Option("--title", help="What buyers see first.")],
    description: Annotated[str, typer.Option("--description", help="What the experts are for and how they were made.")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A domain tag (repeatable).")] = None,
    licence: Annotated[str | None, typer.Option("--licence", help="An SPDX id \\[default: the entry's own].")] = None,
    licence_file: Annotated[Path | None, typer.Option("--licence-file", help="Or your own licence's text (with --licence-name).")] = None,
    licence_name: Annotated[str | None, typer.Option("--licence-name", help="LicenseRef-<name> of --licence-file.")] = None,
    commercial: Annotated[bool, typer.Option("--commercial/--no-commercial", help="Custom licence: commercial use.")] = False,
    redistribution: Annotated[bool, typer.Option("--redistribution/--no-redistribution")] = False,
    attribution: Annotated[bool, typer.Option("--attribution/--no-attribution")] = True,
    field_of_use: Annotated[str | None, typer.Option("--field-of-use", help="Custom licence: where it may be used.")] = None,
    price: Annotated[str, typer.Option("--price", help="free, per_mtok:UNITS or per_export:UNITS.")] = "free",
    visibility: Annotated[str, typer.Option("--visibility", help="public, gated or private.")] = "public",
    url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False,
) -> None:
    """List one of your library entries on the market, with its licence, price and visibility."""
    body = {"model": model, "title": title, "description": description, "tags": tag or [], "price": parse_price(price),
            "visibility": visibility}
    if licence_file is not None:
        if licence is not None or not licence_name:
            raise ConfigError("--licence-file goes with --licence-name LicenseRef-<name> (and not with --licence).")
        if not licence_file.is_file():
            raise ConfigError(f"--licence-file {licence_file}: no such file.")
        body["licence"] = {"custom": {"name": licence_name, "text": licence_file.read_text(), "commercial_use": commercial,
                                      "redistribution": redistribution, "attribution": attribution, "field_of_use": field_of_use}}
    elif licence is not None:
        body["licence"] = {"spdx": licence}
    data = Client(url, key).call("POST", "/v1/market/listings", json=body)
    _print(data, as_json, lambda d: console.print(f"listed {d['model'][:12]}… as {d['id']}: {d['price']['text']}, {d['licence_id']}, "
                                                  f"{d['visibility']}", highlight=False))


@app.command("request")
def request_access(listing: Annotated[str, typer.Argument(help="A listing id (lst-…).")],
                   note: Annotated[str, typer.Option("--note", help="What you will use it for (a gated listing's owner reads it).")] = "",
                   url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Ask for access to a listing: granted at once if public, pending the owner's approval if gated."""
    data = Client(url, key).call("POST", f"/v1/market/listings/{listing}/access", json={"note": note})
    _print(data, as_json, _render_grant)


def _render_grant(g: dict) -> None:
    price = g["terms"]["price"]
    console.print(f"grant {g['id']} on {g['listing']} for {g['tenant']}: {g['status']} (licence "
                  f"{g['terms']['licence'].get('spdx') or g['terms']['licence']['custom']['name']}, price {price['kind']} "
                  f"{units(price['micros'])})", highlight=False)


@app.command()
def grant(target: Annotated[str, typer.Argument(help="A pending grant id to approve, or with --tenant a listing id.")],
          tenant: Annotated[str | None, typer.Option("--tenant", help="Grant this tenant (by name) access to listing TARGET.")] = None,
          url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Approve a pending access request on your listing, or grant a tenant access directly."""
    client = Client(url, key)
    data = (client.call("POST", f"/v1/market/listings/{target}/grants", json={"tenant": tenant}) if tenant
            else client.call("POST", f"/v1/market/grants/{target}/approve"))
    _print(data, as_json, _render_grant)


@app.command()
def revoke(grant_id: Annotated[str, typer.Argument(help="The grant id (grant-…).")], url: UrlOpt = None, key: KeyOpt = None,
           as_json: JsonOpt = False) -> None:
    """Revoke a grant: no new exports under it (bundles exported already keep their terms)."""
    _print(Client(url, key).call("POST", f"/v1/market/grants/{grant_id}/revoke"), as_json, _render_grant)


@app.command()
def grants(owner: Annotated[bool, typer.Option("--owner", help="Grants on your listings (default: grants you hold).")] = False,
           status: Annotated[str | None, typer.Option("--status", help="pending, active, rejected or revoked.")] = None,
           url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List grants you hold, or (--owner) the requests and grants on your listings."""
    params = {"role": "owner" if owner else "holder", **({"status": status} if status else {})}
    data = Client(url, key).call("GET", "/v1/market/grants", params=params)

    def render(d):
        table = Table("grant", "listing", "title", "tenant", "status", "note", box=None)
        for g in d["data"]:
            table.add_row(g["id"], g["listing"], escape(g["title"]), g["tenant"], g["status"], escape(g["note"]))
        console.print(table if d["data"] else "no grants")

    _print(data, as_json, render)


@app.command()
def usage(ledger: Annotated[Path, typer.Argument(help="A day's ledger file written by `moeforge serve` (usage-YYYY-MM-DD.jsonl), "
                                                      "or its folder: every day in it (what a scheduled job hands in).")],
          public_key: Annotated[Path, typer.Option("--public-key", help="The server's ledger public key (usage.pub).")],
          server_name: Annotated[str, typer.Option("--server-name", help="A name for that server, when it is new.")] = "server",
          url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Hand in usage ledgers: registers the server's key the first time, then the Centre verifies and prices each day's
    new records (a day with nothing new is said and skipped)."""
    if ledger.is_dir():
        days = sorted(ledger.glob("usage-*.jsonl"))
        if not days:
            raise ConfigError(f"LEDGER {ledger}: a folder with no usage-YYYY-MM-DD.jsonl files.")
    elif ledger.is_file():
        days = [ledger]
    else:
        raise ConfigError(f"LEDGER {ledger}: no such file or folder.")
    client = Client(url, key)
    server = _server(client, public_key, server_name)
    reports = []
    for day in days:
        file = client.upload(day, purpose="usage", option="LEDGER")
        body = {"file": file["id"], "server": server["id"]}
        response = client.send("POST", "/v1/market/usage", json=body)
        if response.status_code == 409 and response.json().get("error", {}).get("code") == "usage_ledger_replayed":
            if not as_json:
                console.print(f"{day.name}: nothing new since the last time it was handed in", highlight=False)
            continue
        report = client.call("POST", "/v1/market/usage", json=body) if response.status_code >= 400 else response.json()
        reports.append(report)
        if not as_json:
            _render_report(report)
    if as_json:
        print(json.dumps(reports, indent=2))


def _server(client: Client, public_key: Path, name: str) -> dict:
    """The registered server key of `public_key` (registered now if new)."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

    if not public_key.is_file():
        raise ConfigError(f"--public-key {public_key}: no such file.")
    try:
        der = load_pem_public_key(public_key.read_bytes()).public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except ValueError as exc:
        raise ConfigError(f"--public-key {public_key}: not a PEM public key ({exc}).") from None
    fingerprint = hashlib.sha256(der).hexdigest()
    server = next((s for s in client.call("GET", "/v1/market/servers")["data"] if s["fingerprint"] == fingerprint), None)
    return server or client.call("POST", "/v1/market/servers", json={"name": name, "public_key": public_key.read_text()})


def _render_report(r: dict) -> None:
    console.print(f"usage report {r['id']}: {r['model']} on {r['period']}, records {r['records'][0]}–{r['records'][1]}, "
                  f"{r['requests']:,} requests, {r['tokens']:,} tokens; charged {units(r['charged_micros'])}", highlight=False)
    for line in r["lines"]:
        console.print(f"  {line['entry'][:12]}… {line['status']}: {line['routed_tokens']:,.1f} routed tokens, "
                      f"{units(line['charged_micros'])}", highlight=False)
    if r["flagged"]:
        console.print(f"[yellow]{len(r['flagged'])} entr{'y' if len(r['flagged']) == 1 else 'ies'} flagged (unlicensed or "
                      "unknown): recorded, not paid out[/yellow]")


@app.command()
def earnings(statement: Annotated[Path | None, typer.Option("--statement", help="Also write the period's payout statement "
                                                                                  "here (.csv or .json).")] = None,
             period: Annotated[str | None, typer.Option("--period", help="YYYY-MM or YYYY-MM-DD of --statement \\[default: "
                                                                         "this month].")] = None,
             url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Your earnings per month and per entry, and optionally a payout statement as CSV or JSON."""
    client = Client(url, key)
    data = client.call("GET", "/v1/market/earnings")
    if statement is not None:
        if statement.suffix not in (".csv", ".json"):
            raise ConfigError(f"--statement {statement}: name a .csv or a .json file.")
        params = {"format": statement.suffix[1:], **({"period": period} if period else {})}
        response = client.send("GET", "/v1/market/statements", params=params)
        if response.status_code >= 400:
            client.call("GET", "/v1/market/statements", params=params)  # raises with the Centre's message
        statement.write_bytes(response.content)

    def render(d):
        table = Table("period", "earned", box=None)
        for month in d["months"]:
            table.add_row(month["period"], units(month["micros"]))
        console.print(table if d["months"] else "no earnings yet")
        console.print(f"total {units(d['total_micros'])} to {d['payee']}"
                      + (f"; statement written to {statement}" if statement else ""), highlight=False)

    _print(data, as_json, render)

"""The marketplace at scale: search over ≥ 200 listings, earnings from ≥ 1,000,000 served tokens, splits that reconcile.

The issue's benchmark; DESIGN.md "The Customization Centre and the marketplace". A real Centre
(`moeforge service up` on the small testbed, harness/centre.py) is seeded from this process. Its
library gets the three real entries of bench/compounding.py's library (that bench's own library
jobs, centralised ESFT on GSM8K, Python and MTS-Dialog, at its --quick settings: no earlier
bench keeps its library, so they are made again) and --entries synthetic ones (harness/market.py:
the testbed's experts nudged by seeded noise, random lineage DAGs, 1-4 miners each). Four tenants
own most synthetic entries, the rest belong to the shared library, and most entries are listed
over the API with a mix of visibility, price, licence and tags. Then, over loopback HTTP:

1. Search: a customer's GET /v1/market/listings, one at a time, over a rotating mix of queries
   (text, domain, licence, price kind and ceiling, gain, each sort; limit 50) after one warm-up
   request of each, then --clients concurrent clients for --seconds. Apart from that, search by
   routing match to a sample (`sample=<file>`, a GSM8K fine-tune file the worker has processed):
   the first call, which profiles it, and the cached calls after it.
2. Earnings: the customer registers --servers server keys and takes grants on paid listings (one
   of them gated, approved by its owner). Each server's signed ledger of today (harness
   write_ledger, deploy/usage.py's Ledger), one period, is uploaded and reported (POST
   /v1/market/usage: verified, priced by routed tokens, split through lineage into the
   append-only ledger). Then the subnet owner reads the period's statements, as CSV and as JSON
   with the reconciliation.
3. Reconciliation: split.py's split_revenue over --trees random lineage DAGs with random amounts,
   and over every library entry's lineage as pricing reads it from the Centre's database. A tree
   is exact when its postings are non-negative and sum to the amount.

Targets (issue): search p99 ≤ 100 ms with ≥ 200 entries and ≥ 1,000,000 served tokens; every tree
exact. Prints a table and writes bench/results/marketplace.json.

    .venv/bin/python bench/marketplace.py            # 240 synthetic + 3 real entries, ≥ 1,000,000 served tokens
    .venv/bin/python bench/marketplace.py --quick    # 24 synthetic + 3 real entries, ≥ 40,000 served tokens
"""

import argparse
import csv
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np

from args import parse_args
from base import testbed_base
from provenance import Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: harness/ sits beside bench/
from harness.centre import centre, wait_for

from moeforge.service.market.split import Node, split_revenue
from moeforge.service.market.terms import MICROS

RESULTS = Path(__file__).parent / "results" / "marketplace.json"
SEARCH_P99_TARGET_MS = 100.0
MIN_ENTRIES, MIN_SERVED_TOKENS = 200, 1_000_000  # the sizes
OWNERS = ("alice", "bob", "carol", "dave")  # tenants whose jobs made the synthetic entries
CUSTOMER = "erin"  # searches, takes grants, serves the entries and reports the usage
SUBNET = "default"  # the subnet owner: lists the shared library's entries, reads every statement
TAGS = {"math": ("gsm8k", "arithmetic", "word-problems"), "medical": ("clinical", "notes", "dialogue"),
        "finance": ("earnings", "risk"), "law": ("contracts", "case-law"), "python": ("code", "stdlib"),
        "chemistry": ("reactions", "molecules"), "retail": ("catalogue", "support"), "logistics": ("routing", "freight")}
QUERIES = (  # (label, query parameters); every search asks for limit 50
    ("all", {}),
    ("q=math", {"q": "math"}),
    ("q=clinical", {"q": "clinical"}),
    ("q=experts", {"q": "experts"}),  # in every title
    ("domain=law", {"domain": "law"}),
    ("licence=MIT", {"licence": "MIT"}),
    ("price=per_mtok", {"price": "per_mtok"}),
    ("price=free", {"price": "free"}),
    ("max_price=2", {"max_price_micros": 2 * MICROS}),
    ("min_gain=0.3", {"min_gain": 0.3}),
    ("sort=gain", {"sort": "gain"}),
    ("sort=price", {"sort": "price"}),
    ("sort=newest", {"sort": "newest"}),
    ("finance+per_mtok+sort=price", {"domain": "finance", "price": "per_mtok", "sort": "price"}),
)
PRICED = 8  # public per-token listings the customer takes grants on and serves
SAMPLE_RECORDS = 200  # GSM8K records in the search sample
TOKENS_PER_REQUEST = 500  # write_ledger's mean prompt + completion tokens, to size a server's ledger
QUICK = {"entries": 24, "tokens": 40_000, "servers": 2, "searches": 70, "sample_searches": 5, "clients": 2, "seconds": 1.0}


def main(argv: list[str] | None = None) -> dict:
    run = Run(__file__, argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", type=Path, default=None, help="small testbed directory (default: the moeforge cache)")
    parser.add_argument("--entries", type=int, default=240, help="synthetic library entries (the 3 real ones come on top)")
    parser.add_argument("--tokens", type=int, default=MIN_SERVED_TOKENS, help="served tokens in the ledgers, at least")
    parser.add_argument("--servers", type=int, default=4, help="the customer's servers: one ledger file each for today")
    parser.add_argument("--searches", type=int, default=1400, help="sequential plain searches measured")
    parser.add_argument("--sample-searches", type=int, default=50, help="cached sample searches measured after the first")
    parser.add_argument("--clients", type=int, default=4, help="concurrent search clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the concurrent clients search")
    parser.add_argument("--trees", type=int, default=1000, help="random lineage DAGs split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parse_args(parser, argv, QUICK)
    load_before = os.getloadavg()

    base = testbed_base("small", args.testbed)
    with tempfile.TemporaryDirectory(prefix="bench-marketplace-") as tmp:
        tmp = Path(tmp)
        svc = centre(tmp / "centre", base.folder, miners=1, validators=1)
        t0 = time.perf_counter()
        svc.start()
        started_s = time.perf_counter() - t0
        try:
            market = Market(svc, base, tmp, args)
            seeded = market.seed()
            search = market.search()
            sample = market.sample_search()
            earnings = market.earnings()
            library_trees = market.library_trees()
        finally:
            svc.stop()
    trees = random_trees(args.trees, args.seed)

    result = {
        "preset": "small",
        "testbed": base.folder.name,
        "entries": seeded["entries"],
        "real_entries": seeded["real_entries"],
        "synthetic_entries": seeded["synthetic_entries"],
        "listings": seeded["listings"],
        "served_tokens": earnings["served_tokens"],
        "search_p50_ms": search["sequential_ms"]["p50"],
        "search_p99_ms": search["sequential_ms"]["p99"],
        "search": search,
        "sample_search_first_ms": sample["first_ms"],
        "sample_search_cached_p99_ms": sample["cached_ms"]["p99"],
        "sample_search": sample,
        "earnings_seconds": earnings["earnings_seconds"],
        "statements_seconds": earnings["statements_seconds"],
        "earnings": earnings,
        "ledger_reconciliation": earnings["reconciliation"],
        "reconciliation_trees": trees["trees"],
        "reconciliation_exact": trees["exact"],
        "reconciliation": {"random_trees": trees, "library_trees": library_trees},
        "setup": {**seeded["setup"], "centre_started_in_s": round(started_s, 1)},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "testbed")},
        "machine": {"loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    result["targets"] = targets(result)
    print_table(result)
    return run.write(args.out, result)


class Market:
    """The Centre under test, its tenants and keys, and what was seeded into it."""

    def __init__(self, svc, base, tmp: Path, args):
        from moeforge.service.db import Database, centre_library

        self.svc, self.base, self.tmp, self.args = svc, base, tmp, args
        self.rng = random.Random(args.seed)
        self.db = Database(svc.database)
        self.library = centre_library(self.db, svc.env["MOEFORGE_LIBRARY_STORE"])
        self.http = httpx.Client(base_url=svc.url, timeout=300)
        self.keys = {SUBNET: svc.key}  # tenant name → admin key
        self.tenants: dict[str, str] = {}  # tenant name → id
        self.entries: list[str] = []  # real first, then synthetic oldest first
        self.owner: dict[str, str] = {}  # entry → the tenant that lists it (SUBNET for the shared library's)
        self.listings: dict[str, dict] = {}  # entry → its listing, as created
        self._ancestors: dict[str, frozenset] = {}

    def h(self, tenant: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def call(self, method: str, path: str, tenant: str, **kwargs) -> httpx.Response:
        r = self.http.request(method, path, headers=self.h(tenant), **kwargs)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path} as {tenant}: HTTP {r.status_code} {r.text[:500]}")
        return r

    # --- the market: tenants, entries, listings -----------------------------------------------------------------------

    def seed(self) -> dict:
        from harness.market import own, synthetic_entries
        from moeforge.data.corpora import load_corpus
        from moeforge.model.fingerprint import model_fingerprint
        from moeforge.profile.stats import ProfileConfig, profile_records
        from moeforge.service.auth import create_tenant

        for name in (*OWNERS, CUSTOMER):
            self.tenants[name], self.keys[name] = create_tenant(self.db, name)
        model, tokenizer, fingerprint = self.base.model, self.base.tokenizer, model_fingerprint(self.base.model)
        t0 = time.perf_counter()
        real = self._real_entries(fingerprint)
        real_s = time.perf_counter() - t0
        background = profile_records(model, tokenizer, load_corpus("wikitext", "train"),
                                     ProfileConfig(tokens=2048, seq_len=self.base.seq_len, saliency=False),
                                     base_fingerprint=fingerprint)
        t0 = time.perf_counter()
        synthetic = synthetic_entries(self.library, model, background, self.args.entries, seed=self.args.seed,
                                      base_name=self.base.folder.name)
        synthetic_s = time.perf_counter() - t0
        self.entries = [*real, *synthetic]
        self.owner = {entry: SUBNET for entry in real}  # compounding's library is the shared library
        for entry in synthetic:
            self.owner[entry] = self.rng.choice(OWNERS) if self.rng.random() < 0.85 else SUBNET
            if self.owner[entry] != SUBNET:
                own(self.db, entry, self.tenants[self.owner[entry]])
        t0 = time.perf_counter()
        for i, entry in enumerate(self.entries):
            if self.rng.random() < 0.05:
                continue  # left unlisted
            body = self._listing_body(i, entry)
            self.listings[entry] = self.call("POST", "/v1/market/listings", self.owner[entry], json=body).json()
        listing_s = time.perf_counter() - t0
        counted = list(self.listings.values())
        return {
            "entries": len(self.entries), "real_entries": len(real), "synthetic_entries": len(synthetic),
            "listings": {"listed": len(counted), "unlisted": len(self.entries) - len(counted),
                         "by_visibility": _count(x["visibility"] for x in counted),
                         "by_price": _count(x["price"]["kind"] for x in counted),
                         "by_owner": _count(self.owner[e] for e in self.listings),
                         "deepest_lineage": max(len(self.ancestors(e)) for e in self.entries)},
            "setup": {"real_entries_seconds": round(real_s, 2), "synthetic_entries_seconds": round(synthetic_s, 2),
                      "listing_seconds": round(listing_s, 2),
                      "real_entries_made_by": "bench/compounding.py's Bench.library_job (centralised ESFT) on math, python "
                                              "and medical at its --quick settings; no earlier bench keeps its library"},
        }

    def _real_entries(self, fingerprint: str) -> list[str]:
        import compounding
        from moeforge.data.corpora import load_corpus

        jobs = compounding.Bench(self.base.model, self.base.tokenizer, fingerprint, self.base.seq_len,
                                 argparse.Namespace(**compounding.QUICK), self.library)
        return [jobs.library_job(domain, load_corpus(domain, "train"), load_corpus(domain, "test"))["entry"]
                for domain in ("math", "python", "medical")]

    def _listing_body(self, i: int, entry: str) -> dict:
        rng, manifest = self.rng, self.library.manifest(entry)
        domain = manifest.domain
        tags = sorted({domain, *rng.sample(TAGS.get(domain, ()), rng.randint(0, len(TAGS.get(domain, ()))))})
        kind = rng.choices(("free", "per_mtok", "per_export"), weights=(35, 50, 15))[0]
        micros = {"free": 0, "per_mtok": int(rng.choice((0.5, 1, 2, 3, 5, 10, 20)) * MICROS),
                  "per_export": rng.choice((5, 25, 100)) * MICROS}[kind]
        body = {"model": entry, "title": f"{domain} experts {i}: {', '.join(tags)}",
                "description": f"{len(manifest.slots)} experts of {manifest.base_model} for {domain} data, "
                               f"{len(manifest.parents)} parent entries.",
                "tags": tags, "price": {"kind": kind, "micros": micros},
                "visibility": rng.choices(("public", "gated", "private"), weights=(80, 12, 8))[0]}
        licence = rng.random()
        if licence < 0.1:
            body["licence"] = {"spdx": "MIT"}
        elif licence < 0.2:
            owner = self.owner[entry]
            body["licence"] = {"custom": {"name": f"LicenseRef-{owner}-research", "commercial_use": False,
                                          "redistribution": False, "attribution": True, "field_of_use": f"{domain} research",
                                          "text": f"{owner}'s research licence: research use only, no resale, cite the source."}}
        return body  # otherwise the entry's own licence

    def ancestors(self, entry: str) -> frozenset:
        if entry not in self._ancestors:
            parents = [p for p, _, _ in self.library.catalog.parents(entry)]
            self._ancestors[entry] = frozenset(parents).union(*(self.ancestors(p) for p in parents))
        return self._ancestors[entry]

    # --- search -------------------------------------------------------------------------------------------------------

    def search(self) -> dict:
        http = httpx.Client(base_url=self.svc.url, headers=self.h(CUSTOMER), timeout=60)
        for _, params in QUERIES:  # warm-up, not measured: the first request of a query shape compiles what it needs
            http.get("/v1/market/listings", params={**params, "limit": 50}).raise_for_status()
        times, per_query, matches = [], {label: [] for label, _ in QUERIES}, {}
        for i in range(self.args.searches):
            label, params = QUERIES[i % len(QUERIES)]
            t0 = time.perf_counter()
            r = http.get("/v1/market/listings", params={**params, "limit": 50})
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise RuntimeError(f"search {label}: HTTP {r.status_code} {r.text[:300]}")
            times.append(elapsed)
            per_query[label].append(elapsed)
            matches[label] = r.json()["total"]
        http.close()
        return {"sequential_ms": percentiles(times), "warm_up_requests": len(QUERIES), "visible_listings": matches["all"],
                "per_query_ms": {label: {**percentiles(t), "matches": matches.get(label)} for label, t in per_query.items()},
                "concurrent": self._concurrent_search()}

    def _concurrent_search(self) -> dict:
        """--clients clients (one connection each, threads) searching the rotating mix for --seconds."""
        deadline = time.monotonic() + self.args.seconds

        def client(i: int) -> tuple[list[float], int]:
            times, failed = [], 0
            with httpx.Client(base_url=self.svc.url, headers=self.h(CUSTOMER), timeout=60) as http:
                http.get("/v1/market/listings", params={"limit": 50})  # opens the connection; not measured
                k = i
                while time.monotonic() < deadline:
                    label, params = QUERIES[k % len(QUERIES)]
                    k += 1
                    t0 = time.perf_counter()
                    r = http.get("/v1/market/listings", params={**params, "limit": 50})
                    times.append(time.perf_counter() - t0)
                    failed += r.status_code != 200
            return times, failed

        with ThreadPoolExecutor(self.args.clients) as pool:
            runs = list(pool.map(client, range(self.args.clients)))
        times = [t for ts, _ in runs for t in ts]
        return {"clients": self.args.clients, "seconds": self.args.seconds, "ms": percentiles(times),
                "requests_per_s": round(len(times) / self.args.seconds, 1), "failed": sum(f for _, f in runs)}

    def sample_search(self) -> dict:
        """Search ordered by routing match to a processed GSM8K file: the first call profiles it, later ones hit the cache."""
        from moeforge.data.corpora import load_corpus

        text = "".join(json.dumps({"question": r.prompt, "answer": r.response}) + "\n"
                       for r in load_corpus("math", "train")[:SAMPLE_RECORDS])
        upload = self.call("POST", "/v1/files", CUSTOMER, files={"file": ("gsm8k-sample.jsonl", text.encode(), "application/jsonl")},
                           data={"purpose": "fine-tune"}).json()

        def status() -> dict:
            return self.call("GET", f"/v1/files/{upload['id']}", CUSTOMER).json()

        t0 = time.perf_counter()
        wait_for(lambda: status()["status"] != "uploaded", 300, "the worker to validate the sample file")
        validated_s = time.perf_counter() - t0
        if status()["status"] != "processed":
            raise RuntimeError(f"the sample file failed validation: {status()['status_details']}")
        params = {"sample": upload["id"], "limit": 50}
        t0 = time.perf_counter()
        first = self.call("GET", "/v1/market/listings", CUSTOMER, params=params).json()
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(self.args.sample_searches):
            t0 = time.perf_counter()
            again = self.call("GET", "/v1/market/listings", CUSTOMER, params=params).json()
            times.append(time.perf_counter() - t0)
        scores = [x["relevance"]["score"] for x in first["data"]]
        return {"records": SAMPLE_RECORDS, "bytes": upload["bytes"], "validated_in_s": round(validated_s, 2),
                "first_ms": round(first_s * 1000, 2), "cached_ms": percentiles(times), "listings": first["total"],
                "scored_in_first_page": sum(s is not None for s in scores), "top_score": scores[0] if scores else None,
                "same_order_cached": [x["id"] for x in again["data"]] == [x["id"] for x in first["data"]]}

    # --- earnings -----------------------------------------------------------------------------------------------------

    def earnings(self) -> dict:
        """Grants, today's ledgers from --servers servers reported and priced, then the period's statements."""
        from moeforge.deploy.bundle import public_path

        served = self._take_grants()
        servers, written_tokens, t0 = [], 0, time.perf_counter()
        for k in range(self.args.servers):
            key = self.tmp / "servers" / f"vpc-{k}" / "usage.pem"
            file, tokens = self._write_ledger(k, key, list(served))
            server = self.call("POST", "/v1/market/servers", CUSTOMER,
                               json={"name": f"vpc-{k}", "public_key": public_path(key).read_text()}).json()
            servers.append((server["id"], file))
            written_tokens += tokens
        ledgers_s = time.perf_counter() - t0
        reports = []
        for server, file in servers:
            t0 = time.perf_counter()
            uploaded = self.call("POST", "/v1/files", CUSTOMER, files={"file": (file.name, file.read_bytes(), "application/jsonl")},
                                 data={"purpose": "usage"}).json()
            upload_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = self.call("POST", "/v1/market/usage", CUSTOMER, json={"file": uploaded["id"], "server": server}).json()
            reports.append({"seconds": time.perf_counter() - t0, "upload_seconds": upload_s, "bytes": uploaded["bytes"], **report})
        if any(r["status"] != "accepted" for r in reports):
            raise RuntimeError(f"a usage report was refused: {[r['problems'] for r in reports if r['status'] != 'accepted']}")
        days = sorted({r["period"] for r in reports})
        period = days[0] if len(days) == 1 else days[0][:7]  # the ledgers crossed midnight (UTC): the month holds both days
        statements = self._statements(period)
        views = self._earnings_views()
        charged = sum(r["charged_micros"] for r in reports)
        rec = statements["reconciliation"]
        return {
            "served_tokens": sum(r["tokens"] for r in reports), "written_tokens": written_tokens,
            "requests": sum(r["requests"] for r in reports), "period": period, "reports": len(reports),
            "earnings_seconds": round(sum(r["seconds"] for r in reports), 3),
            "per_report": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                            if k in ("seconds", "upload_seconds", "bytes", "requests", "tokens", "charged_micros")} for r in reports],
            "statements_seconds": statements["csv_seconds"], "statements_json_seconds": statements["json_seconds"],
            "statement_payees": statements["payees"], "statement_csv_rows": statements["csv_rows"],
            "earnings_view_ms": views["ms"],
            "served_entries": {status: sum(s == status for s in served.values()) for status in sorted(set(served.values()))},
            "usage_lines_by_status": _count(line["status"] for r in reports for line in r["lines"]),
            "priced_lineage_sizes": sorted(len(self.ancestors(e)) + 1 for e, s in served.items() if s == "priced"),
            "charged_micros": charged, "ledgers_written_seconds": round(ledgers_s, 2),
            "reconciliation": {**rec, "revenue_is_reports_charge": rec["revenue"] == charged,
                               "csv_sums_to_payouts": statements["csv_micros"] == rec["payouts"],
                               "statements_sum_to_payouts": statements["json_micros"] == rec["payouts"],
                               "tenant_earnings_match_statements": views["total"] == statements["tenant_micros"]},
        }

    def _take_grants(self) -> dict[str, str]:
        """entry → the status its usage should get: grants on the public per-token listings with the deepest lineage and on
        one gated one (its owner approves); free listings, an unlisted entry and a gated listing with no grant beside them."""
        listed = self.listings.items()
        public_paid = sorted((e for e, x in listed if x["visibility"] == "public" and x["price"]["kind"] == "per_mtok"),
                             key=lambda e: (-len(self.ancestors(e)), e))
        gated_paid = [e for e, x in listed if x["visibility"] == "gated" and x["price"]["kind"] == "per_mtok"]
        gated_other = [e for e, x in listed if x["visibility"] == "gated" and x["price"]["kind"] != "per_mtok"]
        free = [e for e, x in listed if x["visibility"] == "public" and x["price"]["kind"] == "free"]
        unlisted = [e for e in self.entries if e not in self.listings]
        served = {e: "priced" for e in public_paid[:PRICED]}
        for entry in public_paid[:PRICED]:
            grant = self.call("POST", f"/v1/market/listings/{self.listings[entry]['id']}/access", CUSTOMER, json={}).json()
            if grant["status"] != "active":
                raise RuntimeError(f"a public listing's grant is {grant['status']}, not active")
        for entry in gated_paid[:1]:
            pending = self.call("POST", f"/v1/market/listings/{self.listings[entry]['id']}/access", CUSTOMER,
                                json={"note": "served in our support product"}).json()
            self.call("POST", f"/v1/market/grants/{pending['id']}/approve", self.owner[entry])
            served[entry] = "priced"
        served.update({e: "free" for e in free[:3]})
        served.update({e: "unlicensed" for e in gated_other[:1]})
        served.update({e: "free" if self.owner[e] == SUBNET else "unlicensed" for e in unlisted[:1]})
        return served

    def _write_ledger(self, k: int, key: Path, entries: list[str]) -> tuple[Path, int]:
        """Server k's ledger of today, written in batches until it holds its share of --tokens."""
        from harness.market import write_ledger

        share, tokens, batch = math.ceil(self.args.tokens / self.args.servers), 0, 0
        folder = key.parent / "ledger"
        while tokens < share:
            requests = max(1, math.ceil((share - tokens) / TOKENS_PER_REQUEST))
            file, more = write_ledger(folder, key, entries, requests=requests, seed=self.args.seed * 10_000 + k * 100 + batch)
            tokens, batch = tokens + more, batch + 1
        files = sorted(folder.glob("usage-*.jsonl"))
        if len(files) != 1:
            raise RuntimeError(f"server {k}'s ledger spans {len(files)} days (UTC midnight passed while writing it): run again")
        return file, tokens

    def _statements(self, period: str) -> dict:
        t0 = time.perf_counter()
        text = self.call("GET", "/v1/market/statements", SUBNET, params={"period": period, "format": "csv"}).text
        csv_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        body = self.call("GET", "/v1/market/statements", SUBNET, params={"period": period}).json()
        json_s = time.perf_counter() - t0
        rows = list(csv.DictReader(io.StringIO(text)))
        return {"csv_seconds": round(csv_s, 3), "json_seconds": round(json_s, 3), "csv_rows": len(rows),
                "csv_micros": sum(int(r["micros"]) for r in rows), "payees": len(body["data"]),
                "json_micros": sum(st["total_micros"] for st in body["data"]),
                "tenant_micros": sum(st["total_micros"] for st in body["data"] if st["payee"].startswith("tenant:")),
                "reconciliation": body["reconciliation"]}

    def _earnings_views(self) -> dict:
        """Each payee tenant's GET /v1/market/earnings: how long, and the total it shows."""
        ms, total = {}, 0
        for name in (*OWNERS, SUBNET):
            t0 = time.perf_counter()
            total += self.call("GET", "/v1/market/earnings", name).json()["total_micros"]
            ms[name] = round((time.perf_counter() - t0) * 1000, 2)
        return {"ms": ms, "total": total}

    # --- reconciliation over the library's own lineage -----------------------------------------------------------------

    def library_trees(self) -> dict:
        """split_revenue of a random amount on every library entry, its lineage read as pricing reads it (ledger.py)."""
        from sqlalchemy import select

        from moeforge.service.market.ledger import lineage_nodes
        from moeforge.service.schema import TenantRow

        rng = random.Random(self.args.seed + 1)
        exact, postings, t0 = 0, 0, time.perf_counter()
        with self.db.session() as s:
            node = lineage_nodes(s, s.scalar(select(TenantRow.id).where(TenantRow.name == SUBNET)))
            for entry in self.entries:
                amount = random_amount(rng)
                split = split_revenue(entry, amount, node)
                exact += is_exact(split, amount)
                postings += len(split)
        return {"trees": len(self.entries), "exact": exact, "postings": postings, "seconds": round(time.perf_counter() - t0, 3),
                "largest_tree": max(len(self.ancestors(e)) + 1 for e in self.entries)}


# --- reconciliation over random lineage DAGs ---------------------------------------------------------------------------


def random_lineage(rng: random.Random, size: int) -> dict[str, Node]:
    """A random lineage DAG: entry i names 0-3 parents among entries 0..i-1; random owners, miners and shares."""
    nodes = {}
    for i in range(size):
        parents = tuple((f"e{p}", rng.randint(0, 5)) for p in sorted(rng.sample(range(i), min(i, rng.choice((0, 1, 1, 2, 3))))))
        people = tuple((f"hotkey:m{rng.randrange(20)}", Fraction(repr(rng.random()))) for _ in range(rng.choice((0, 1, 2, 4))))
        nodes[f"e{i}"] = Node(owner=f"tenant:t{rng.randrange(3)}", contributors=people, parents=parents)
    return nodes


def random_amount(rng: random.Random) -> int:
    """Micros of revenue: the edges (nothing, one micro, a few) as often as a random amount up to a million units."""
    return rng.choice((0, 1, 7, 999, rng.randint(1, 10**12)))


def is_exact(postings, amount: int) -> bool:
    return sum(p.micros for p in postings) == amount and all(p.micros >= 0 for p in postings)


def random_trees(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    exact, sizes, postings, t0 = 0, [], 0, time.perf_counter()
    for _ in range(n):
        nodes = random_lineage(rng, rng.randint(1, 24))
        amount = random_amount(rng)
        split = split_revenue(f"e{len(nodes) - 1}", amount, nodes.__getitem__)
        exact += is_exact(split, amount)
        sizes.append(len(nodes))
        postings += len(split)
    return {"trees": n, "exact": exact, "nodes_max": max(sizes, default=0),
            "nodes_mean": round(float(np.mean(sizes)), 1) if sizes else 0, "postings": postings,
            "seconds": round(time.perf_counter() - t0, 3)}


# --- figures -----------------------------------------------------------------------------------------------------------


def percentiles(times_s: list[float]) -> dict:
    if not times_s:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "count": 0}
    ms = np.asarray(times_s) * 1000
    return {**{f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}, "mean": round(float(ms.mean()), 2),
            "max": round(float(ms.max()), 2), "count": int(ms.size)}


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def targets(result: dict) -> dict:
    p99, trees, rec = result["search_p99_ms"], result["reconciliation"]["random_trees"], result["ledger_reconciliation"]
    library = result["reconciliation"]["library_trees"]
    return {
        "sizes": {"entries": result["entries"], "min_entries": MIN_ENTRIES, "served_tokens": result["served_tokens"],
                  "min_served_tokens": MIN_SERVED_TOKENS,
                  "met": result["entries"] >= MIN_ENTRIES and result["served_tokens"] >= MIN_SERVED_TOKENS},
        "search_p99_ms": {"target": SEARCH_P99_TARGET_MS, "measured": p99, "met": p99 is not None and p99 <= SEARCH_P99_TARGET_MS},
        "reconciliation_exact": {"target": "every tree", "trees": trees["trees"], "exact": trees["exact"],
                                 "library_trees": library["trees"], "library_exact": library["exact"],
                                 "met": trees["exact"] == trees["trees"] and library["exact"] == library["trees"]},
        "ledger_reconciliation": {"target": "revenue = payouts + fee, no unbalanced transaction",
                                  "met": bool(rec["exact"] and rec["revenue_is_reports_charge"] and rec["csv_sums_to_payouts"]
                                              and rec["statements_sum_to_payouts"] and rec["tenant_earnings_match_statements"])},
    }


def print_table(result: dict) -> None:
    s, c, e, sample = result["search"]["sequential_ms"], result["search"]["concurrent"], result["earnings"], result["sample_search"]
    rec, library = result["ledger_reconciliation"], result["reconciliation"]["library_trees"]
    rows = [
        ("library entries (real + synthetic)", f"{result['entries']} ({result['real_entries']} + {result['synthetic_entries']})"),
        ("listings (listed / visible to the customer)", f"{result['listings']['listed']} / {result['search']['visible_listings']}"),
        ("search ms p50 / p95 / p99 (count)", f"{s['p50']} / {s['p95']} / {s['p99']} ({s['count']})"),
        (f"search ms with {c['clients']} clients p50 / p99", f"{c['ms']['p50']} / {c['ms']['p99']} ({c['requests_per_s']} req/s, "
                                                             f"{c['failed']} failed)"),
        ("sample search: first ms / cached p99 ms", f"{sample['first_ms']} / {sample['cached_ms']['p99']}"),
        ("served tokens (requests, reports)", f"{result['served_tokens']:,} ({e['requests']:,}, {e['reports']})"),
        ("earnings s per period (usage reports priced)", f"{result['earnings_seconds']}"),
        ("statements s (CSV / JSON)", f"{e['statements_seconds']} / {e['statements_json_seconds']}"),
        ("ledger: revenue = payouts + fee",
         f"{rec['revenue']:,} = {rec['payouts']:,} + {rec['fee']:,} ({'exact' if rec['exact'] else 'NOT exact'})"),
        ("random trees exact", f"{result['reconciliation_exact']} / {result['reconciliation_trees']}"),
        ("library trees exact", f"{library['exact']} / {library['trees']}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nmarketplace on the small testbed")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for name, t in result["targets"].items():
        print(f"target {name}: {'met' if t['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()

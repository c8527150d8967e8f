"""Usage ledgers in, earnings out: verification, replay and fork refusal, unlicensed usage flagged, exact statements."""

import csv
import io
import json
from pathlib import Path

import pytest

from harness.market import write_ledger
from moeforge.service.market.terms import MICROS


def _upload(m, tenant: str, path: Path, name: str | None = None) -> str:
    r = m.client.post("/v1/files", headers=m.h(tenant), files={"file": (name or path.name, path.read_bytes())},
                      data={"purpose": "usage"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _report(m, tenant: str, path: Path, server: str, name: str | None = None):
    return m.client.post("/v1/market/usage", headers=m.h(tenant), json={"file": _upload(m, tenant, path, name), "server": server})


def _server(m, tenant: str, key: Path, name: str) -> str:
    r = m.client.post("/v1/market/servers", headers=m.h(tenant), json={"name": name, "public_key": key.with_suffix(".pub").read_text()})
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def world(market, tmp_path_factory):
    """alice lists e1 per token (bob holds a grant) and e2 gated (no grant); bob serves e1, e2 and a shared entry."""
    m, e = market, market.entries
    paid = m.client.post("/v1/market/listings", headers=m.h("alice"),
                         json={"model": e[1], "title": "paid", "price": {"kind": "per_mtok", "micros": 3 * MICROS}}).json()
    gated = m.client.post("/v1/market/listings", headers=m.h("alice"),
                          json={"model": e[2], "title": "gated", "visibility": "gated"}).json()
    grant = m.client.post(f"/v1/market/listings/{paid['id']}/access", headers=m.h("bob"), json={}).json()
    assert grant["status"] == "active"
    tmp = tmp_path_factory.mktemp("ledgers")
    key = tmp / "usage.pem"
    ledger, tokens = write_ledger(tmp / "day", key, [e[1], e[2], e[7]], requests=40, seed=1)
    server = _server(m, "bob", key, "bob-vpc")
    return {"paid": paid, "gated": gated, "grant": grant, "key": key, "ledger": ledger, "tokens": tokens, "server": server,
            "tmp": tmp}


def test_a_verified_ledger_is_priced_by_routed_tokens_and_split_into_a_ledger_that_reconciles(market, world):
    m, e = market, market.entries
    r = _report(m, "bob", world["ledger"], world["server"])
    assert r.status_code == 200, r.text
    report = r.json()
    lines = {ln["entry"]: ln for ln in report["lines"]}
    assert report["status"] == "accepted" and report["tokens"] == world["tokens"] and report["records"] == [0, 39]
    assert lines[e[1]]["status"] == "priced" and lines[e[7]]["status"] == "free"
    assert lines[e[1]]["charged_micros"] == int(lines[e[1]]["routed_tokens"] * 3) > 0  # 3 units per million = 3 micros a token
    assert sum(ln["routed_tokens"] for ln in lines.values()) <= world["tokens"]
    assert lines[e[2]]["status"] == "unlicensed" and lines[e[2]]["charged_micros"] == 0
    assert [f["entry"] for f in report["flagged"]] == [e[2]]  # recorded and flagged, not paid out
    statement = m.client.get("/v1/market/statements", params={"period": report["period"][:7]}, headers=m.h("default")).json()
    rec = statement["reconciliation"]
    assert rec["exact"] and rec["revenue"] == report["charged_micros"] == rec["payouts"] + rec["fee"]
    payees = {st["payee"] for st in statement["data"]}
    manifest = m.app.state.library.manifest(e[1])
    assert {f"hotkey:{c.id}" for c in manifest.contributors} <= payees and f"tenant:{m.tenants['alice']}" in payees
    for parent in manifest.parents:  # the parents' miners earn from their child's usage
        assert {f"hotkey:{c.id}" for c in m.app.state.library.manifest(parent.entry).contributors} & payees
    earnings = m.client.get("/v1/market/earnings", headers=m.h("alice")).json()
    mine = m.client.get("/v1/market/statements", params={"period": report["period"][:7], "format": "csv"}, headers=m.h("alice"))
    rows = list(csv.DictReader(io.StringIO(mine.text)))
    assert mine.headers["content-type"].startswith("text/csv") and {r["payee"] for r in rows} == {f"tenant:{m.tenants['alice']}"}
    assert sum(int(r["micros"]) for r in rows) == earnings["total_micros"] > 0
    assert m.client.get("/v1/market/statements", params={"payee": "tenant:x"}, headers=m.h("alice")).status_code == 403


def test_a_replayed_a_forked_an_altered_and_a_foreign_ledger_are_refused_and_kept(market, world):
    m, e = market, market.entries
    replay = _report(m, "bob", world["ledger"], world["server"], "again.jsonl")
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "usage_ledger_replayed"
    fork_dir = world["tmp"] / "fork"
    forked, _ = write_ledger(fork_dir, world["key"], [e[1]], requests=45, seed=99)  # same key, day and model; other records
    fork = _report(m, "bob", forked, world["server"])
    assert fork.status_code == 409 and fork.json()["error"]["code"] == "usage_ledger_forked"
    records = world["ledger"].read_text().splitlines()
    altered = json.loads(records[3])
    altered["prompt_tokens"] = 1
    bad = world["tmp"] / "altered.jsonl"
    bad.write_text("\n".join([*records[:3], json.dumps(altered), *records[4:]]) + "\n")
    r = _report(m, "bob", bad, world["server"])
    assert r.status_code == 400 and "altered.jsonl:4" in r.json()["error"]["message"] and "altered" in r.json()["error"]["message"]
    gap = world["tmp"] / "gap.jsonl"
    gap.write_text("\n".join([*records[:5], *records[6:]]) + "\n")
    r = _report(m, "bob", gap, world["server"])
    assert r.status_code == 400 and "gap.jsonl:6: breaks the chain" in r.json()["error"]["message"]
    other, _ = write_ledger(world["tmp"] / "other", world["tmp"] / "other.pem", [e[1]], requests=3, seed=5)
    r = _report(m, "bob", other, world["server"])
    assert r.status_code == 400 and "signature does not verify" in r.json()["error"]["message"]
    kept = m.client.get("/v1/market/usage", headers=m.h("bob")).json()["data"]
    assert sum(k["status"] == "refused" for k in kept) == 5 and sum(k["status"] == "accepted" for k in kept) == 1
    assert all(k["problems"] for k in kept if k["status"] == "refused")
    assert m.client.post("/v1/market/usage", headers=m.h("carol"), json={"file": kept[0]["id"], "server": world["server"]}
                         ).status_code == 404  # another tenant's file and server are not there for carol


def test_a_longer_ledger_of_the_same_day_is_priced_only_for_its_new_records(market, world):
    from harness.market import write_ledger as more

    m, e = market, market.entries
    folder = world["ledger"].parent
    before = world["ledger"].read_text()
    more(folder, world["key"], [e[1], e[2], e[7]], requests=5, seed=2)  # the server goes on appending today's file
    assert world["ledger"].read_text().startswith(before)
    r = _report(m, "bob", world["ledger"], world["server"], "later.jsonl")
    assert r.status_code == 200, r.text
    assert r.json()["records"] == [40, 44] and r.json()["requests"] == 5


def test_the_earnings_ledger_refuses_updates_and_deletes(market, world):
    from sqlalchemy import text
    from sqlalchemy.exc import DatabaseError

    with market.app.state.db.engine.connect() as c:
        for statement in ("UPDATE ledger_lines SET amount_micros = 0", "DELETE FROM ledger_lines"):
            with pytest.raises(DatabaseError, match="append-only"):
                c.execute(text(statement))
            c.rollback()


def test_bad_server_keys_and_reports_are_4xx_naming_the_field(market, world):
    m = market
    r = m.client.post("/v1/market/servers", headers=m.h("bob"), json={"name": "x", "public_key": "-----BEGIN nonsense"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "public_key"
    dup = m.client.post("/v1/market/servers", headers=m.h("carol"),
                        json={"name": "mine", "public_key": world["key"].with_suffix(".pub").read_text()})
    assert dup.status_code == 409
    training = m.client.post("/v1/files", headers=m.h("bob"), files={"file": ("t.jsonl", b'{"prompt": "a", "response": "b"}\n')},
                             data={"purpose": "fine-tune"}).json()["id"]
    r = m.client.post("/v1/market/usage", headers=m.h("bob"), json={"file": training, "server": world["server"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_purpose"
    job = m.client.post("/v1/fine_tuning/jobs", headers=m.h("bob"),
                        json={"model": "testbed-small", "training_file": _upload(m, "bob", world["ledger"])})
    assert job.status_code == 400 and job.json()["error"]["code"] == "wrong_purpose"


def test_earnings_count_the_last_calendar_months_only(market, world):
    from moeforge.service.db import now
    from moeforge.service.market.schema import LedgerLineRow

    m = market
    before = m.client.get("/v1/market/earnings", headers=m.h("alice")).json()
    with m.app.state.db.session() as s:  # a balanced transaction of long ago (the ledger takes inserts only)
        for account, micros in ((f"customer:{m.tenants['bob']}", -7_000_000), (f"tenant:{m.tenants['alice']}", 7_000_000)):
            s.add(LedgerLineRow(txn="txn-old", period="2019-01-05", kind="usage", account=account, amount_micros=micros,
                                entry_id=m.entries[1], origin_entry=m.entries[1], source="usage-old", created_at=now()))
    recent = m.client.get("/v1/market/earnings", params={"months": 12}, headers=m.h("alice")).json()
    assert recent["total_micros"] == before["total_micros"] and "2019-01" not in [x["period"] for x in recent["months"]]
    all_time = m.client.get("/v1/market/earnings", params={"months": 120}, headers=m.h("alice")).json()
    assert all_time["total_micros"] == before["total_micros"] + 7_000_000

"""`moeforge market …` over real HTTP to the Centre's app (uvicorn on loopback), as a seller and a buyer would use it."""

import csv
import json
import threading

import pytest
from typer.testing import CliRunner

from harness.centre import wait_for
from harness.market import write_ledger
from moeforge.cli.main import app

from tests.service.market.conftest import market  # noqa: F401  (the synthetic market fixture)


@pytest.fixture(scope="module")
def url(market):
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(market.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_for(lambda: srv.started, 60, "the Centre's app on loopback", poll_s=0.05)
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    srv.should_exit = True
    thread.join(timeout=30)


def run(url, market, tenant, *args):
    result = CliRunner().invoke(app, ["market", *args, "--url", url, "--key", market.keys[tenant]])
    return result


def test_a_seller_lists_a_buyer_finds_requests_and_pays_through_usage_and_the_seller_reads_earnings(url, market, tmp_path):
    m, e = market, market.entries
    listed = run(url, m, "alice", "list", e[5], "--title", "Ward rota planning", "--tag", "healthcare", "--price", "per_mtok:1.5",
                 "--visibility", "gated", "--json")
    assert listed.exit_code == 0, listed.output
    listing = json.loads(listed.output)
    assert listing["price"] == {"kind": "per_mtok", "micros": 1_500_000, "text": "1.500000 per million routed tokens"}
    found = run(url, m, "bob", "search", "ward rota", "--json")
    assert [x["id"] for x in json.loads(found.output)["data"]] == [listing["id"]]
    shown = run(url, m, "bob", "show", listing["id"])
    assert shown.exit_code == 0 and "Ward rota planning" in shown.output and "contributor" in shown.output
    asked = run(url, m, "bob", "request", listing["id"], "--note", "rota planning pilot", "--json")
    grant = json.loads(asked.output)
    assert grant["status"] == "pending"
    pending = run(url, m, "alice", "grants", "--owner", "--status", "pending", "--json")
    assert [g["id"] for g in json.loads(pending.output)["data"]] == [grant["id"]]
    approved = run(url, m, "alice", "grant", grant["id"])
    assert approved.exit_code == 0 and "active" in approved.output
    key = tmp_path / "usage.pem"
    ledger, _ = write_ledger(tmp_path / "ledger", key, [e[5]], requests=20, seed=3, model="ward")
    used = run(url, m, "bob", "usage", str(ledger), "--public-key", str(key.with_suffix(".pub")), "--json")
    assert used.exit_code == 0, used.output
    [report] = json.loads(used.output)
    again = run(url, m, "bob", "usage", str(ledger.parent), "--public-key", str(key.with_suffix(".pub")))
    assert again.exit_code == 0 and "nothing new" in again.output, again.output  # a scheduled hand-in of the folder
    write_ledger(tmp_path / "ledger", key, [e[5]], requests=2, seed=4, model="ward")
    later = run(url, m, "bob", "usage", str(ledger.parent), "--public-key", str(key.with_suffix(".pub")), "--json")
    assert [r["records"] for r in json.loads(later.output)] == [[20, 21]], later.output
    assert report["lines"][0]["status"] == "priced" and report["charged_micros"] > 0
    statement = tmp_path / "statement.csv"
    earned = run(url, m, "alice", "earnings", "--statement", str(statement), "--json")
    assert earned.exit_code == 0, earned.output
    total = json.loads(earned.output)["total_micros"]
    with open(statement) as f:
        assert sum(int(row["micros"]) for row in csv.DictReader(f)) == total > 0
    revoked = run(url, m, "alice", "revoke", grant["id"])
    assert revoked.exit_code == 0 and "revoked" in revoked.output


def test_bad_input_is_one_red_line_and_a_non_zero_exit(url, market, tmp_path):
    m = market
    for args, needle in [(("list", m.entries[5], "--title", "x", "--price", "per_mtok:-1"), "--price"),
                         (("list", m.entries[5], "--title", "x", "--price", "cheap"), "--price"),
                         (("search", "--max-price", "lots"), "--max-price"),
                         (("show", "lst-nope"), "no listing"),
                         (("list", m.entries[0], "--title", "x", "--licence-file", str(tmp_path / "none.txt"),
                           "--licence-name", "LicenseRef-x"), "no such file"),
                         (("usage", str(tmp_path / "none.jsonl"), "--public-key", str(tmp_path / "none.pub")), "LEDGER"),
                         (("usage", str(tmp_path), "--public-key", str(tmp_path / "none.pub")), "no usage-"),
                         (("earnings", "--statement", str(tmp_path / "s.txt")), ".csv")]:
        result = run(url, m, "bob", *args)
        assert result.exit_code != 0 and needle in result.output, (args, result.output)
        assert "Traceback" not in result.output

"""The Centre's marketplace pages in a real browser (Playwright driving Debian's chromium): search, a listing, grants, earnings.

A real Centre (`moeforge service up`) is seeded from this process with synthetic library entries
owned by a seller tenant, who lists two of them over HTTP (one public per million tokens, one
gated). A buyer then searches, opens and requests them in the page; the seller approves in the
page; the buyer's server reports usage over HTTP; and the seller's earnings page must show
exactly what the API says, down to the CSV statement's micros.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.centre import centre, wait_for
from tests.service.test_browser import _chromium, artifacts  # noqa: F401 (artifacts is a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTRIES = 5
PUBLIC_TITLE = "Invoice reader experts"
GATED_TITLE = "Contract clause experts"
GATED_LICENCE = {"custom": {"name": "LicenseRef-seller-research", "text": "Research use only; no resale, no hosting for others.",
                            "commercial_use": False, "redistribution": False, "attribution": True,
                            "field_of_use": "legal research"}}


@dataclass
class Seeded:
    url: str
    keys: dict[str, str]  # tenant name → admin key
    seller_id: str
    entries: list[str]  # the seller's, oldest first
    public: dict  # the listings as the API answered their creation
    gated: dict
    sample: str  # the buyer's processed fine-tune file

    def h(self, tenant: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


def _base_profile(checkpoint: Path):
    """The base's routing of general text, which synthetic entries' profiles are drawn around."""
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.profile.stats import ProfileConfig, profile_records

    model, tokenizer = load_checkpoint(checkpoint)
    profile = profile_records(model, tokenizer, load_corpus("wikitext", "train"),
                              ProfileConfig(tokens=2048, seq_len=64, saliency=False), base_fingerprint=model_fingerprint(model))
    return model, profile


def _upload(url: str, headers: dict, name: str, data: bytes, purpose: str) -> dict:
    import httpx

    r = httpx.post(f"{url}/v1/files", headers=headers, files={"file": (name, data)}, data={"purpose": purpose}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def chromium() -> str:
    """Found before the Centre starts: a missing browser skips (or, with MOEFORGE_REQUIRE_BROWSER=1, fails) at once."""
    return _chromium()


@pytest.fixture(scope="module")
def seeded(chromium, small_testbed, maths_file, tmp_path_factory):
    import httpx

    from harness.market import own, synthetic_entries
    from moeforge.service.auth import tenant_id_of
    from moeforge.service.db import Database, centre_library
    from moeforge.service.market.terms import MICROS

    _, checkpoint = small_testbed
    c = centre(tmp_path_factory.mktemp("market-centre"), checkpoint, miners=1, validators=1).start()
    try:
        keys = {"seller": c.new_tenant("seller"), "buyer": c.new_tenant("buyer")}
        db = Database(c.database)
        model, profile = _base_profile(checkpoint)
        entries = synthetic_entries(centre_library(db, c.env["MOEFORGE_LIBRARY_STORE"]), model, profile, ENTRIES, seed=3)
        seller_id = tenant_id_of(db, "seller")
        for entry in entries:
            own(db, entry, seller_id)
        library = centre_library(db, c.env["MOEFORGE_LIBRARY_STORE"])
        child = next((e for e in entries if library.manifest(e).parents), None)
        assert child is not None, "seed 3 drew no entry with parents: pick a seed whose lineage has an edge"
        parent = library.manifest(child).parents[0].entry
        seller = {"Authorization": f"Bearer {keys['seller']}"}

        def list_entry(body: dict) -> dict:
            r = httpx.post(f"{c.url}/v1/market/listings", headers=seller, json=body, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()

        gated = list_entry({"model": parent, "title": GATED_TITLE, "description": "Clauses of commercial contracts.",
                            "tags": ["law", "contracts"], "licence": GATED_LICENCE, "visibility": "gated",
                            "price": {"kind": "per_mtok", "micros": 3 * MICROS // 2}})
        public = list_entry({"model": child, "title": PUBLIC_TITLE, "description": "Reads supplier invoices.",
                             "tags": ["finance", "invoices"], "price": {"kind": "per_mtok", "micros": 2 * MICROS}})
        buyer = {"Authorization": f"Bearer {keys['buyer']}"}
        sample = _upload(c.url, buyer, "maths.jsonl", maths_file.read_bytes(), "fine-tune")["id"]

        def processed():
            f = httpx.get(f"{c.url}/v1/files/{sample}", headers=buyer, timeout=60).json()
            assert f["status"] != "error", f
            return f["status"] == "processed"

        wait_for(processed, 60, "the buyer's sample file to be validated")
        yield Seeded(c.url, keys, seller_id, entries, public, gated, sample)
    finally:
        c.stop()


@pytest.fixture
def page(chromium, seeded):
    from harness.browser import browser_page

    with browser_page(chromium) as page:
        yield page


def _sign_in(page, key: str) -> None:
    from playwright.sync_api import expect

    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#market-search-status")).to_contain_text("listing")  # the first search has answered


def _report_usage(s: Seeded, folder: Path) -> dict:
    """The buyer's server serves both listed entries for a day; its signed ledger is reported over HTTP."""
    import httpx

    from harness.market import write_ledger

    buyer = s.h("buyer")
    key = folder / "usage.pem"
    ledger, _ = write_ledger(folder / "day", key, [s.public["model"], s.gated["model"]], requests=20, seed=4)
    server = httpx.post(f"{s.url}/v1/market/servers", headers=buyer, timeout=60,
                        json={"name": "buyer-vpc", "public_key": key.with_suffix(".pub").read_text()})
    assert server.status_code == 200, server.text
    file = _upload(s.url, buyer, ledger.name, ledger.read_bytes(), "usage")
    r = httpx.post(f"{s.url}/v1/market/usage", headers=buyer, json={"file": file["id"], "server": server.json()["id"]}, timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["status"] == "accepted" and report["charged_micros"] > 0, report
    assert {ln["entry"] for ln in report["lines"] if ln["status"] == "priced"} == {s.public["model"], s.gated["model"]}
    return report


def test_a_buyer_finds_and_requests_listings_the_seller_approves_and_sees_its_earnings_exactly(seeded, page, artifacts,
                                                                                                 tmp_path):
    import httpx
    from playwright.sync_api import expect

    from moeforge.service.market.terms import units

    s = seeded
    shots = []

    def shot(name, selector):
        path = artifacts / f"market-{len(shots) + 1:02d}-{name}.png"
        page.locator(selector).screenshot(path=str(path))
        shots.append(path)

    page.goto(s.url + "/")
    _sign_in(page, s.keys["buyer"])
    results = page.locator("#market-results tbody tr")

    # the page's money arithmetic agrees with the API's (terms.units), exactly, up to the largest integer JSON carries exactly
    for micros in (0, 1, 999_999, 1_000_000, 12_345_678, 2**53 - 1):
        assert page.evaluate(f"units({micros})") == units(micros)
        assert page.evaluate(f"toMicros({units(micros)!r})") == micros
    assert page.evaluate("toMicros('1.2345678')") is None and page.evaluate("toMicros('-1')") is None

    # browse: text search finds the public listing by its title, and says where it matched
    page.get_by_label("Search text", exact=False).fill("invoice")
    page.locator("#market-search-button").click()
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text(PUBLIC_TITLE)
    expect(results.first.locator("td.why")).to_contain_text("found in the title")
    # a filter the API refuses nothing for, but matches nothing: the empty state, not an error
    page.locator("#market-price").select_option("per_export")
    page.locator("#market-search-button").click()
    expect(page.locator("#market-results-empty")).to_be_visible()
    expect(page.locator("#market-search-error")).to_be_empty()

    # "find experts for my data": the buyer's own file orders every listing by routing match, and says so
    page.get_by_label("Search text", exact=False).fill("")
    page.locator("#market-price").select_option("")
    page.get_by_label("Find experts for my data").select_option(s.sample)
    page.locator("#market-search-button").click()
    expect(results).to_have_count(2, timeout=60_000)
    expect(results.first.locator("td.why")).to_contain_text("routing similarity to your data")
    expect(page.locator("#market-search-error")).to_be_empty()
    shot("search", "#market-browse")

    # the public listing's detail: terms, metrics and how measured, heatmap, lineage linking the listed parent, contributors
    detail = httpx.get(f"{s.url}/v1/market/listings/{s.public['id']}", headers=s.h("buyer"), timeout=60).json()
    page.locator(f"#market-results tr[data-listing='{s.public['id']}'] button.open-listing").click()
    expect(page.locator("#listing-heading")).to_contain_text(PUBLIC_TITLE)
    expect(page.locator("#listing-summary")).to_contain_text("2.000000 per million routed tokens")
    expect(page.locator("#listing-licence")).to_contain_text(detail["licence_id"])
    expect(page.locator("#listing-metrics-table tr[data-metric='domain_loss']")).to_contain_text("held-out loss")
    expect(page.locator("#listing-heatmap")).to_be_visible()
    assert page.evaluate("document.getElementById('listing-heatmap').naturalWidth") > 0
    parent_link = page.locator(f"#listing-lineage a.listing-link[data-listing='{s.gated['id']}']")
    expect(parent_link).to_be_visible()
    expect(page.locator("#listing-lineage li.parent")).to_have_count(len(detail["lineage"]))
    expect(page.locator("#listing-contributors-table tbody tr")).to_have_count(len(detail["contributors"]))
    expect(page.locator("#listing-contributors")).to_contain_text(detail["contributors"][0]["id"])
    expect(page.locator("#listing-card")).to_contain_text("license:")
    assert page.locator("#listing-card *").count() == 0  # the markdown card is text, never parsed into elements
    expect(page.locator("#listing-access")).to_have_attribute("data-access", "none")
    expect(page.locator("#listing-error")).to_be_empty()
    shot("listing", "#listing-detail")

    # a public listing grants access at once
    page.get_by_role("button", name="Request access").click()
    expect(page.locator("#listing-access")).to_have_attribute("data-access", "active")
    expect(page.locator("#access-form")).to_be_hidden()
    expect(page.locator(f"#market-results tr[data-listing='{s.public['id']}'] td.access")).to_have_text("active")

    # the lineage link opens the gated parent: its own licence's terms; without a note the API's refusal shows by the field
    parent_link.click()
    expect(page.locator("#listing-heading")).to_contain_text(GATED_TITLE)
    expect(page.locator("#listing-licence")).to_contain_text("LicenseRef-seller-research")
    expect(page.locator("#listing-licence dt:text-is('Commercial use') + dd")).to_have_text("no")
    expect(page.locator("#listing-licence dt:text-is('Field of use') + dd")).to_have_text("legal research")
    page.get_by_role("button", name="Request access").click()
    expect(page.locator("#access-note-error")).to_contain_text("gated")
    expect(page.locator("#access-note")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Note to the owner", exact=False).fill("Benchmarking clause extraction for our legal team")
    page.get_by_role("button", name="Request access").click()
    expect(page.locator("#listing-access")).to_have_attribute("data-access", "pending")
    expect(page.locator("#access-note-error")).to_be_empty()
    shot("gated-pending", "#listing-detail")

    # the seller, in the same tab: nothing of the buyer's view is left; the pending request waits in my listings
    page.get_by_role("button", name="Sign out").click()
    _sign_in(page, s.keys["seller"])
    expect(page.locator("#listing-detail")).to_be_hidden()
    expect(page.locator("#mine-table tbody tr")).to_have_count(2)
    pending = page.locator("#grants-pending tbody tr")
    expect(pending).to_have_count(1)
    expect(pending.first).to_contain_text("buyer")
    expect(pending.first).to_contain_text("Benchmarking clause extraction")
    expect(page.locator("#grants-active tbody tr")).to_have_count(1)  # the public grant

    # list a third model through the form: the API's refusal of a tag, then an amount with 7 decimals, land by their
    # fields; then it lists (its title is markup, shown as text)
    expect(page.locator("#list-model option")).to_have_count(ENTRIES - 2)
    page.locator("#list-title").fill("<b>Retail</b> shelf experts")
    page.locator("#list-tags").fill("retail, Not A Tag")
    page.get_by_role("button", name="List model").click()
    expect(page.locator("#list-tags-error")).to_contain_text("tags")
    expect(page.locator("#list-tags")).to_have_attribute("aria-invalid", "true")
    page.locator("#list-tags").fill("retail, shelves")
    page.locator("#list-price-kind").select_option("per_export")
    page.get_by_label("Amount in units", exact=False).fill("1.2345678")
    page.get_by_role("button", name="List model").click()
    expect(page.locator("#list-tags-error")).to_be_empty()
    expect(page.locator("#list-price-amount-error")).to_contain_text("at most 6 decimals")
    page.get_by_label("Amount in units", exact=False).fill("0.25")
    page.get_by_role("button", name="List model").click()
    expect(page.locator("#list-form-status")).to_contain_text("0.250000 per export")
    expect(page.locator("#list-form-error")).to_be_empty()
    expect(page.locator("#mine-table tbody tr")).to_have_count(3)
    expect(page.locator("#mine-table tbody")).to_contain_text("<b>Retail</b> shelf experts")
    assert page.locator("#mine-table b").count() == 0
    shot("my-listings", "#market-mine")

    # approve the request: it moves to the active grants, and the buyer holds it
    pending.first.get_by_role("button", name="Approve").click()
    expect(pending).to_have_count(0)
    expect(page.locator("#grants-active tbody tr")).to_have_count(2)
    expect(page.locator("#grants-error")).to_be_empty()
    held = httpx.get(f"{s.url}/v1/market/grants", headers=s.h("buyer"), timeout=60).json()["data"]
    assert {g["listing"]: g["status"] for g in held} == {s.public["id"]: "active", s.gated["id"]: "active"}
    shot("grants", "#market-mine")

    # the buyer's usage, reported over HTTP, pays the seller; its earnings page agrees with the API to the micro
    report = _report_usage(s, tmp_path)
    earned = httpx.get(f"{s.url}/v1/market/earnings", headers=s.h("seller"), timeout=60).json()
    total = earned["total_micros"]
    assert total > 0
    page.get_by_role("button", name="Refresh earnings").click()
    expect(page.locator("#earnings-total")).to_have_attribute("data-micros", str(total))
    expect(page.locator("#earnings-total")).to_have_text(units(total))
    bar = page.locator(f"#earnings-bars rect.bar[data-period='{report['period']}']")  # within one month: a bar per day
    expect(bar).to_have_count(1)
    assert int(bar.get_attribute("data-micros")) == sum(d["micros"] for d in earned["days"] if d["period"] == report["period"])
    expect(page.locator("#earnings-entries tbody")).to_contain_text(PUBLIC_TITLE)
    expect(page.locator("#earnings-error")).to_be_empty()
    page.get_by_label("Statement month").select_option(report["period"][:7])
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV statement").click()
    saved = tmp_path / "statement.csv"
    info.value.save_as(saved)
    assert info.value.suggested_filename == f"statements-{report['period'][:7]}.csv"
    rows = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert rows and {r["payee"] for r in rows} == {f"tenant:{s.seller_id}"}
    assert sum(int(r["micros"]) for r in rows) == total
    expect(page.locator("#statement-period-error")).to_be_empty()
    shot("earnings", "#market-earnings")

    # revoking the gated grant ends it for the buyer
    page.locator(f"#grants-active tr:has-text('{GATED_TITLE}')").get_by_role("button", name="Revoke").click()
    expect(page.locator("#grants-active tbody tr")).to_have_count(1)
    held = httpx.get(f"{s.url}/v1/market/grants", headers=s.h("buyer"), timeout=60).json()["data"]
    assert {g["listing"]: g["status"] for g in held}[s.gated["id"]] == "revoked"

    assert page.errors == [], page.errors
    assert len(shots) == 6 and all(p.is_file() and p.stat().st_size > 1000 for p in shots), shots

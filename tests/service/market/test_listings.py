"""Listings, search and grants over the real API (routes/market.py), on a synthetic market."""

import pytest

from moeforge.service.market.terms import MICROS


def _list(m, tenant, entry, **fields):
    body = {"model": entry, "title": fields.pop("title", f"experts {entry[:6]}"), **fields}
    return m.client.post("/v1/market/listings", json=body, headers=m.h(tenant))


@pytest.fixture(scope="module")
def listed(market):
    """alice lists entries 0-3 (public free, public per-token, gated, private); the subnet owner lists entry 6."""
    m, e = market, market.entries
    out = {
        "free": _list(m, "alice", e[0], title="Maths word problems", tags=["math", "gsm8k"], description="Arithmetic reasoning"),
        "paid": _list(m, "alice", e[1], title="Clinical notes", price={"kind": "per_mtok", "micros": 2 * MICROS}),
        "gated": _list(m, "alice", e[2], title="Contract law", visibility="gated",
                       licence={"custom": {"name": "LicenseRef-alice-research", "text": "Research use only, no resale. " * 3,
                                           "commercial_use": False, "redistribution": False, "attribution": True,
                                           "field_of_use": "legal research"}}),
        "private": _list(m, "alice", e[3], title="Draft", visibility="private"),
        "shared": _list(m, "default", e[6], title="Shared library set", price={"kind": "per_export", "micros": 5 * MICROS}),
    }
    for name, r in out.items():
        assert r.status_code == 200, (name, r.text)
    return {name: r.json() for name, r in out.items()}


def test_an_owner_lists_its_entries_and_nobody_lists_what_they_do_not_own(market, listed):
    m = market
    assert listed["free"]["owned_by"] == "you" and listed["free"]["licence_id"] == m.app.state.library.manifest(m.entries[0]).license
    not_yours = _list(m, "bob", m.entries[4])
    assert not_yours.status_code == 404 and not_yours.json()["error"]["param"] == "model"
    shared = _list(m, "bob", m.entries[7])
    assert shared.status_code == 403 and "subnet owner" in shared.json()["error"]["message"]
    again = _list(m, "alice", m.entries[0])
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_listed"
    bad = _list(m, "alice", m.entries[5], licence={"spdx": "WTFPL"}, tags=["Not A Tag"])
    assert bad.status_code == 400 and bad.json()["error"]["param"] in ("licence.spdx", "tags")
    free_with_price = _list(m, "alice", m.entries[5], price={"kind": "free", "micros": 3})
    assert free_with_price.status_code == 400


def test_search_filters_and_orders_and_a_private_listing_is_its_owners_alone(market, listed):
    m = market

    def ids(tenant, **params):
        r = m.client.get("/v1/market/listings", params=params, headers=m.h(tenant))
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["data"]]

    assert listed["private"]["id"] in ids("alice") and listed["private"]["id"] not in ids("bob")
    assert m.client.get(f"/v1/market/listings/{listed['private']['id']}", headers=m.h("bob")).status_code == 404
    assert ids("bob", price="per_mtok") == [listed["paid"]["id"]]
    assert ids("bob", licence="LicenseRef-alice-research") == [listed["gated"]["id"]]
    assert ids("bob", q="gsm8k")[0] == listed["free"]["id"]
    assert ids("bob", max_price_micros=0) == sorted(ids("bob", price="free"), key=ids("bob", price="free").index)
    domain = listed["paid"]["domain"]
    assert all(x["domain"] == domain for x in m.client.get("/v1/market/listings", params={"domain": domain},
                                                           headers=m.h("bob")).json()["data"])
    gains = [x["metrics"]["domain_gain"] for x in m.client.get("/v1/market/listings", params={"sort": "gain"},
                                                                headers=m.h("bob")).json()["data"]]
    assert gains == sorted(gains, reverse=True)
    mine = ids("alice", mine="true")
    assert set(mine) == {listed[k]["id"] for k in ("free", "paid", "gated", "private")}
    bad = m.client.get("/v1/market/listings", params={"sort": "cheapest"}, headers=m.h("bob"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "sort"


def test_a_listing_shows_its_card_metrics_with_how_measured_lineage_contributors_and_heatmap(market, listed):
    m = market
    manifest = m.app.state.library.manifest(m.entries[1])
    detail = m.client.get(f"/v1/market/listings/{listed['paid']['id']}", headers=m.h("bob")).json()
    assert detail["card"].startswith("---") and "license:" in detail["card"]
    assert detail["metrics"]["domain_loss_after"] == manifest.metrics.domain_loss_after and "held-out" in detail["metrics"]["measured"]["domain_loss"]
    assert [c["id"] for c in detail["contributors"]] == [c.id for c in manifest.contributors]
    assert [p["entry"] for p in detail["lineage"]] == [p.entry for p in manifest.parents]
    png = m.client.get(detail["heatmap"], headers=m.h("bob"))
    assert png.status_code == 200, png.text
    assert png.content.startswith(b"\x89PNG")
    assert detail["price"]["text"] == "2.000000 per million routed tokens"


def test_public_access_is_immediate_gated_waits_for_the_owner_and_licence_changes_wait_for_no_active_grants(market, listed):
    m = market
    public = m.client.post(f"/v1/market/listings/{listed['paid']['id']}/access", json={}, headers=m.h("bob")).json()
    assert public["status"] == "active" and public["terms"]["price"] == {"kind": "per_mtok", "micros": 2 * MICROS}
    no_note = m.client.post(f"/v1/market/listings/{listed['gated']['id']}/access", json={}, headers=m.h("bob"))
    assert no_note.status_code == 400 and no_note.json()["error"]["param"] == "note"
    pending = m.client.post(f"/v1/market/listings/{listed['gated']['id']}/access", json={"note": "case law study"},
                            headers=m.h("bob")).json()
    assert pending["status"] == "pending"
    assert m.client.post(f"/v1/market/grants/{pending['id']}/approve", headers=m.h("bob")).status_code == 404  # not bob's to decide
    waiting = m.client.get("/v1/market/grants", params={"role": "owner", "status": "pending"}, headers=m.h("alice")).json()["data"]
    assert [g["id"] for g in waiting] == [pending["id"]] and waiting[0]["tenant"] == "bob"
    approved = m.client.post(f"/v1/market/grants/{pending['id']}/approve", headers=m.h("alice")).json()
    assert approved["status"] == "active"
    change = m.client.patch(f"/v1/market/listings/{listed['gated']['id']}", json={"licence": {"spdx": "MIT"}}, headers=m.h("alice"))
    assert change.status_code == 409 and change.json()["error"]["code"] == "licence_has_grants"
    assert m.client.patch(f"/v1/market/listings/{listed['gated']['id']}", json={"licence": {"spdx": "MIT"}},
                          headers=m.h("bob")).status_code == 403
    assert m.client.post(f"/v1/market/grants/{pending['id']}/revoke", headers=m.h("alice")).json()["status"] == "revoked"
    again = m.client.post(f"/v1/market/grants/{pending['id']}/revoke", headers=m.h("alice"))
    assert again.status_code == 409
    changed = m.client.patch(f"/v1/market/listings/{listed['gated']['id']}", json={"licence": {"spdx": "MIT"}}, headers=m.h("alice"))
    assert changed.status_code == 200 and changed.json()["licence_id"] == "MIT"
    price = m.client.patch(f"/v1/market/listings/{listed['paid']['id']}", json={"price": {"kind": "per_mtok", "micros": 9 * MICROS}},
                           headers=m.h("alice"))
    assert price.status_code == 200
    held = m.client.get("/v1/market/grants", headers=m.h("bob")).json()["data"]
    assert next(g for g in held if g["id"] == public["id"])["terms"]["price"]["micros"] == 2 * MICROS  # the grant keeps its terms


def test_find_experts_for_my_data_orders_listings_by_routing_match_to_a_sample(market, listed, data_file):
    m = market
    r = m.client.get("/v1/market/listings", params={"sample": data_file}, headers=m.h("bob"))
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    scores = [x["relevance"]["score"] for x in data]
    assert scores and all(s is not None for s in scores) and scores == sorted(scores, reverse=True)
    assert "routing similarity" in data[0]["relevance"]["why"]
    assert m.client.get("/v1/market/listings", params={"sample": data_file}, headers=m.h("bob")).json()["data"] == data
    other = m.client.get("/v1/market/listings", params={"sample": data_file}, headers=m.h("carol"))
    assert other.status_code == 404  # bob's file is not carol's to search with


def test_search_text_is_text_not_a_pattern_and_bad_grant_filters_are_refused(market, listed):
    m = market
    for q in ("%", "_", ",", '"'):
        r = m.client.get("/v1/market/listings", params={"q": q}, headers=m.h("bob"))
        assert r.status_code == 200 and r.json()["data"] == [], (q, r.json()["data"][:1])
    tagged = m.client.get("/v1/market/listings", params={"q": "gsm8k", "sort": "newest"}, headers=m.h("bob")).json()["data"]
    assert [x["id"] for x in tagged] == [listed["free"]["id"]]
    bad = m.client.get("/v1/market/grants", params={"status": "aproved"}, headers=m.h("bob"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"

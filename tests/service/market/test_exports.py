"""Exports of listed models: only under an active grant; the bundle carries the licence and the grant; revoking stops
new exports while bundles made already keep their terms (and their usage stays licensed)."""

import io
import json
import tarfile
from datetime import UTC, datetime

import pytest

from moeforge.service.market.terms import MICROS

pytestmark = pytest.mark.slow


def test_a_listed_model_is_exported_only_under_a_grant_with_its_licence_and_grant_in_the_bundle(market, worker, data_file):
    from moeforge.service.market.ledger import reconcile
    from moeforge.service.market.usage import classify

    m, e = market, market.entries
    listing = m.client.post("/v1/market/listings", headers=m.h("alice"), json={
        "model": e[4], "title": "flat", "price": {"kind": "per_export", "micros": 5 * MICROS},
        "licence": {"custom": {"name": "LicenseRef-flat", "text": "Use inside your own organisation only. " * 2,
                               "commercial_use": True, "redistribution": False, "attribution": True}}}).json()
    body = {"models": [e[4]], "file": data_file}
    refused = m.client.post("/v1/exports", headers=m.h("bob"), json=body)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "no_grant"
    assert m.client.post("/v1/exports", headers=m.h("bob"), json={"models": [e[3]], "file": data_file}).status_code == 404
    grant = m.client.post(f"/v1/market/listings/{listing['id']}/access", headers=m.h("bob"), json={}).json()
    export = m.client.post("/v1/exports", headers=m.h("bob"), json=body).json()
    assert worker.export_next()
    done = m.client.get(f"/v1/exports/{export['id']}", headers=m.h("bob")).json()
    assert done["status"] == "succeeded", done["error"]
    tar = tarfile.open(fileobj=io.BytesIO(m.client.get(done["download"], headers=m.h("bob")).content))
    names = tar.getnames()
    licence = next(n for n in names if n.endswith(f"entry-{e[4][:12]}-LICENSE.txt"))
    assert "LicenseRef-flat" in tar.extractfile(licence).read().decode()
    grants = json.loads(tar.extractfile(next(n for n in names if n.endswith("GRANTS.json"))).read())
    assert grants["grants"][e[4]]["id"] == grant["id"]
    sums = tar.extractfile(next(n for n in names if n.endswith("SHA256SUMS"))).read().decode()
    assert "GRANTS.json" in sums  # covered by the bundle's checksums like every other file
    with m.app.state.db.session() as s:
        rec = reconcile(s, datetime.now(UTC).strftime("%Y-%m"))
        assert rec.exact and rec.revenue >= 5 * MICROS
    held = m.client.get("/v1/market/grants", headers=m.h("bob")).json()["data"]
    assert next(g for g in held if g["id"] == grant["id"])["exported_at"] is not None

    queued = m.client.post("/v1/exports", headers=m.h("bob"), json=body).json()
    assert m.client.post(f"/v1/market/grants/{grant['id']}/revoke", headers=m.h("alice")).json()["status"] == "revoked"
    assert worker.export_next()  # the export queued before the revocation is not made after it
    failed = m.client.get(f"/v1/exports/{queued['id']}", headers=m.h("bob")).json()
    assert failed["status"] == "failed" and "no longer exportable" in failed["error"] and "active grant" in failed["error"]
    again = m.client.post("/v1/exports", headers=m.h("bob"), json=body)
    assert again.status_code == 403
    with m.app.state.db.session() as s:  # the bundle bob has keeps its terms: its usage is still licensed
        status, kept = classify(s, m.app.state.library, m.tenants["bob"], e[4])
        assert kept is not None and kept.id == grant["id"] and status == "free"  # a flat price was paid at export

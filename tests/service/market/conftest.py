"""A Centre app in-process (FastAPI's TestClient) on the small testbed, with a synthetic market of library entries."""

import json
import os
from dataclasses import dataclass

import pytest

ENTRIES = 8


@dataclass
class Market:
    client: object  # fastapi.testclient.TestClient
    app: object
    settings: object
    entries: list[str]  # synthetic library entries, oldest first (later ones may have earlier ones as parents)
    keys: dict[str, str]  # tenant name → admin key
    tenants: dict[str, str]  # tenant name → id

    def h(self, tenant: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}


@pytest.fixture(scope="module")
def market(small_testbed, tmp_path_factory):
    from fastapi.testclient import TestClient

    from harness.market import own, synthetic_entries
    from moeforge.cli.inputs import load_checkpoint
    from moeforge.data.corpora import load_corpus
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.profile.stats import ProfileConfig, profile_records
    from moeforge.service.app import create_app
    from moeforge.service.auth import create_tenant
    from moeforge.service.settings import ServiceSettings

    _, base = small_testbed
    root = tmp_path_factory.mktemp("market")
    settings = ServiceSettings(home=root / "home", database=f"sqlite:///{root}/catalog.sqlite", store=str(root / "store"),
                               library_store=str(root / "library"), bases={"testbed-small": str(base)})
    app = create_app(settings)
    model, tokenizer = load_checkpoint(base)
    background = profile_records(model, tokenizer, load_corpus("wikitext", "train"),
                                 ProfileConfig(tokens=2048, seq_len=64, saliency=False), base_fingerprint=model_fingerprint(model))
    entries = synthetic_entries(app.state.library, model, background, ENTRIES, seed=7)
    keys, tenants = {}, {}
    for name in ("default", "alice", "bob", "carol"):
        tenants[name], keys[name] = create_tenant(app.state.db, name)
    for entry in entries[:6]:  # alice's jobs made the first six; the last two are the shared library's
        own(app.state.db, entry, tenants["alice"])
    with TestClient(app) as client:
        yield Market(client, app, settings, entries, keys, tenants)


@pytest.fixture(scope="module")
def worker(market):
    from moeforge.service.worker import Worker

    saved = {k: os.environ.get(k) for k in ("MOEFORGE_CATALOG", "MOEFORGE_LIBRARY_STORE")}
    yield Worker(market.settings)
    for k, v in saved.items():  # the worker points the roles it starts at the Centre's library through the environment
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def data_file(market, worker):
    from moeforge.data.corpora import load_corpus

    text = "".join(json.dumps({"question": r.prompt, "answer": r.response}) + "\n" for r in load_corpus("math", "train")[:200])
    r = market.client.post("/v1/files", headers=market.h("bob"), files={"file": ("maths.jsonl", text.encode())},
                           data={"purpose": "fine-tune"})
    assert worker.validate_next_file()
    f = market.client.get(f"/v1/files/{r.json()['id']}", headers=market.h("bob")).json()
    assert f["status"] == "processed", f
    return f["id"]

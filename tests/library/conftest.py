"""Catalog URLs for the library tests: every catalog test runs on SQLite and on a real PostgreSQL server."""

import os
from dataclasses import dataclass

import pytest

from harness import postgres


@pytest.fixture(scope="session")
def postgres_server():
    if postgres.binaries() is None:
        if os.environ.get("MOEFORGE_REQUIRE_POSTGRES"):
            pytest.fail("MOEFORGE_REQUIRE_POSTGRES is set but PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = postgres.Server().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.sqlite"
    return request.getfixturevalue("postgres_server").new_database()


SEQ_LEN = 64  # the small testbed's context
DOMAIN_NAMES = ("math", "python", "medical")


@dataclass(frozen=True)
class Trained:
    """One domain's expert set on the small testbed, trained for real (ESFT on its selected experts)."""

    domain: str
    experts: object  # ExpertSlice (kind "experts")
    profile: object  # RoutingProfile of the domain's train split
    fingerprint: str


@pytest.fixture(scope="session")
def base_model(small_testbed):
    from moeforge.cli.inputs import load_checkpoint

    _, path = small_testbed
    return load_checkpoint(path)


@pytest.fixture(scope="session")
def trained(small_testbed, base_model):
    """math, python and medical expert sets: profile 8k tokens, select by ESFT-Token, train 60 steps."""
    from moeforge.data.corpora import load_corpus
    from moeforge.data.formatting import encode_records
    from moeforge.data.packing import pack_examples
    from moeforge.model.fingerprint import model_fingerprint
    from moeforge.model.slices import apply_slice, extract_slice, remove_delta
    from moeforge.profile.selection import select_experts
    from moeforge.profile.stats import ProfileConfig, profile_records
    from moeforge.train.config import TrainConfig
    from moeforge.train.esft import train_experts

    model, tokenizer = base_model
    fingerprint = model_fingerprint(model)
    out = {}
    for domain in DOMAIN_NAMES:
        records = load_corpus(domain, "train")
        profile = profile_records(model, tokenizer, records, ProfileConfig(tokens=8192, seq_len=SEQ_LEN, saliency=False),
                                  base_fingerprint=fingerprint)
        slots = select_experts(profile).slots()
        packed = pack_examples(encode_records(records[:2000], tokenizer), SEQ_LEN, tokenizer.pad_token_id)
        cfg = TrainConfig(lr=1e-2, steps=60, batch_size=8, warmup_steps=2, weight_decay=0.0, checkpoint_every=0)
        delta, _ = train_experts(model, slots, packed, cfg, base_fingerprint=fingerprint)
        apply_slice(model, delta)
        experts = extract_slice(model, slots, fingerprint)
        remove_delta(model, delta)
        out[domain] = Trained(domain, experts, profile, fingerprint)
    assert model_fingerprint(model) == fingerprint  # the session's base is left as it was
    return out


@pytest.fixture
def library(catalog_url, tmp_path):
    from moeforge.library.open import open_library

    return open_library(catalog_url, str(tmp_path / "library-store"))


def deposit_trained(library, base_model, t: Trained, **fields):
    from moeforge.library.deposit import deposit
    from moeforge.library.entry import Contributor

    model, _ = base_model
    defaults = dict(domain=t.domain, license="Apache-2.0", source="train", contributors=(Contributor(id="owner", role="owner", share=1.0),))
    return deposit(library, model, t.fingerprint, t.experts, profile_json=t.profile.model_dump_json().encode(), **{**defaults, **fields})

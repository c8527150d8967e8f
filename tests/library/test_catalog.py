"""The catalog on SQLite and on a real PostgreSQL server: idempotent indexing, concurrent deposits, retirement,
schema migrations, and clear errors for bad or unreachable URLs."""

import subprocess
import sys
import time

import pytest

from moeforge.errors import ArtifactNotFound, ConfigError, StoreError
from moeforge.library.catalog import current_revision, head_revision, open_catalog
from moeforge.library.entry import Contributor, EntryManifest, Parent, entry_id


def manifest(domain="math", experts="b" * 64, **fields) -> EntryManifest:
    return EntryManifest(base_model="testbed", base_fingerprint="a" * 64, model_type="deepseek_v2", slots=((0, 1), (1, 2)),
                         experts=experts, tensors={}, domain=domain, license="Apache-2.0", source="train", **fields)


def test_the_same_entry_indexed_twice_is_one_row_and_its_lineage_and_contributors_are_queryable(catalog_url):
    catalog = open_catalog(catalog_url)
    parent = manifest("math")
    child = manifest("champ", experts="c" * 64, parents=(Parent(entry=entry_id(parent), relation="warm_start", slots=2),),
                     contributors=(Contributor(id="5Grw", role="miner", share=0.25), Contributor(id="5Fhx", role="miner", share=0.75)))
    assert catalog.add(entry_id(parent), parent) is True
    assert catalog.add(entry_id(parent), parent) is False
    assert catalog.add(entry_id(child), child) is True
    assert [e.id for e in catalog.entries()] == [entry_id(child), entry_id(parent)]  # newest first
    assert catalog.parents(entry_id(child)) == [(entry_id(parent), "warm_start", 2)]
    assert catalog.children(entry_id(parent)) == [entry_id(child)]
    assert [e.domain for e in catalog.entries(text="CHA")] == ["champ"]
    assert catalog.resolve(entry_id(child)[:8]) == entry_id(child)


def test_a_retired_entry_leaves_search_but_stays_resolvable(catalog_url):
    catalog = open_catalog(catalog_url)
    m = manifest()
    catalog.add(entry_id(m), m)
    catalog.retire(entry_id(m), "superseded")
    assert catalog.entries() == []
    assert [e.retired_reason for e in catalog.entries(include_retired=True)] == ["superseded"]
    assert catalog.get(entry_id(m)).retired


def test_unknown_and_malformed_entry_ids_are_clear_errors(catalog_url):
    catalog = open_catalog(catalog_url)
    with pytest.raises(ArtifactNotFound, match="no library entry 'abcdef'"):
        catalog.resolve("abcdef")
    with pytest.raises(ConfigError, match="not an entry id"):
        catalog.resolve("xyz")


_DEPOSIT = """
import sys
from moeforge.library.catalog import open_catalog
from tests.library.test_catalog import manifest
from moeforge.library.entry import entry_id
catalog = open_catalog(sys.argv[1])
sys.stdin.readline()  # start together
new = [catalog.add(entry_id(m), m) for m in (manifest("math"), manifest(sys.argv[2], experts=sys.argv[3] * 64))]
print(" ".join(map(str, new)))
"""


def test_two_processes_depositing_at_once_leave_one_row_per_entry(catalog_url):
    open_catalog(catalog_url)  # created (and migrated) before the race
    procs = [subprocess.Popen([sys.executable, "-c", _DEPOSIT, catalog_url, f"law-{i}", "cd"[i]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    firsts = [out.split()[0] for out, _ in outs]
    assert sorted(firsts) == ["False", "True"]  # the shared entry was indexed by exactly one of them
    assert all(out.split()[1] == "True" for out, _ in outs)
    assert sorted(e.domain for e in open_catalog(catalog_url).entries()) == ["law-0", "law-1", "math"]


def test_an_older_schema_is_migrated_for_sqlite_and_refused_with_the_command_for_postgresql(catalog_url):
    from alembic import command
    from sqlalchemy import create_engine

    from moeforge.library.catalog import _config

    url = catalog_url if catalog_url.startswith("sqlite") else "postgresql+psycopg://" + catalog_url.split("://", 1)[1]
    engine = create_engine(url)
    with engine.begin() as connection:
        cfg = _config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")
    assert current_revision(engine) == "0001" != head_revision()
    if catalog_url.startswith("sqlite"):
        catalog = open_catalog(catalog_url)
    else:
        with pytest.raises(ConfigError, match="schema revision 0001.*moeforge library migrate --catalog"):
            open_catalog(catalog_url)
        catalog = open_catalog(catalog_url, migrate=True)
    assert current_revision(catalog.engine) == head_revision()
    m = manifest()
    catalog.add(entry_id(m), m)
    catalog.retire(entry_id(m), "the column 0002 added works")
    assert catalog.get(entry_id(m)).retired_reason == "the column 0002 added works"


def test_an_unreachable_postgresql_catalog_fails_fast_naming_it_without_its_password():
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot reach the catalog postgresql\+psycopg://me:\*\*\*@127.0.0.1:1/lib") as err:
        open_catalog("postgresql://me:secret@127.0.0.1:1/lib")
    assert "secret" not in str(err.value)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("url", ["sqlite://relative.db", "mysql://h/db", "catalog.sqlite"])
def test_a_catalog_url_of_another_form_is_refused_with_the_forms(url):
    with pytest.raises(ConfigError, match="sqlite:///"):
        open_catalog(url)

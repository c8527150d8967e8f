"""Catalog URLs for the library tests: every catalog test runs on SQLite and on a real PostgreSQL server."""

import os

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

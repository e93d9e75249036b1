"""The store contract on PostgreSQL, sync (psycopg pool) and native async (async pool).

One database per test run (``payonce_test_<random>``, dropped at the end), migrated once; each
test empties the tables through a privileged connection, so every store starts empty.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.testing import AsyncStoreContract, StoreContract
from tests.faults import pg_worker

POOL = 16  # the contract's concurrency checks race 16 callers


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh, migrated database for this module; yields its connection string."""
    name, conninfo = pg_worker.create_database()
    try:
        PostgresStore(conninfo).close()  # applies the migrations once
        yield conninfo
    finally:
        pg_worker.drop_database(name)


@pytest.fixture(scope="module")
def admin(database: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with pg_worker.admin_connection(database) as conn:
        yield conn


@pytest.fixture
def conninfo(database: str, admin: psycopg.Connection[tuple[object, ...]]) -> str:
    pg_worker.empty_tables(admin)
    return database


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, conninfo: str) -> Iterator[PostgresStore]:
        s = PostgresStore(conninfo, max_size=POOL)
        yield s
        s.close()


class TestAsyncPostgresStore(AsyncStoreContract):
    @pytest.fixture
    def astore(self, conninfo: str) -> AsyncPostgresStore:
        return AsyncPostgresStore(conninfo, max_size=POOL)

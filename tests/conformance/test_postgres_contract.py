"""The store contract on PostgreSQL, sync (psycopg pool) and native async (async pool).

One database per test run (``payonce_test_<random>``, dropped at the end), migrated once; each
test empties the tables through a privileged connection, so every store starts empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from payonce._model import NewRecord, Status
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.testing import AsyncStoreContract, StoreContract
from tests.faults import pg_worker

POOL = 16  # the contract's concurrency checks race 16 callers


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh, migrated database for this module; yields its connection string."""
    with pg_worker.migrated_database() as conninfo:  # the migrations, applied once
        yield conninfo


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

    @pytest.fixture
    def second(self, conninfo: str) -> Iterator[PostgresStore]:
        s = PostgresStore(conninfo, max_size=POOL)
        yield s
        s.close()


class TestAsyncPostgresStore(AsyncStoreContract):
    @pytest.fixture
    def astore(self, conninfo: str) -> AsyncPostgresStore:
        return AsyncPostgresStore(conninfo, max_size=POOL)

    @pytest.fixture
    def asecond(self, conninfo: str) -> AsyncPostgresStore:
        return AsyncPostgresStore(conninfo, max_size=POOL)


@pytest.mark.parametrize("outcome", ["complete", "replay", "unknown"])
def test_the_store_remembers_calls_in_flight_only(conninfo: str, outcome: str) -> None:
    # A claim is remembered so that its complete needs no read, and an UNKNOWN record so that a
    # takeover needs none; a finished record is never fenced again, so completing or replaying
    # a call leaves nothing behind.
    store = PostgresStore(conninfo, max_size=2)
    try:
        t0 = datetime(2026, 2, 1, tzinfo=UTC)
        new = NewRecord("tenant-a", "k1_memory", "fp", "{}", "po1_memory", "charge", 100, "usd")
        store.claim(new, now=t0, lease_for=timedelta(seconds=30))
        assert set(store._remembered._records) == {("tenant-a", "k1_memory")}
        if outcome == "unknown":
            store.mark_unknown("tenant-a", "k1_memory", token=1, reason="timeout", now=t0)
            assert set(store._remembered._records) == {("tenant-a", "k1_memory")}
            taken = store.takeover(
                "tenant-a", "k1_memory", token=1, now=t0, lease_for=timedelta(seconds=30)
            )
            assert taken.lease is not None
            remembered = store._remembered._records[("tenant-a", "k1_memory")]
            assert (remembered.status, remembered.token) == (Status.CLAIMED, taken.lease.token)
            return
        store.complete(
            "tenant-a", "k1_memory", token=1, status=Status.SUCCEEDED, outcome="{}", now=t0
        )
        assert not store._remembered._records
        if outcome == "replay":
            claimed = store.claim(new, now=t0, lease_for=timedelta(seconds=30))
            assert claimed.lease is None
            assert claimed.record.status is Status.SUCCEEDED
            assert store.get("tenant-a", "k1_memory") is not None
            assert not store._remembered._records
    finally:
        store.close()

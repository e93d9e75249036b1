"""A write blocked by a lock another session holds (an operator's open transaction in psql):
it waits at most the store's timeout, then fails with a StoreUnavailableError that names the
cause, and changes nothing; once the lock is gone the same write goes through.

Before, it waited for as long as the lock was held, and the pool's connection with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from payonce import Status, StoreUnavailableError
from payonce._model import NewRecord, Record
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from tests.faults import pg_worker

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
LEASE = timedelta(seconds=30)
WAIT = timedelta(seconds=1)  # the store's timeout, so its lock_timeout
NEW = NewRecord("tenant-a", "k1_" + "d" * 64, "fp", "{}", "po1_d", "charge", 100, "usd")


@pytest.fixture
def database() -> Iterator[str]:
    with pg_worker.migrated_database() as conninfo:
        yield conninfo


def _locking(conninfo: str) -> psycopg.Connection[tuple[object, ...]]:
    """A session holding the record's row lock in an open transaction, as psql would."""
    holder = psycopg.connect(conninfo)
    holder.execute(
        "SELECT 1 FROM payonce_records WHERE scope = %s AND key = %s FOR UPDATE",
        (NEW.scope, NEW.key),
    )
    return holder


def _stored(conninfo: str) -> Record | None:
    store = PostgresStore(conninfo)
    try:
        return store.get(NEW.scope, NEW.key)
    finally:
        store.close()


def _says_locked(error: StoreUnavailableError) -> None:
    assert "lock held by another database session" in error.message
    assert "pg_stat_activity" in error.message
    assert error.to_dict()["operation"] == "complete"


def test_a_complete_blocked_by_a_lock_fails_after_the_timeout(database: str) -> None:
    store = PostgresStore(database, timeout=WAIT)
    try:
        store.claim(NEW, now=T0, lease_for=LEASE)
        holder = _locking(database)
        try:
            with pytest.raises(StoreUnavailableError) as caught:
                store.complete(
                    NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0
                )
            _says_locked(caught.value)
        finally:
            holder.close()  # its transaction rolls back, the lock goes
        left = _stored(database)
        assert left is not None
        assert left.status is Status.CLAIMED  # the blocked write did not happen
        done = store.complete(
            NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0
        )
        assert done.status is Status.SUCCEEDED
    finally:
        store.close()


def test_the_async_store_bounds_the_wait_the_same_way(database: str) -> None:
    async def scenario() -> StoreUnavailableError:
        store = AsyncPostgresStore(database, timeout=WAIT)
        try:
            await store.claim(NEW, now=T0, lease_for=LEASE)
            holder = _locking(database)
            try:
                with pytest.raises(StoreUnavailableError) as caught:
                    await store.complete(
                        NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0
                    )
            finally:
                holder.close()
            done = await store.complete(
                NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0
            )
            assert done.status is Status.SUCCEEDED
            return caught.value
        finally:
            await store.close()

    _says_locked(asyncio.run(scenario()))

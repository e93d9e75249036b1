"""A write blocked by a lock another session holds (an operator's open transaction in psql):
it waits at most the store's timeout, then fails with a StoreUnavailableError that names the
cause, and changes nothing; once the lock is gone the same write goes through.

Before, it waited for as long as the lock was held, and the pool's connection with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from payonce import Status, StoreUnavailableError
from payonce._model import NewRecord, Record
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.stores._postgres_schema import MIGRATION_LOCK
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


def test_a_write_refused_for_a_table_lock_is_not_read_back(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 55P03 says the write did not run: the lost-answer read would only wait on the same lock,
    # twice more (a complete under an ACCESS EXCLUSIVE lock took three timeouts).
    store = PostgresStore(database, timeout=WAIT)
    read_back: list[str] = []
    monkeypatch.setattr(store, "_read_landed", lambda operation, flow: read_back.append(operation))
    try:
        store.claim(NEW, now=T0, lease_for=LEASE)
        holder = psycopg.connect(database)
        try:
            holder.execute("LOCK TABLE payonce_records IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailableError) as caught:
                store.complete(
                    NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0
                )
        finally:
            holder.close()
        _says_locked(caught.value)
        assert read_back == []
    finally:
        store.close()


def test_the_async_store_does_not_read_back_a_write_refused_for_a_table_lock(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> StoreUnavailableError:
        store = AsyncPostgresStore(database, timeout=WAIT)
        try:
            await store.claim(NEW, now=T0, lease_for=LEASE)
            holder = psycopg.connect(database)
            try:
                holder.execute("LOCK TABLE payonce_records IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(StoreUnavailableError) as caught:
                    await store.complete(
                        NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0
                    )
            finally:
                holder.close()
            return caught.value
        finally:
            await store.close()

    read_back: list[str] = []

    async def landed(*args: object, **kwargs: object) -> None:
        read_back.append("read")

    monkeypatch.setattr(AsyncPostgresStore, "_read_landed", landed)
    _says_locked(asyncio.run(scenario()))
    assert read_back == []


def test_opening_waits_for_a_migration_longer_than_the_lock_timeout(database: str) -> None:
    # Every open takes the migration lock; another instance migrating holds it. Before, a
    # starter gave up after its lock_timeout, told to end the migrating session.
    holder = psycopg.connect(database)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        opened: list[PostgresStore] = []
        starter = threading.Thread(
            target=lambda: opened.append(PostgresStore(database, timeout=timedelta(seconds=0.3)))
        )
        starter.start()
        _wait_for_lock_waiter(database)
        holder.execute("SELECT pg_sleep(1)")  # the migration runs on past the lock_timeout
    finally:
        holder.close()  # the migration's transaction ends, its lock with it
    starter.join(timeout=30)
    assert len(opened) == 1
    opened[0].close()


def _wait_for_lock_waiter(conninfo: str) -> None:
    """Until a session waits for an advisory lock on ``conninfo``'s database."""
    with psycopg.connect(conninfo, autocommit=True) as watcher:
        for _ in range(3000):
            (waiting,) = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone() or (0,)
            if waiting:
                return
            watcher.execute("SELECT pg_sleep(0.01)")
    raise AssertionError("no session came to wait for the migration lock")

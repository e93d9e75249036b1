"""The async PostgreSQL store under cancellation, an exhausted pool, and retried database work.

- An ``open()`` cancelled by an anyio cancel scope (a request deadline under Starlette) while it
  waits for another starter's migration lock leaves a working store and no connection behind.
- A pool whose every connection is in use is reported as such, not as an unreachable server.
- Serialization failures and deadlocks (40001, 40P01) retry the database work only: the gateway
  is called once (the async twin of ``test_postgres_retry``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta

import anyio
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from payonce import AsyncGuard, Attempt, Status, StoreUnavailableError, averify_ledger
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.stores._postgres_schema import MIGRATION_LOCK
from tests.conftest import SCOPE, SECRET
from tests.faults import pg_worker
from tests.faults.test_postgres_retry import INTENT, _fail_ledger_inserts, _failures_met

_WAIT: float = 30.0  # seconds: how long a poll for a server-side state may take at most


@pytest.fixture
def database() -> Iterator[str]:
    with pg_worker.migrated_database() as conninfo:
        yield conninfo


def _backends(application: str) -> int:
    with pg_worker.admin_connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _waiting_for_the_migration_lock(application: str) -> bool:
    with pg_worker.admin_connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'",
            (application,),
        ).fetchone()
    return row is not None and row[0] > 0


def test_an_open_cancelled_by_an_anyio_scope_leaves_a_working_store(database: str) -> None:
    application = "payonce-review-open-cancel"

    async def scenario() -> None:
        holder = await psycopg.AsyncConnection.connect(database, autocommit=True)
        store = AsyncPostgresStore(
            make_conninfo(database, application_name=application), min_size=3
        )
        try:
            # Another starter is migrating: the store's open() waits for its lock.
            await holder.execute("BEGIN")
            await holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            scope = anyio.CancelScope()

            async def request() -> None:
                with scope:  # a request's deadline, as Starlette sets one
                    await store.get(SCOPE, "k")

            opening = asyncio.ensure_future(request())
            deadline = time.monotonic() + _WAIT
            while not await asyncio.to_thread(_waiting_for_the_migration_lock, application):
                assert not opening.done(), opening
                assert time.monotonic() < deadline, "open() never waited for the lock"
                await asyncio.sleep(0.01)  # lets open() run; polls a state, times nothing
            scope.cancel()  # the deadline hits: every await in the scope is cancelled
            await opening
            assert scope.cancelled_caught
            await holder.execute("COMMIT")
            # The next call opens a new pool and works (not PoolClosed from the old one).
            assert await store.get(SCOPE, "k") is None
            # The cancelled open's connections were closed, in a task of their own.
            await asyncio.gather(*store._detached)
        finally:
            await store.close()
            await holder.close()
        # No backend of the cancelled pool stays behind (a backend exits just after its
        # client closes the socket: poll the server's view for it).
        deadline = time.monotonic() + _WAIT
        while await asyncio.to_thread(_backends, application):
            assert time.monotonic() < deadline, "a connection of the store leaked"
            await asyncio.sleep(0.01)  # polls a state, times nothing

    asyncio.run(scenario())


def _exhausted(message: str) -> None:
    assert "no connection of the store's PostgreSQL pool came free" in message, message
    assert "max_size" in message
    assert "PostgreSQL reported PoolTimeout" not in message


def test_an_exhausted_pool_is_reported_as_such(database: str) -> None:
    store = PostgresStore(database, min_size=1, max_size=1, timeout=timedelta(seconds=0.2))
    try:
        busy = store._pool.getconn()  # every connection of the pool is in use
        try:
            with pytest.raises(StoreUnavailableError) as caught:
                store.get(SCOPE, "k")
        finally:
            store._pool.putconn(busy)
        _exhausted(str(caught.value))
    finally:
        store.close()


def test_an_exhausted_async_pool_is_reported_as_such(database: str) -> None:
    async def scenario() -> str:
        store = AsyncPostgresStore(database, min_size=1, max_size=1, timeout=timedelta(seconds=0.2))
        try:
            await store.open()
            busy = await store._pool.getconn()
            try:
                with pytest.raises(StoreUnavailableError) as caught:
                    await store.get(SCOPE, "k")
            finally:
                await store._pool.putconn(busy)
            return str(caught.value)
        finally:
            await store.close()

    _exhausted(asyncio.run(scenario()))


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"], ids=["serialization", "deadlock"])
def test_async_database_retries_never_repeat_the_call(database: str, sqlstate: str) -> None:
    # Two failures: one on the claim's ledger row, one on the complete's.
    _fail_ledger_inserts(database, sqlstate, times=2)
    calls: list[Attempt] = []

    async def charge(attempt: Attempt) -> dict[str, str]:
        calls.append(attempt)
        return {"id": "ch_r15d_async"}

    async def scenario() -> None:
        store = AsyncPostgresStore(database)
        try:
            guard = AsyncGuard(store, secret=SECRET, scope=SCOPE)
            outcome = await guard.run(INTENT, charge)
            assert outcome.value == {"id": "ch_r15d_async"}
            assert len(calls) == 1
            assert _failures_met(database) >= 3  # both injected failures were met, then retried
            record = await store.get(SCOPE, outcome.key)
            assert record is not None
            assert record.status is Status.SUCCEEDED
            assert (await guard.run(INTENT, charge)).replayed
            assert len(calls) == 1
            assert (await averify_ledger(store)).entries == 2
        finally:
            await store.close()

    asyncio.run(scenario())

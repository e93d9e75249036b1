"""AsyncGuard and the async stores when the caller is cancelled (a request's deadline,
``asyncio.timeout``, ``wait_for``, a task cancelled at shutdown) while a call is under way.

A write once sent may land whether or not its caller still waits. So the guard awaits every
write to its end and only then lets the cancellation through: a claim that landed is released
(the call never started), a success is recorded, and the caller gets its ``CancelledError``.
Each case runs on the real async stores: SQLite behind ``ThreadedAsyncStore``, PostgreSQL and
Redis. A gate stands between the guard and one store method, so the test decides exactly where
the cancellation lands (one test makes a method never answer); every call that passes reaches
the real store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import anyio
import psycopg
import psycopg_pool
import pytest

from payonce import (
    AsyncGuard,
    OutcomeUnknownError,
    RetryPolicy,
    SQLiteStore,
    Status,
    StoreUnavailableError,
)
from payonce._protocols import AsyncStore
from payonce.gateways.simulated import AsyncSimulatedGateway
from payonce.stores import AsyncPostgresStore, ThreadedAsyncStore
from payonce.stores._redis import AsyncRedisStore
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.faults import pg_worker
from tests.guard.test_async import AsyncRecorder
from tests.guard.test_sync import INTENT, MyRefusedError
from tests.redis_cluster import delete_prefix

T = TypeVar("T")
REDIS_URL = "redis://127.0.0.1:6379/0"
BACKENDS = ["sqlite", "postgres", "redis"]


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pg_worker.migrated_database() as conninfo:
        yield conninfo


@pytest.fixture
def opened(request: pytest.FixtureRequest, tmp_path: Path, local_redis: Any) -> Callable[[], Any]:
    """``opened()``: an async context manager yielding a fresh store of the test's backend."""
    backend = request.param

    @asynccontextmanager
    async def opened() -> AsyncIterator[AsyncStore]:
        if backend == "sqlite":
            yield ThreadedAsyncStore(SQLiteStore(tmp_path / "payonce.db"))
            return
        if backend == "postgres":
            conninfo = request.getfixturevalue("database")
            with pg_worker.admin_connection(conninfo) as admin:
                pg_worker.empty_tables(admin)
            store: Any = AsyncPostgresStore(conninfo)
        else:
            prefix = f"payonce-cancel-{uuid4().hex[:12]}"
            request.addfinalizer(lambda: delete_prefix(local_redis, prefix))
            store = AsyncRedisStore(REDIS_URL, prefix=prefix)
        try:
            yield store
        finally:
            await store.close()

    return opened


class Gated:
    """A real async store whose ``name`` calls wait at a gate, ``before`` reaching the store
    (the write not sent yet) or after it answered (the write landed, its answer on the way)."""

    def __init__(self, store: AsyncStore, name: str, *, before: bool) -> None:
        self._store, self._name, self._before = store, name, before
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._store, attr)
        if attr != self._name:
            return method

        async def gated(*args: Any, **kwargs: Any) -> Any:
            if self._before:
                self.entered.set()
                await self.gate.wait()
            result = await method(*args, **kwargs)
            if not self._before:
                self.entered.set()
                await self.gate.wait()
            return result

        return gated


async def _cancel_at_the_gate(store: Gated, call: Coroutine[Any, Any, Any]) -> None:
    """Run ``call``, cancel it once it waits at the gate, open the gate; it must end cancelled."""
    task = asyncio.ensure_future(call)
    await store.entered.wait()
    task.cancel()
    await asyncio.sleep(0)  # the cancellation lands while the gate is still shut
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _cancelled_at(
    real: AsyncStore, name: str, *, before: bool
) -> tuple[AsyncGuard, AsyncRecorder]:
    """A guarded call of ``INTENT`` through a gate at the store's ``name``, cancelled there;
    returns the guard (its gate now open) and the guarded function."""
    store = Gated(real, name, before=before)
    guard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=ManualClock())
    fn = AsyncRecorder()
    await _cancel_at_the_gate(store, guard.run(INTENT, fn))
    return guard, fn


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_a_claim_that_landed_for_a_cancelled_caller_is_released(
    opened: Callable[[], Any],
) -> None:
    # Before, the claim stayed CLAIMED with nobody to call: the same intent then waited out the
    # lease and ended in OutcomeUnknownError, although nothing had been sent.
    async def main() -> None:
        async with opened() as real:
            guard, fn = await _cancelled_at(real, "claim", before=False)
            assert fn.calls == 0
            key = await guard.key_for(INTENT)
            assert await real.get(SCOPE, key) is None
            entries = await real.entries(after=0, limit=10)
            assert [e.event.value for e in entries] == ["claimed", "released"]
            outcome = await guard.run(INTENT, fn)
            assert (fn.calls, outcome.replayed) == (1, False)

    run(main)


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_a_success_is_recorded_although_its_caller_was_cancelled(
    opened: Callable[[], Any],
) -> None:
    # Before, the cancellation cut the complete before it was sent (or, on PostgreSQL, had the
    # server cancel it): the call had succeeded, the record stayed CLAIMED, and the intent
    # ended UNKNOWN after its lease.
    async def main() -> None:
        async with opened() as real:
            guard, fn = await _cancelled_at(real, "complete", before=True)
            assert fn.calls == 1
            record = await real.get(SCOPE, await guard.key_for(INTENT))
            assert record is not None
            assert record.status is Status.SUCCEEDED
            again = await guard.run(INTENT, fn)
            assert again.replayed
            assert again.value == fn.value
            assert fn.calls == 1

    run(main)


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_a_cancel_scope_that_cancels_at_every_await_still_gets_its_cancellation(
    opened: Callable[[], Any],
) -> None:
    # anyio and Starlette cancel the task again at every turn of the loop while the scope is
    # cancelled, so no wait of the guard ever completes there. A first version of the bounded
    # wait looked at the write only after a wait: it spun for ever and never released the claim.
    async def main() -> None:
        async with opened() as real:
            store = Gated(real, "claim", before=False)
            guard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=ManualClock())
            fn = AsyncRecorder()
            scopes: list[anyio.CancelScope] = []

            async def call() -> None:
                with anyio.CancelScope() as scope:
                    scopes.append(scope)
                    await guard.run(INTENT, fn)

            task = asyncio.ensure_future(call())
            await store.entered.wait()
            scopes[0].cancel()
            for _ in range(10):  # turns of the loop, each one cancelling the call again
                await asyncio.sleep(0)
            store.gate.set()
            done, _ = await asyncio.wait({task}, timeout=60)  # a failure guard, not a measure
            assert task in done
            assert scopes[0].cancelled_caught
            assert fn.calls == 0
            assert await real.get(SCOPE, await guard.key_for(INTENT)) is None

    run(main)


class _SleepsForever(ManualClock):
    """A manual clock whose sleeps last until the sleeper is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping = asyncio.Event()

    async def asleep(self, duration: Any) -> None:
        self.sleeping.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_a_caller_cancelled_between_attempts_releases_a_call_never_sent(
    opened: Callable[[], Any],
) -> None:
    async def main() -> None:
        async with opened() as store:
            clock = _SleepsForever()
            guard = AsyncGuard(
                store, secret=SECRET, scope=SCOPE, clock=clock, not_executed=(MyRefusedError,)
            )
            fn = AsyncRecorder(raises=MyRefusedError("connection refused"))
            task = asyncio.ensure_future(guard.run(INTENT, fn, retry=RetryPolicy(max_attempts=3)))
            await clock.sleeping.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert fn.calls == 1
            assert await store.get(SCOPE, await guard.key_for(INTENT)) is None

    run(main)


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_a_cancelled_caller_never_starts_the_call_after_its_claim(
    opened: Callable[[], Any],
) -> None:
    # The claim's answer arrives after the cancellation: the call is not made for a caller that
    # is gone, however long the claim took.
    async def main() -> None:
        async with opened() as real:
            guard, fn = await _cancelled_at(real, "claim", before=True)
            assert fn.calls == 0
            assert await real.get(SCOPE, await guard.key_for(INTENT)) is None

    run(main)


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_no_lookup_is_started_for_a_caller_cancelled_during_the_takeover(
    opened: Callable[[], Any],
) -> None:
    # The earlier worker's answer was lost (UNKNOWN); this caller takes the record over to look
    # the charge up, and is cancelled while the takeover lands. Before, the lookup still ran
    # (a provider list call, up to the SDK's timeout) for a caller that was gone.
    async def main() -> None:
        async with opened() as real:
            clock = ManualClock()
            gateway = AsyncSimulatedGateway(idempotent=False, clock=clock)
            gateway.script(["after_send"])
            with pytest.raises(OutcomeUnknownError):
                await AsyncGuard(
                    real, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway
                ).execute(INTENT)
            store = Gated(real, "takeover", before=False)
            guard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
            await _cancel_at_the_gate(store, guard.execute(INTENT))
            assert gateway.lookups_received == 0
            record = await real.get(SCOPE, await guard.key_for(INTENT))
            assert record is not None
            assert record.status is Status.UNKNOWN
            assert "interrupted while asking the provider" in (record.reason or "")

    run(main)


class _Hangs:
    """A real store whose ``name`` never answers (a lock nobody releases)."""

    def __init__(self, store: AsyncStore, name: str) -> None:
        self._store, self._name = store, name

    def __getattr__(self, attr: str) -> Any:
        if attr != self._name:
            return getattr(self._store, attr)

        async def hangs(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        return hangs


@pytest.mark.parametrize("opened", BACKENDS, indirect=True)
def test_a_write_after_the_cancellation_gets_the_same_bounded_time(
    opened: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled during the call, the guard records UNKNOWN; that write hangs. Before, only the
    # write in which the cancellation landed was bounded, and this caller waited for ever.
    monkeypatch.setattr("payonce._guard._AFTER_CANCEL", timedelta(0))

    async def main() -> None:
        async with opened() as real:
            guard = AsyncGuard(
                _Hangs(real, "mark_unknown"), secret=SECRET, scope=SCOPE, clock=ManualClock()
            )
            fn = AsyncRecorder(raises=asyncio.CancelledError())
            task = asyncio.ensure_future(guard.run(INTENT, fn))
            done, _ = await asyncio.wait({task}, timeout=60)  # a failure guard, not a measure
            assert task in done
            assert task.cancelled()
            record = await real.get(SCOPE, await guard.key_for(INTENT))
            assert record is not None
            assert record.status is Status.CLAIMED  # resolves after its lease, as a crash would

    run(main)


# -- the stores' own resources ------------------------------------------------------------------


class _GatedPool(psycopg_pool.AsyncConnectionPool[Any]):
    """A real pool whose returns wait at a gate: a caller cancelled there would drop the
    connection it is handing back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def putconn(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().putconn(conn)


def test_a_cancelled_call_still_hands_its_connection_back(database: str) -> None:
    # Before, a cancellation inside putconn (as the pool's lock is contended under load) lost
    # the connection for good: after max_size of them every call timed out.
    async def main() -> None:
        pool = _GatedPool(database, min_size=1, max_size=1, open=False, kwargs={"autocommit": True})
        await pool.open(wait=True)
        store = AsyncPostgresStore(pool)
        try:
            pool.gate.set()
            await store.open()
            pool.gate.clear()
            pool.entered.clear()
            call = asyncio.ensure_future(store.get(SCOPE, "k1_" + "0" * 64))
            await pool.entered.wait()
            call.cancel()
            await asyncio.sleep(0)
            pool.gate.set()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await asyncio.wait_for(store.get(SCOPE, "k1_" + "1" * 64), 10) is None
            assert pool.get_stats()["pool_available"] == 1
        finally:
            await store.close()
            await pool.close()

    run(main)


def test_a_start_cancelled_in_one_task_does_not_fail_another(local_redis: Any) -> None:
    # A start that fails closes the connections of the client the store built. Before, two
    # first calls started at once, and a cancelled one closed them under the other's start
    # in flight, which failed with StoreUnavailableError. Now one start runs at a time.
    prefix = f"payonce-cancel-{uuid4().hex[:12]}"

    async def main() -> None:
        store = AsyncRedisStore(REDIS_URL, prefix=prefix)
        config_get = store._client.config_get
        starts: list[str] = []
        gate = asyncio.Event()

        async def gated(*args: Any, **kwargs: Any) -> Any:
            starts.append(args[0])
            await gate.wait()
            return await config_get(*args, **kwargs)

        store._client.config_get = gated  # type: ignore[method-assign]
        try:
            impatient = asyncio.ensure_future(store.get(SCOPE, "k1_" + "0" * 64))
            patient = asyncio.ensure_future(store.get(SCOPE, "k1_" + "1" * 64))
            for _ in range(5):  # let both tasks run up to where they wait
                await asyncio.sleep(0)
            assert starts == ["maxmemory-policy"]  # the patient waits for the first start
            impatient.cancel()
            await asyncio.sleep(0)
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await impatient
            assert await patient is None
        finally:
            await store.close()

    try:
        run(main)
    finally:
        delete_prefix(local_redis, prefix)


@pytest.mark.parametrize("backend", ["postgres", "redis"])
def test_a_closed_store_refuses_the_operation_by_name(database: str, backend: str) -> None:
    # Before, a store closed before its first call tried to start (Redis sent CONFIG GET) and
    # named the operation "open".
    async def main() -> None:
        store: Any = (
            AsyncPostgresStore(database)
            if backend == "postgres"
            else AsyncRedisStore(REDIS_URL, prefix=f"payonce-cancel-{uuid4().hex[:12]}")
        )
        await store.close()
        with pytest.raises(StoreUnavailableError, match="was closed") as caught:
            await store.get(SCOPE, "k1_" + "0" * 64)
        assert caught.value.to_dict()["operation"] == "get"

    run(main)

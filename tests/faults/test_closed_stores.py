"""A store closed under its user: ``StoreClosedError``, which says that waiting will not help.

An outage passes, a closed store never answers again. Both are ``StoreUnavailableError`` (code
that handles an outage handles this too), but a closed store's message names the one step that
works (a new store, or another running instance), and ``Reconciler.run`` ends on it instead of
waiting for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from payonce import (
    AsyncGuard,
    AsyncReconciler,
    Guard,
    Intent,
    Reconciler,
    ReconcileReport,
    SQLiteStore,
    StoreClosedError,
    StoreUnavailableError,
)
from payonce.gateways.simulated import SimulatedGateway
from payonce.stores import AsyncPostgresStore, AsyncRedisStore
from payonce.stores._threaded import ThreadedAsyncStore
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET, make_store
from tests.faults import pg_worker
from tests.reconciler.test_reconciler import _StopAfterWaits

INTENT = Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-closed")
REDIS_URL = "redis://127.0.0.1:6379/0"


def _says_closed(error: StoreClosedError, store: str, operation: str) -> None:
    assert isinstance(error, StoreUnavailableError)
    assert error.to_dict()["store"] == store
    assert error.to_dict()["operation"] == operation
    assert f"during {operation}:" in error.message
    assert f"this {store} was closed" in error.message
    assert "Open a new store" in error.message
    assert "check that the store is reachable" not in error.message  # it never will be


def _charge(calls: list[object]) -> Callable[[object], dict[str, str]]:
    def charge(attempt: object) -> dict[str, str]:
        calls.append(attempt)
        return {"id": "ch_1"}

    return charge


@pytest.mark.parametrize(
    ("backend", "name"),
    [("sqlite", "SQLiteStore"), ("postgres", "PostgresStore"), ("redis", "RedisStore")],
)
def test_a_closed_store_says_so_and_nothing_is_called(
    backend: str, name: str, tmp_path: Path
) -> None:
    store = make_store(backend, tmp_path)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=ManualClock())
    store.close()
    calls: list[object] = []
    with pytest.raises(StoreClosedError) as caught:
        guard.run(INTENT, _charge(calls))
    _says_closed(caught.value, name, "replay_view")  # the guard's first read
    assert calls == []


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pg_worker.migrated_database() as conninfo:
        yield conninfo


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
def test_a_closed_async_store_says_so_and_nothing_is_called(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def main() -> tuple[StoreClosedError, str]:
        store: Any
        if backend == "sqlite":
            store, name = ThreadedAsyncStore(SQLiteStore(tmp_path / "a.db")), "SQLiteStore"
        elif backend == "postgres":
            store, name = (
                AsyncPostgresStore(request.getfixturevalue("database")),
                "AsyncPostgresStore",
            )
        else:
            prefix = f"payonce-closed-{uuid4().hex[:12]}"
            store, name = AsyncRedisStore(REDIS_URL, prefix=prefix), "AsyncRedisStore"
        guard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=ManualClock())
        await store.close()
        with pytest.raises(StoreClosedError) as caught:
            await guard.run(INTENT, _charge(calls))
        return caught.value, name

    calls: list[object] = []
    error, name = asyncio.run(main())
    _says_closed(error, name, "replay_view")
    assert calls == []


class _AsyncStopAfterWaits(asyncio.Event):
    def __init__(self, waits: int) -> None:
        super().__init__()
        self.left = waits

    async def wait(self) -> bool:  # type: ignore[override]
        self.left -= 1
        if self.left == 0:
            self.set()
        return self.is_set()


def test_the_reconciler_loop_ends_on_a_closed_store(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SQLiteStore(tmp_path / "r.db")
    reconciler = Reconciler(store, SimulatedGateway(clock=clock), clock=clock)
    store.close()
    with pytest.raises(StoreClosedError) as caught:
        reconciler.run(_StopAfterWaits(3), interval=timedelta(seconds=1), batch=5)
    _says_closed(caught.value, "SQLiteStore", "scan")


def test_the_async_reconciler_loop_ends_on_a_closed_store(tmp_path: Path) -> None:
    async def main() -> StoreClosedError:
        clock = ManualClock()
        store = ThreadedAsyncStore(SQLiteStore(tmp_path / "r.db"))
        reconciler = AsyncReconciler(store, SimulatedGateway(clock=clock), clock=clock)
        await store.close()
        with pytest.raises(StoreClosedError) as caught:
            await reconciler.run(_AsyncStopAfterWaits(3), interval=timedelta(seconds=1), batch=5)
        return caught.value

    _says_closed(asyncio.run(main()), "SQLiteStore", "scan")


class _ClosingLookup(SimulatedGateway):
    """A provider lookup during which the store is closed (a shutdown under a running pass)."""

    def __init__(self, store: SQLiteStore, clock: ManualClock) -> None:
        super().__init__(idempotent=True, clock=clock)
        self.store = store

    def lookup(self, *args: Any, **kwargs: Any) -> Any:
        self.store.close()
        return super().lookup(*args, **kwargs)


def test_the_reconciler_loop_ends_at_once_when_the_store_closes_during_a_pass(
    tmp_path: Path,
) -> None:
    # Before, the pass was cut short as by an outage, the loop waited an interval, and only the
    # next pass's scan ended it.
    from tests.reconciler.test_reconciler import LEASE, _crashed_after_claim  # noqa: PLC0415

    clock = ManualClock()
    store = SQLiteStore(tmp_path / "r.db")
    gateway = _ClosingLookup(store, clock)
    _crashed_after_claim(store, clock, gateway)
    clock.advance(LEASE)
    stop = _StopAfterWaits(3)
    reconciler = Reconciler(store, gateway, clock=clock, lease=LEASE)
    passes: list[ReconcileReport] = []
    with pytest.raises(StoreClosedError):
        reconciler.run(stop, interval=timedelta(seconds=1), batch=5, on_pass=passes.append)
    assert stop.left == 3  # it never waited
    assert len(passes) == 1  # the pass cut short was handed over first
    assert passes[0].interrupted is not None


def test_run_once_reports_a_pass_the_closing_store_cut_short(tmp_path: Path) -> None:
    # run_once keeps its contract: the report of what was resolved, with interrupted set.
    from tests.reconciler.test_reconciler import LEASE, _crashed_after_claim  # noqa: PLC0415

    clock = ManualClock()
    store = SQLiteStore(tmp_path / "r.db")
    gateway = _ClosingLookup(store, clock)
    _crashed_after_claim(store, clock, gateway)
    clock.advance(LEASE)
    report = Reconciler(store, gateway, clock=clock, lease=LEASE).run_once(batch=5)
    assert report.interrupted is not None
    assert "was closed" in report.interrupted
    assert report.skipped == 1

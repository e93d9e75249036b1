"""The store conformance suite (DESIGN §7): one copy of every check, run against any store.

Subclass ``StoreContract`` and provide a ``store`` fixture, or ``AsyncStoreContract`` and provide
an ``astore`` fixture::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def store(self) -> MyStore:
            return MyStore(...)  # fresh and empty for every test

Every check is written once against the sync ``Store`` contract. ``AsyncStoreContract`` runs the
same checks through a blocking facade that submits each awaited call to one event loop per test,
running in its own thread: native async drivers bind their connections to one loop, and the
concurrency checks can still race plain threads against it.

All times are fixed aware UTC instants; nothing reads the wall clock or sleeps. The only waits are
the start barriers of the concurrency checks, whose timeout only turns a deadlock into a failure.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest

from payonce._protocols import AsyncStore, Store
from payonce.testing._contract_claims import _ClaimChecks
from payonce.testing._contract_ledger import _LedgerChecks
from payonce.testing._contract_support import _BlockingStore, _LoopThread
from payonce.testing._contract_writes import _FencedWriteChecks

__all__ = ["AsyncStoreContract", "StoreContract"]


# pytest collects the checks of the last base first: listed in reverse, the checks run claims
# first and the ledger last, the order a reader of the three modules expects.
class _StoreChecks(_LedgerChecks, _FencedWriteChecks, _ClaimChecks):
    """Every check of the contract, written once against a sync ``store`` fixture."""


class StoreContract(_StoreChecks):
    """The conformance suite of the sync ``Store`` contract (DESIGN §7).

    Subclass it in a pytest module and provide a ``store`` fixture that returns a fresh, empty
    store for every test (and closes it afterwards, if it needs closing). The store must be
    thread-safe: the concurrency checks call it from 16 threads at once.
    """

    @pytest.fixture
    def second(self, store: Store) -> Store:
        """A second instance of the store over the same data, as another process opens it.

        The checks of fencing across instances write through both, so that a stale instance's
        write must be refused by the store itself (its database or script), not by what that
        instance remembers. Override it for a store that can be opened twice (and close it
        afterwards); the default, ``store`` itself, checks one instance only.
        """
        return store

    def test_conforms_to_store_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)


class AsyncStoreContract(_StoreChecks):
    """The conformance suite of the ``AsyncStore`` contract: the same checks as ``StoreContract``.

    Subclass it and provide an ``astore`` fixture: a plain (sync) fixture returning a fresh, empty
    ``AsyncStore``. No pytest-asyncio is needed: each test gets its own event loop in a helper
    thread, every call is awaited there, and the suite closes the store on that loop at teardown.
    The concurrency checks run their racers as concurrent tasks on that one loop.
    """

    @pytest.fixture
    def store(self, astore: AsyncStore) -> Iterator[Store]:
        """The async store behind a blocking facade, on one event loop per test."""
        loop = _LoopThread()
        try:
            yield _BlockingStore(astore, loop)
        finally:
            try:
                loop.run(astore.close())
            finally:
                loop.close()

    @pytest.fixture
    def asecond(self) -> AsyncStore | None:
        """As ``StoreContract.second``: another ``AsyncStore`` over the same data as ``astore``,
        not used yet (the suite closes it on the test's loop), or None to check one instance."""
        return None

    @pytest.fixture
    def second(self, store: Store, asecond: AsyncStore | None) -> Iterator[Store]:
        """``asecond`` behind a blocking facade on the same loop as ``store``."""
        if asecond is None or not isinstance(store, _BlockingStore):
            yield store
            return
        facade = _BlockingStore(asecond, store.loop)
        try:
            yield facade
        finally:
            facade.close()

    def test_conforms_to_async_store_protocol(self, astore: AsyncStore, store: Store) -> None:
        # ``store`` is requested only so that the teardown closes ``astore`` on its loop.
        assert isinstance(astore, AsyncStore)
        names = [name for name in dir(AsyncStore) if not name.startswith("_")]
        assert names
        for name in names:
            assert inspect.iscoroutinefunction(getattr(astore, name)), f"{name} is not async"

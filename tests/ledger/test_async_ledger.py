"""``averify_ledger`` and ``aseal_checkpoint``: the checks and seals of ``verify_ledger`` and
``seal_checkpoint``, awaited on an AsyncStore (the native PostgreSQL and Redis twins, or a sync
store in a worker thread), over the same data on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from payonce import (
    AsyncStore,
    ConfigurationError,
    LedgerCorruptedError,
    MemoryStore,
    Store,
    ThreadedAsyncStore,
    aseal_checkpoint,
    averify_ledger,
    seal_checkpoint,
    verify_ledger,
)
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.stores._redis import AsyncRedisStore, RedisStore
from payonce.testing import ManualClock
from tests.conftest import _POSTGRES, _REDIS
from tests.ledger.test_ledger import _guard, _ledger, _operate

_T = TypeVar("_T")


def _on_async_twin(store: Store, use: Callable[[AsyncStore], Awaitable[_T]]) -> _T:
    """``use`` an AsyncStore over ``store``'s data: the native twin of PostgreSQL and Redis, a
    worker thread around the others (which the caller's fixture closes)."""

    async def run() -> _T:
        if isinstance(store, PostgresStore):
            twin: Any = await AsyncPostgresStore(_POSTGRES.conninfo).open()
        elif isinstance(store, RedisStore):
            twin = AsyncRedisStore(_REDIS.url, prefix=store._prefix)
        else:
            return await use(ThreadedAsyncStore(store))
        try:
            return await use(twin)
        finally:
            await twin.close()

    return asyncio.run(run())


def test_the_async_twins_verify_and_seal_what_the_sync_ones_do(
    store: Store, clock: ManualClock
) -> None:
    guard = _guard(store, clock)
    for i in range(8):
        _operate(guard, clock, i)
    expected = verify_ledger(store)

    assert _on_async_twin(store, averify_ledger) == expected
    first = _on_async_twin(store, lambda s: aseal_checkpoint(s, now=clock.now()))
    assert first is not None
    assert (first.number, first.first_seq, first.last_seq) == (1, 1, expected.last_seq)
    assert _on_async_twin(store, lambda s: aseal_checkpoint(s, now=clock.now())) is None

    for i in range(8, 12):
        _operate(guard, clock, i)
    second = _on_async_twin(store, lambda s: aseal_checkpoint(s, now=clock.now()))
    assert second is not None
    assert (second.number, second.first_seq, second.prev_hash) == (
        2,
        expected.last_seq + 1,
        first.hash,
    )
    # What the async seal wrote, the sync side verifies, and the other way round.
    assert verify_ledger(store, anchor=first.hash).last_checkpoint == second
    for i in range(12, 14):
        _operate(guard, clock, i)
    third = seal_checkpoint(store, now=clock.now())
    assert third is not None
    report = _on_async_twin(store, lambda s: averify_ledger(s, anchor=third.hash))
    assert report == verify_ledger(store, anchor=third.hash)
    assert report.checkpoints == 3
    with pytest.raises(LedgerCorruptedError, match="anchored"):
        _on_async_twin(store, lambda s: averify_ledger(s, anchor="f" * 64))


def test_a_sync_store_in_a_thread_keeps_its_gapless_check(clock: ManualClock) -> None:
    # The memory store's seqs have no gaps, so a deleted entry is named by its own seq; through
    # ThreadedAsyncStore the async verification must know that too.
    store = MemoryStore()
    guard = _guard(store, clock)
    for i in range(15):
        _operate(guard, clock, i)
    entries = _ledger(store)
    target = next(
        e
        for i, e in enumerate(entries)
        if i > 3 and any(f.key == e.key and f.seq > e.seq for f in entries)
    )
    store._replace_entry(entries.index(target), None)

    with pytest.raises(LedgerCorruptedError) as caught:
        asyncio.run(averify_ledger(store))
    assert caught.value.seq == target.seq
    assert "missing" in caught.value.reason


def test_a_sync_store_is_accepted_and_anything_else_refused(clock: ManualClock) -> None:
    store = MemoryStore()
    _operate(_guard(store, clock), clock, 0)
    assert asyncio.run(averify_ledger(store)) == verify_ledger(store)
    sealed = asyncio.run(aseal_checkpoint(store, now=clock.now()))
    assert sealed is not None
    assert verify_ledger(store, anchor=sealed.hash).checkpoints == 1
    for call in (averify_ledger(object()), aseal_checkpoint(object(), now=clock.now())):  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="needs an AsyncStore or a Store"):
            asyncio.run(call)


def test_the_sync_functions_refuse_an_async_store_and_name_the_async_ones(
    clock: ManualClock,
) -> None:
    astore = ThreadedAsyncStore(MemoryStore())
    with pytest.raises(ConfigurationError, match="await averify_ledger"):
        verify_ledger(astore)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="await aseal_checkpoint"):
        seal_checkpoint(astore, now=clock.now())  # type: ignore[arg-type]
    for call in (verify_ledger, lambda s: seal_checkpoint(s, now=clock.now())):
        with pytest.raises(ConfigurationError, match="needs a Store such as SQLiteStore"):
            call(object())  # type: ignore[arg-type]

"""What the store conformance checks share: fixed values, helpers and the async facade.

The values are fixed aware UTC instants and realistic keys; the helpers build records, settle
them, race threads and drive a whole ledger; ``_BlockingStore`` lets every check, written once
against the sync ``Store``, run against an ``AsyncStore`` too.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import pytest

from payonce._chain import checkpoint_digest, entry_hash, make_checkpoint
from payonce._errors import LeaseLostError
from payonce._keys import canonical_json
from payonce._model import (
    Checkpoint,
    Claimed,
    Entry,
    Event,
    NewRecord,
    Record,
    ReplayView,
    Status,
)
from payonce._protocols import AsyncStore, Store

_T = TypeVar("_T")

_T0: Final = datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
_LEASE: Final = timedelta(seconds=30)
_SECOND: Final = timedelta(seconds=1)
_MICRO: Final = timedelta(microseconds=1)
_RETENTION: Final = timedelta(hours=72)
_SCOPE: Final = "tenant_a"
_OTHER_SCOPE: Final = "tenant_b/agent_7"
_ALL: Final = 10_000  # a limit above anything one check writes
_RACERS: Final = 16
_BARRIER_TIMEOUT: Final = 30.0  # seconds; only turns a deadlocked race into a failure

_OUTCOME: Final = '{"amount":1250,"currency":"eur","id":"ch_3Pq1","status":"succeeded"}'
_FENCED_WRITES: Final = ("complete", "mark_unknown", "release")
_INJECTIONS: Final = (
    "'; DROP TABLE payonce_records; --",
    '" OR 1=1',
    "]]..redis.call('FLUSHALL')",
)
# Outcomes a store must hand back byte for byte: no JSON re-serialisation (a jsonb column reorders
# keys and drops whitespace), no Unicode normalisation or escaping, no number reformatting.
_OUTCOME_TEXTS: Final = (
    '{"note":"Zahlung für Café \u2013 東京 ✓ 💶","status":"succeeded"}',
    '{"z":1,"a":{"c":2,"b":[3,"x"]},"m":null}',
    '{"a": 1,  "b" : [ 2 ]}',
    '{"s":"\\u00e9 and é are different bytes"}',
    '{"n":12345678901234567890,"f":1.10}',
    '{"decomposed":"Cafe\u0301","composed":"Caf\u00e9"}',
)


def _digest(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8")).hexdigest()


def _key(label: str) -> str:
    """A realistic record key: ``k1_`` and 64 hex digits."""
    return f"k1_{_digest(label)}"


def _new(
    label: str,
    *,
    scope: str = _SCOPE,
    fingerprint: str | None = None,
    intent: str | None = None,
    family: str | None = None,
    generation: int = 0,
    amount: int = 1250,
    currency: str = "eur",
) -> NewRecord:
    """The record a guard would claim for ``label``."""
    key = _key(label)
    fields = {"amount": amount, "currency": currency, "operation": "charge", "reference": label}
    return NewRecord(
        scope=scope,
        key=key,
        fingerprint=fingerprint or f"fp_{_digest('fingerprint/' + label)}",
        intent=intent or canonical_json(fields),
        provider_key=f"po1_{_digest('provider/' + key)[:40]}",
        operation="charge",
        amount=amount,
        currency=currency,
        family=family,
        generation=generation,
    )


def _entries(store: Store) -> list[Entry]:
    return list(store.entries(after=0, limit=_ALL))


def _require(store: Store, scope: str, key: str) -> Record:
    record = store.get(scope, key)
    assert record is not None, f"record ({scope!r}, {key!r}) is missing"
    return record


def _claim(store: Store, new: NewRecord, *, now: datetime = _T0) -> Claimed:
    claimed = store.claim(new, now=now, lease_for=_LEASE)
    assert claimed.lease is not None, "a claim of a free key must win"
    return claimed


def _fenced_write(
    store: Store, op: str, scope: str, key: str, *, token: int, now: datetime
) -> None:
    if op == "complete":
        store.complete(scope, key, token=token, status=Status.SUCCEEDED, outcome=_OUTCOME, now=now)
    elif op == "mark_unknown":
        store.mark_unknown(scope, key, token=token, reason="read timeout after send", now=now)
    else:
        store.release(scope, key, token=token, reason="connection refused", now=now)


def _settle(
    store: Store, new: NewRecord, status: Status, *, token: int = 1, now: datetime = _T0
) -> Record:
    """Complete the record of ``new`` as ``status``, or mark it UNKNOWN."""
    if status is Status.UNKNOWN:
        return store.mark_unknown(new.scope, new.key, token=token, reason="reset", now=now)
    return store.complete(new.scope, new.key, token=token, status=status, outcome=_OUTCOME, now=now)


def _shape(entry: Entry) -> tuple[Event, Status | None, Status | None, int, int]:
    return (entry.event, entry.status_from, entry.status_to, entry.token, entry.attempt)


def _assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None, f"{value!r} is naive; stores return aware UTC datetimes"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not UTC"


def _recomputed(entry: Entry) -> str:
    return entry_hash(entry)


def _race(n: int, call: Callable[[int], _T]) -> list[_T]:
    """Run ``call(i)`` for i in range(n) in n threads released together by a barrier."""
    barrier = threading.Barrier(n, timeout=_BARRIER_TIMEOUT)

    def run(index: int) -> _T:
        barrier.wait()
        return call(index)

    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(run, index) for index in range(n)]
        return [future.result() for future in futures]


_Step = tuple[str, Event, Status | None, Status | None, int, datetime]


def _exercise(store: Store) -> list[_Step]:
    """Drive every kind of transition, and some refused calls, across two scopes.

    Returns the ledger this must produce, as ``(key, event, status_from, status_to, token, at)``
    in sequence order.
    """
    a, b, d = _new("ledger-a"), _new("ledger-b"), _new("ledger-d")
    c = _new("ledger-c", scope=_OTHER_SCOPE, amount=990, currency="usd")
    at = [_T0 + n * _SECOND for n in range(7)]
    claimed = (Event.CLAIMED, None, Status.CLAIMED, 1)
    expected: list[_Step] = [(new.key, *claimed, at[0]) for new in (a, b, d)]
    for new in (a, b, d):
        _claim(store, new, now=at[0])
    _claim(store, c, now=at[1])
    expected.append((c.key, *claimed, at[1]))

    # Refused calls write nothing.
    assert store.claim(d, now=at[1], lease_for=_LEASE).lease is None
    assert store.takeover(d.scope, d.key, token=1, now=at[1], lease_for=_LEASE).lease is None
    with pytest.raises(LeaseLostError):
        _fenced_write(store, "complete", d.scope, d.key, token=9, now=at[1])

    _settle(store, b, Status.UNKNOWN, now=at[2])
    expected.append((b.key, Event.MARKED_UNKNOWN, Status.CLAIMED, Status.UNKNOWN, 1, at[2]))
    store.takeover(b.scope, b.key, token=1, now=at[3], lease_for=_LEASE)
    expected.append((b.key, Event.TAKEN_OVER, Status.UNKNOWN, Status.CLAIMED, 2, at[3]))
    _settle(store, b, Status.FAILED, token=2, now=at[4])
    expected.append((b.key, Event.FAILED, Status.CLAIMED, Status.FAILED, 2, at[4]))
    store.release(c.scope, c.key, token=1, reason="connection refused", now=at[5])
    expected.append((c.key, Event.RELEASED, Status.CLAIMED, None, 1, at[5]))
    _claim(store, c, now=at[6])
    # The re-claimed key continues its tokens after the released life's token 1.
    expected.append((c.key, Event.CLAIMED, None, Status.CLAIMED, 2, at[6]))
    store.takeover(a.scope, a.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
    expected.append((a.key, Event.TAKEN_OVER, Status.CLAIMED, Status.CLAIMED, 2, _T0 + _LEASE))
    done = _T0 + _LEASE + _SECOND
    _settle(store, a, Status.SUCCEEDED, token=2, now=done)
    expected.append((a.key, Event.SUCCEEDED, Status.CLAIMED, Status.SUCCEEDED, 2, done))

    purge_at = done + _RETENTION
    assert store.purge(now=purge_at, retention=_RETENTION, limit=10) == 2
    # The order of one purge's entries is the store's choice: compare them sorted.
    purged = sorted([(a.key, Status.SUCCEEDED), (b.key, Status.FAILED)])
    expected.extend((key, Event.PURGED, status, None, 2, purge_at) for key, status in purged)
    return expected


def _checkpoint(
    number: int, entries: Sequence[Entry], prev_hash: str, *, at: datetime
) -> Checkpoint:
    return make_checkpoint(
        number=number,
        at=at,
        first_seq=entries[0].seq,
        last_seq=entries[-1].seq,
        count=len(entries),
        digest=checkpoint_digest(e.hash for e in entries),
        prev_hash=prev_hash,
    )


class _LoopThread:
    """One event loop running in its own thread for the duration of a test."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="payonce-contract-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for it; safe to call from any number of threads."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        try:
            self.run(self._loop.shutdown_asyncgens())
            self.run(self._loop.shutdown_default_executor())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()


class _BlockingStore:
    """A sync ``Store`` view of an ``AsyncStore``: every call is awaited on one ``_LoopThread``."""

    def __init__(self, astore: AsyncStore, loop: _LoopThread) -> None:
        self._astore = astore
        self._loop = loop

    @property
    def loop(self) -> _LoopThread:
        """The loop every call is awaited on (a second store of the same test shares it)."""
        return self._loop

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        return self._loop.run(self._astore.claim(new, now=now, lease_for=lease_for))

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        return self._loop.run(
            self._astore.takeover(scope, key, token=token, now=now, lease_for=lease_for)
        )

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        return self._loop.run(
            self._astore.complete(scope, key, token=token, status=status, outcome=outcome, now=now)
        )

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        return self._loop.run(
            self._astore.mark_unknown(scope, key, token=token, reason=reason, now=now)
        )

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        self._loop.run(self._astore.release(scope, key, token=token, reason=reason, now=now))

    def get(self, scope: str, key: str) -> Record | None:
        return self._loop.run(self._astore.get(scope, key))

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        return self._loop.run(self._astore.replay_view(scope, key))

    def newest(self, scope: str, family: str) -> Record | None:
        return self._loop.run(self._astore.newest(scope, family))

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        return self._loop.run(self._astore.scan(now=now, limit=limit))

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        return self._loop.run(self._astore.purge(now=now, retention=retention, limit=limit))

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        return self._loop.run(self._astore.entries(after=after, limit=limit))

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        return self._loop.run(self._astore.heads(after=after, limit=limit))

    def checkpoints(self) -> Sequence[Checkpoint]:
        return self._loop.run(self._astore.checkpoints())

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        self._loop.run(self._astore.append_checkpoint(checkpoint))

    def close(self) -> None:
        self._loop.run(self._astore.close())

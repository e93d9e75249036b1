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

import asyncio
import hashlib
import inspect
import itertools
import json
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import pytest

from payonce._chain import GENESIS, checkpoint_digest, entry_hash, make_checkpoint
from payonce._errors import ConflictError, LeaseLostError
from payonce._keys import canonical_json
from payonce._model import (
    Checkpoint,
    Claimed,
    Entry,
    Event,
    Lease,
    NewRecord,
    Record,
    ReplayView,
    Status,
)
from payonce._protocols import AsyncStore, Store

__all__ = ["AsyncStoreContract", "StoreContract"]

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


class _StoreChecks:
    """Every check of the contract, written once against a sync ``store`` fixture."""

    # -- claim ------------------------------------------------------------------------------------

    def test_claim_creates_claimed_record(self, store: Store) -> None:
        new = _new("claim", family="fam_claim", generation=3)

        claimed = store.claim(new, now=_T0, lease_for=_LEASE)

        assert claimed.lease == Lease(token=1, expires_at=_T0 + _LEASE)
        record = claimed.record
        assert record == Record(
            scope=new.scope,
            key=new.key,
            status=Status.CLAIMED,
            fingerprint=new.fingerprint,
            intent=new.intent,
            provider_key=new.provider_key,
            operation=new.operation,
            amount=new.amount,
            currency=new.currency,
            token=1,
            attempt=1,
            lease_expires_at=_T0 + _LEASE,
            outcome=None,
            reason=None,
            ledger_head=record.ledger_head,
            created_at=_T0,
            updated_at=_T0,
            family="fam_claim",
            generation=3,
        )
        assert record.lease == claimed.lease
        assert store.get(new.scope, new.key) == record

    def test_second_claim_returns_existing_unchanged(self, store: Store) -> None:
        first = _claim(store, _new("dup"))
        other = _new("dup", fingerprint="fp_other", intent='{"amount":9999}', amount=9999)

        again = store.claim(other, now=_T0 + _SECOND, lease_for=timedelta(hours=1))

        assert again == Claimed(first.record, None)
        assert store.get(_SCOPE, other.key) == first.record
        assert len(_entries(store)) == 1

    @pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN])
    def test_claim_of_settled_key_returns_it(self, store: Store, status: Status) -> None:
        new = _new("settled")
        _claim(store, new)
        settled = _settle(store, new, status)

        again = store.claim(new, now=_T0 + _RETENTION, lease_for=_LEASE)

        assert again == Claimed(settled, None)
        assert len(_entries(store)) == 2

    def test_claim_appends_claimed_entry_from_genesis(self, store: Store) -> None:
        new = _new("entry")

        record = _claim(store, new).record

        (entry,) = _entries(store)
        assert _shape(entry) == (Event.CLAIMED, None, Status.CLAIMED, 1, 1)
        assert (entry.scope, entry.key, entry.at) == (new.scope, new.key, _T0)
        assert (entry.amount, entry.currency) == (new.amount, new.currency)
        assert entry.prev_hash == GENESIS
        assert entry.hash == record.ledger_head == _recomputed(entry)

    def test_scopes_are_isolated(self, store: Store) -> None:
        in_a = _new("shared", fingerprint="fp_a")
        in_b = _new("shared", scope=_OTHER_SCOPE, fingerprint="fp_b")
        assert in_a.key == in_b.key

        _claim(store, in_a)
        claimed_b = _claim(store, in_b)
        _settle(store, in_a, Status.SUCCEEDED)

        assert _require(store, _OTHER_SCOPE, in_b.key) == claimed_b.record
        assert claimed_b.record.fingerprint == "fp_b"
        assert _require(store, _SCOPE, in_a.key).fingerprint == "fp_a"
        # Each (scope, key) has its own chain.
        claims = [e for e in _entries(store) if e.event is Event.CLAIMED]
        assert sorted(e.scope for e in claims) == sorted([_SCOPE, _OTHER_SCOPE])
        assert all(e.prev_hash == GENESIS for e in claims)

    def test_concurrent_claims_have_one_winner(self, store: Store) -> None:
        new = _new("race")

        def claim(i: int) -> Claimed:
            return store.claim(replace(new, fingerprint=f"fp_{i}"), now=_T0, lease_for=_LEASE)

        results = _race(_RACERS, claim)

        winners = [result for result in results if result.lease is not None]
        assert len(winners) == 1, f"{len(winners)} of {_RACERS} concurrent claims won"
        stored = _require(store, new.scope, new.key)
        assert stored == winners[0].record
        assert all(result.record == stored for result in results)
        assert len(_entries(store)) == 1

    # -- takeover ---------------------------------------------------------------------------------

    def test_takeover_refused_while_lease_live(self, store: Store) -> None:
        new = _new("live")
        record = _claim(store, new).record
        now = _T0 + _LEASE - _MICRO

        refused = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        assert refused == Claimed(record, None)
        assert store.get(new.scope, new.key) == record
        assert len(_entries(store)) == 1

    @pytest.mark.parametrize("late", [timedelta(0), _MICRO, timedelta(days=3)])
    def test_takeover_allowed_at_and_after_expiry(self, store: Store, late: timedelta) -> None:
        new = _new("expired")
        before = _claim(store, new).record
        now, lease_for = _T0 + _LEASE + late, timedelta(minutes=2)

        taken = store.takeover(new.scope, new.key, token=1, now=now, lease_for=lease_for)

        assert taken.lease == Lease(token=2, expires_at=now + lease_for)
        assert taken.record == replace(
            before,
            token=2,
            attempt=2,
            lease_expires_at=now + lease_for,
            updated_at=now,
            ledger_head=taken.record.ledger_head,
        )
        assert store.get(new.scope, new.key) == taken.record
        first, entry = _entries(store)
        assert _shape(entry) == (Event.TAKEN_OVER, Status.CLAIMED, Status.CLAIMED, 2, 2)
        assert (entry.at, entry.prev_hash, entry.hash) == (
            now,
            first.hash,
            taken.record.ledger_head,
        )

    def test_takeover_allowed_from_unknown(self, store: Store) -> None:
        new = _new("unknown")
        _claim(store, new)
        _settle(store, new, Status.UNKNOWN, now=_T0 + _SECOND)
        now = _T0 + 2 * _SECOND  # the first lease is still live: UNKNOWN needs no expiry

        taken = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        assert taken.lease == Lease(token=2, expires_at=now + _LEASE)
        assert (taken.record.status, taken.record.attempt) == (Status.CLAIMED, 2)
        entry = _entries(store)[-1]
        assert _shape(entry) == (Event.TAKEN_OVER, Status.UNKNOWN, Status.CLAIMED, 2, 2)

    @pytest.mark.parametrize("stale", [1, 3])
    def test_takeover_with_other_token_refused(self, store: Store, stale: int) -> None:
        new = _new("stale")
        _claim(store, new)
        store.takeover(new.scope, new.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
        current = _require(store, new.scope, new.key)
        now = _T0 + 10 * _LEASE

        refused = store.takeover(new.scope, new.key, token=stale, now=now, lease_for=_LEASE)

        assert refused == Claimed(current, None)
        assert store.get(new.scope, new.key) == current
        assert len(_entries(store)) == 2

    @pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED])
    def test_takeover_of_terminal_record_refused(self, store: Store, status: Status) -> None:
        new = _new("terminal")
        _claim(store, new)
        done = _settle(store, new, status)
        now = _T0 + _RETENTION

        refused = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        assert refused == Claimed(done, None)
        assert store.get(new.scope, new.key) == done
        assert len(_entries(store)) == 2

    def test_concurrent_takeovers_have_one_winner(self, store: Store) -> None:
        new = _new("takeover-race")
        _claim(store, new)
        now = _T0 + _LEASE + _SECOND

        def take(_: int) -> Claimed:
            return store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        results = _race(8, take)

        winners = [result for result in results if result.lease is not None]
        assert len(winners) == 1, f"{len(winners)} of 8 concurrent takeovers won"
        assert winners[0].lease == Lease(token=2, expires_at=now + _LEASE)
        assert all(result.record.token == 2 for result in results)
        assert [e.event for e in _entries(store)] == [Event.CLAIMED, Event.TAKEN_OVER]

    def test_takeover_of_missing_record_raises_lease_lost(self, store: Store) -> None:
        never, released = _new("never-claimed"), _new("released")
        _claim(store, released)
        store.release(_SCOPE, released.key, token=1, reason="refused", now=_T0)

        for gone in (never, released):
            with pytest.raises(LeaseLostError):
                store.takeover(_SCOPE, gone.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)

        assert len(_entries(store)) == 2

    # -- complete, mark_unknown, release: fenced writes -------------------------------------------

    @pytest.mark.parametrize(
        ("status", "event"), [(Status.SUCCEEDED, Event.SUCCEEDED), (Status.FAILED, Event.FAILED)]
    )
    def test_complete_records_outcome(self, store: Store, status: Status, event: Event) -> None:
        new = _new("complete")
        before = _claim(store, new).record
        now = _T0 + 2 * _SECOND

        done = store.complete(new.scope, new.key, token=1, status=status, outcome=_OUTCOME, now=now)

        assert done == replace(
            before,
            status=status,
            outcome=_OUTCOME,
            lease_expires_at=None,
            updated_at=now,
            ledger_head=done.ledger_head,
        )
        assert done.lease is None
        assert store.get(new.scope, new.key) == done
        first, entry = _entries(store)
        assert _shape(entry) == (event, Status.CLAIMED, status, 1, 1)
        assert (entry.at, entry.prev_hash, entry.hash) == (now, first.hash, done.ledger_head)

    @pytest.mark.parametrize("outcome", _OUTCOME_TEXTS)
    def test_complete_stores_outcome_byte_identically(self, store: Store, outcome: str) -> None:
        new = _new("bytes")
        _claim(store, new)

        done = store.complete(
            new.scope, new.key, token=1, status=Status.SUCCEEDED, outcome=outcome, now=_T0
        )

        stored = _require(store, new.scope, new.key).outcome
        assert stored is not None
        assert done.outcome == outcome
        assert stored.encode("utf-8") == outcome.encode("utf-8")

    @pytest.mark.parametrize("status", [Status.CLAIMED, Status.UNKNOWN])
    def test_complete_refuses_non_terminal_status(self, store: Store, status: Status) -> None:
        new = _new("not-terminal")
        record = _claim(store, new).record

        # Any ValueError: the message is the backend's.
        with pytest.raises(ValueError):  # noqa: PT011
            store.complete(new.scope, new.key, token=1, status=status, outcome=_OUTCOME, now=_T0)

        assert store.get(new.scope, new.key) == record
        assert len(_entries(store)) == 1

    def test_mark_unknown_records_reason(self, store: Store) -> None:
        new = _new("mark-unknown")
        before = _claim(store, new).record
        now = _T0 + _SECOND

        marked = store.mark_unknown(new.scope, new.key, token=1, reason="timeout", now=now)

        assert marked == replace(
            before,
            status=Status.UNKNOWN,
            reason="timeout",
            lease_expires_at=None,
            updated_at=now,
            ledger_head=marked.ledger_head,
        )
        assert marked.lease is None
        assert store.get(new.scope, new.key) == marked
        first, entry = _entries(store)
        assert _shape(entry) == (Event.MARKED_UNKNOWN, Status.CLAIMED, Status.UNKNOWN, 1, 1)
        assert (entry.at, entry.prev_hash, entry.hash) == (now, first.hash, marked.ledger_head)

    @pytest.mark.parametrize("op", _FENCED_WRITES)
    @pytest.mark.parametrize("token", [0, 2])
    def test_fenced_write_with_wrong_token_changes_nothing(
        self, store: Store, op: str, token: int
    ) -> None:
        new = _new("wrong-token")
        record = _claim(store, new).record

        with pytest.raises(LeaseLostError) as caught:
            _fenced_write(store, op, new.scope, new.key, token=token, now=_T0 + _SECOND)

        assert caught.value.to_dict()["token"] == token
        assert store.get(new.scope, new.key) == record
        assert len(_entries(store)) == 1
        # The real holder is unaffected.
        _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + _SECOND)
        assert len(_entries(store)) == 2

    @pytest.mark.parametrize("op", _FENCED_WRITES)
    @pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN])
    def test_fenced_write_on_settled_record_raises(
        self, store: Store, op: str, status: Status
    ) -> None:
        new = _new("settled-write")
        _claim(store, new)
        settled = _settle(store, new, status)

        with pytest.raises(LeaseLostError):
            _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + _SECOND)

        assert store.get(new.scope, new.key) == settled
        assert len(_entries(store)) == 2

    @pytest.mark.parametrize("op", _FENCED_WRITES)
    def test_fenced_write_on_missing_record_raises(self, store: Store, op: str) -> None:
        never = _new("missing")

        with pytest.raises(LeaseLostError):
            _fenced_write(store, op, never.scope, never.key, token=1, now=_T0)

        assert store.get(never.scope, never.key) is None
        assert _entries(store) == []

    def test_zombie_holder_cannot_write_after_takeover(self, store: Store) -> None:
        new = _new("zombie")
        _claim(store, new)  # holder A, token 1
        b = store.takeover(new.scope, new.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
        assert b.lease is not None

        for op in _FENCED_WRITES:
            with pytest.raises(LeaseLostError):
                _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + _LEASE + _SECOND)
        assert store.get(new.scope, new.key) == b.record

        done = _settle(store, new, Status.SUCCEEDED, token=b.lease.token, now=_T0 + 2 * _LEASE)
        assert (done.status, done.token, done.attempt, done.outcome) == (
            Status.SUCCEEDED,
            2,
            2,
            _OUTCOME,
        )
        events = [e.event for e in _entries(store)]
        assert events == [Event.CLAIMED, Event.TAKEN_OVER, Event.SUCCEEDED]

    def test_zombie_of_an_earlier_life_cannot_write_after_reclaim(self, store: Store) -> None:
        # A takes the key (token 1), loses it to B (token 2), B releases it, C claims it again:
        # A's late write must still be refused, so C's token must not restart at 1.
        new = _new("reclaimed-zombie")
        _claim(store, new)
        b = store.takeover(new.scope, new.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
        assert b.lease is not None
        store.release(new.scope, new.key, token=b.lease.token, reason="refused", now=_T0 + _LEASE)
        c = store.claim(new, now=_T0 + _LEASE + _SECOND, lease_for=_LEASE)
        assert c.lease is not None
        assert c.lease.token > b.lease.token

        for op in _FENCED_WRITES:
            with pytest.raises(LeaseLostError):
                _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + 2 * _LEASE)
        assert store.get(new.scope, new.key) == c.record

    def test_complete_after_expiry_without_takeover_succeeds(self, store: Store) -> None:
        # Fencing is by token, not by time: until someone takes over, the holder may still record
        # what the gateway answered, which beats leaving it to the Reconciler.
        new = _new("late-but-alone")
        _claim(store, new)

        done = _settle(store, new, Status.SUCCEEDED, now=_T0 + 2 * _LEASE)

        assert (done.status, done.outcome) == (Status.SUCCEEDED, _OUTCOME)

    # -- release ----------------------------------------------------------------------------------

    def test_release_removes_record_and_chain_continues(self, store: Store) -> None:
        new = _new("release")
        _claim(store, new)

        store.release(new.scope, new.key, token=1, reason="connection refused", now=_T0)

        assert store.get(new.scope, new.key) is None
        claimed, released = _entries(store)
        assert _shape(released) == (Event.RELEASED, Status.CLAIMED, None, 1, 1)
        assert released.prev_hash == claimed.hash
        now = _T0 + _SECOND
        again = store.claim(replace(new, fingerprint="fp_second"), now=now, lease_for=_LEASE)
        # Tokens only grow per key: the new life starts after the released one's token.
        assert again.lease == Lease(token=2, expires_at=now + _LEASE)
        assert (again.record.fingerprint, again.record.created_at) == ("fp_second", now)
        reclaimed = _entries(store)[-1]
        assert _shape(reclaimed) == (Event.CLAIMED, None, Status.CLAIMED, 2, 1)
        assert reclaimed.prev_hash == released.hash
        assert again.record.ledger_head == reclaimed.hash

    # -- get, newest, scan, purge -----------------------------------------------------------------

    def test_replay_view_matches_the_record(self, store: Store) -> None:
        # The replay path reads only these columns; they must say what get() says, in every
        # state a replay can meet.
        assert store.replay_view(_SCOPE, _key("absent")) is None
        states = {
            "claimed": None,
            "succeeded": Status.SUCCEEDED,
            "failed": Status.FAILED,
            "unknown": Status.UNKNOWN,
        }
        for label, status in states.items():
            new = _new(f"view-{label}")
            _claim(store, new)
            if status is not None:
                _settle(store, new, status)
            record = _require(store, new.scope, new.key)
            view = store.replay_view(new.scope, new.key)
            assert view == ReplayView(
                key=record.key,
                status=record.status,
                fingerprint=record.fingerprint,
                outcome=record.outcome,
                attempt=record.attempt,
                provider_key=record.provider_key,
            )

    def test_get_missing_returns_none(self, store: Store) -> None:
        new = _new("present")
        _claim(store, new)

        assert store.get(new.scope, _key("absent")) is None
        assert store.get(_OTHER_SCOPE, new.key) is None

    def test_reads_never_write(self, store: Store) -> None:
        expired, done = _new("read-expired"), _new("read-done")
        _claim(store, expired)
        _claim(store, done)
        _settle(store, done, Status.SUCCEEDED)
        records = [store.get(_SCOPE, n.key) for n in (expired, done)]
        ledger = _entries(store)

        store.get(_SCOPE, _key("absent"))
        store.newest(_SCOPE, "fam_none")
        assert len(store.scan(now=_T0 + 2 * _RETENTION, limit=10)) == 1
        store.entries(after=0, limit=10)
        store.heads(after=None, limit=10)
        store.checkpoints()

        assert [store.get(_SCOPE, n.key) for n in (expired, done)] == records
        assert _entries(store) == ledger

    def test_newest_returns_highest_generation_in_scope(self, store: Store) -> None:
        family = f"fam_{_digest('family')}"
        # Created out of generation order: newest means highest generation, not latest created.
        for offset, generation in enumerate((1, 2, 0)):
            new = _new(f"gen-{generation}", family=family, generation=generation)
            _claim(store, new, now=_T0 + offset * _SECOND)
        _claim(store, _new("other-family", family="fam_other", generation=9))
        _claim(store, _new("other-scope", scope=_OTHER_SCOPE, family=family, generation=7))
        gen2 = _new("gen-2")

        newest = store.newest(_SCOPE, family)

        assert newest == _require(store, _SCOPE, gen2.key)
        assert newest.generation == 2
        done = _settle(store, gen2, Status.SUCCEEDED)
        assert store.newest(_SCOPE, family) == done  # whatever its status
        other = store.newest(_OTHER_SCOPE, family)
        assert other is not None
        assert (other.scope, other.generation) == (_OTHER_SCOPE, 7)
        assert store.newest(_SCOPE, "fam_missing") is None
        assert store.newest(_OTHER_SCOPE, "fam_other") is None

    def test_newest_ignores_released_records(self, store: Store) -> None:
        family = "fam_released"
        _claim(store, _new("r-1", family=family, generation=1))
        top = _new("r-2", family=family, generation=2)
        _claim(store, top)
        store.release(top.scope, top.key, token=1, reason="refused", now=_T0)

        newest = store.newest(_SCOPE, family)

        assert newest is not None
        assert newest.generation == 1

    def _scan_fixture(self, store: Store) -> tuple[datetime, list[str]]:
        """Records of every kind; returns the scan instant and the keys due, oldest first."""
        now = _T0 + 2 * _SECOND + _LEASE
        unknown_other = _new("scan-f", scope=_OTHER_SCOPE)
        _claim(store, unknown_other, now=_T0 - 2 * _SECOND)
        _settle(store, unknown_other, Status.UNKNOWN)
        store.claim(_new("scan-live"), now=_T0 - 10 * _SECOND, lease_for=timedelta(hours=1))
        for label, status in (("scan-ok", Status.SUCCEEDED), ("scan-failed", Status.FAILED)):
            finished = _new(label)
            _claim(store, finished, now=_T0 - 5 * _SECOND)
            _settle(store, finished, status)
        expired, unknown, edge = _new("scan-a"), _new("scan-b"), _new("scan-edge")
        _claim(store, expired, now=_T0)
        _claim(store, unknown, now=_T0 + _SECOND)
        _settle(store, unknown, Status.UNKNOWN, now=_T0 + _SECOND)
        _claim(store, edge, now=_T0 + 2 * _SECOND)  # its lease expires exactly at ``now``
        return now, [r.key for r in (unknown_other, expired, unknown, edge)]

    def test_scan_finds_unknown_and_expired_oldest_first(self, store: Store) -> None:
        now, due = self._scan_fixture(store)

        found = store.scan(now=now, limit=100)

        assert [record.key for record in found] == due
        assert [record.scope for record in found] == [_OTHER_SCOPE, _SCOPE, _SCOPE, _SCOPE]
        assert {record.status for record in found} == {Status.CLAIMED, Status.UNKNOWN}
        # One microsecond earlier the newest lease is still live.
        assert [r.key for r in store.scan(now=now - _MICRO, limit=100)] == due[:-1]

    def test_scan_honours_limit(self, store: Store) -> None:
        now, due = self._scan_fixture(store)

        assert [record.key for record in store.scan(now=now, limit=2)] == due[:2]
        assert [record.key for record in store.scan(now=now, limit=1)] == due[:1]

    def test_purge_removes_only_old_terminal_records(self, store: Store) -> None:
        now = _T0 + _RETENTION + timedelta(hours=1)
        cutoff = now - _RETENTION
        plan = {
            "purge-ok": (Status.SUCCEEDED, _T0),
            "purge-failed": (Status.FAILED, _T0 + _SECOND),
            "purge-edge": (Status.SUCCEEDED, cutoff),
            "keep-fresh": (Status.SUCCEEDED, cutoff + _MICRO),
        }
        for label, (status, at) in plan.items():
            _claim(store, _new(label))
            _settle(store, _new(label), status, now=at)
        ancient = _T0 - timedelta(days=365)
        stuck, unknown = _new("keep-claimed"), _new("keep-unknown")
        _claim(store, stuck, now=ancient)
        _claim(store, unknown, now=ancient)
        _settle(store, unknown, Status.UNKNOWN, now=ancient)
        heads = {_key(label): _require(store, _SCOPE, _key(label)).ledger_head for label in plan}
        count = len(_entries(store))

        assert store.purge(now=now, retention=_RETENTION, limit=100) == 3

        gone = {_key(label): status for label, (status, _) in plan.items() if label != "keep-fresh"}
        for key in heads:
            assert (store.get(_SCOPE, key) is None) == (key in gone)
        assert _require(store, _SCOPE, stuck.key).status is Status.CLAIMED
        assert _require(store, _SCOPE, unknown.key).status is Status.UNKNOWN
        purged = _entries(store)[count:]
        assert {e.key: e.status_from for e in purged} == gone
        assert {e.key: e.prev_hash for e in purged} == {key: heads[key] for key in gone}
        assert {(e.event, e.status_to, e.at) for e in purged} == {(Event.PURGED, None, now)}

    def test_purge_never_touches_claimed_or_unknown(self, store: Store) -> None:
        stuck, unknown = _new("never-purged-claimed"), _new("never-purged-unknown")
        _claim(store, stuck)
        _claim(store, unknown)
        _settle(store, unknown, Status.UNKNOWN)
        records = [store.get(_SCOPE, n.key) for n in (stuck, unknown)]

        far = _T0 + timedelta(days=3650)
        assert store.purge(now=far, retention=timedelta(0), limit=100) == 0

        assert [store.get(_SCOPE, n.key) for n in (stuck, unknown)] == records
        assert len(_entries(store)) == 3

    def test_purge_honours_limit(self, store: Store) -> None:
        news = [_new(f"limit-{i}") for i in range(5)]
        for new in news:
            _claim(store, new)
            _settle(store, new, Status.SUCCEEDED)
        now = _T0 + _RETENTION

        counts = [store.purge(now=now, retention=_RETENTION, limit=2) for _ in range(4)]

        assert counts == [2, 2, 1, 0]
        assert all(store.get(_SCOPE, new.key) is None for new in news)
        assert [e.event for e in _entries(store)].count(Event.PURGED) == 5

    def test_purged_key_is_claimable_again(self, store: Store) -> None:
        new = _new("purged-again")
        _claim(store, new)
        _settle(store, new, Status.FAILED)
        now = _T0 + _RETENTION
        assert store.purge(now=now, retention=_RETENTION, limit=10) == 1
        purged = _entries(store)[-1]

        again = store.claim(new, now=now, lease_for=_LEASE)

        assert again.lease == Lease(token=2, expires_at=now + _LEASE)
        reclaimed = _entries(store)[-1]
        assert _shape(reclaimed) == (Event.CLAIMED, None, Status.CLAIMED, 2, 1)
        assert reclaimed.prev_hash == purged.hash
        assert again.record.ledger_head == reclaimed.hash

    # -- ledger -----------------------------------------------------------------------------------

    def test_one_entry_per_transition_in_sequence(self, store: Store) -> None:
        expected = _exercise(store)

        ledger = _entries(store)

        got = [(e.key, e.event, e.status_from, e.status_to, e.token, e.at) for e in ledger]
        assert got[:-2] == expected[:-2]
        assert sorted(got[-2:]) == expected[-2:]
        seqs = [e.seq for e in ledger]
        assert seqs == sorted(set(seqs)), "entry sequence numbers must strictly increase"
        assert seqs[0] > 0

    def test_entries_carry_amount_currency_and_json_detail(self, store: Store) -> None:
        _exercise(store)

        for entry in _entries(store):
            expected = (990, "usd") if entry.scope == _OTHER_SCOPE else (1250, "eur")
            assert (entry.amount, entry.currency) == expected
            assert isinstance(json.loads(entry.detail), dict)

    def test_entry_hashes_recompute(self, store: Store) -> None:
        _exercise(store)

        for entry in _entries(store):
            assert entry.hash == _recomputed(entry), f"entry {entry.seq} does not hash to itself"

    def test_entries_chain_per_key(self, store: Store) -> None:
        _exercise(store)

        chains: dict[tuple[str, str], list[Entry]] = {}
        for entry in _entries(store):
            chains.setdefault((entry.scope, entry.key), []).append(entry)
        assert len(chains) == 4
        for (scope, key), chain in chains.items():
            assert chain[0].prev_hash == GENESIS
            for previous, entry in itertools.pairwise(chain):
                assert entry.prev_hash == previous.hash, f"chain of {key} broken at {entry.seq}"
            record = store.get(scope, key)
            if record is not None:
                assert record.ledger_head == chain[-1].hash

    def test_entries_paginate(self, store: Store) -> None:
        _exercise(store)
        ledger = _entries(store)
        assert len(ledger) == 13

        pages: list[list[Entry]] = []
        after = 0
        for _ in range(len(ledger) + 1):  # bounded: a store that repeats a page must not hang
            if not (page := list(store.entries(after=after, limit=5))):
                break
            pages.append(page)
            after = page[-1].seq

        assert [len(page) for page in pages] == [5, 5, 3]
        assert [e for page in pages for e in page] == ledger
        assert list(store.entries(after=ledger[3].seq, limit=1)) == [ledger[4]]
        assert list(store.entries(after=ledger[-1].seq, limit=5)) == []

    def test_heads_list_live_records_in_order(self, store: Store) -> None:
        _exercise(store)
        for label, scope in (("heads-1", _SCOPE), ("heads-2", _OTHER_SCOPE), ("heads-3", "t_0")):
            _claim(store, _new(label, scope=scope))
        gone = _new("heads-released")
        _claim(store, gone)
        store.release(_SCOPE, gone.key, token=1, reason="refused", now=_T0)
        expected = []
        for scope, key in sorted({(e.scope, e.key) for e in _entries(store)}):
            record = store.get(scope, key)
            if record is not None:
                expected.append((scope, key, record.ledger_head))
        assert len(expected) == 5  # ledger-c, ledger-d and three heads-*

        assert [tuple(row) for row in store.heads(after=None, limit=100)] == expected
        pages: list[tuple[str, ...]] = []
        after: tuple[str, str] | None = None
        for _ in range(len(expected) + 1):  # bounded, as above
            if not (page := [tuple(row) for row in store.heads(after=after, limit=2)]):
                break
            pages.extend(page)
            after = (page[-1][0], page[-1][1])
        assert pages == expected
        assert list(store.heads(after=expected[-1][:2], limit=2)) == []

    def test_checkpoints_round_trip(self, store: Store) -> None:
        _exercise(store)
        ledger = _entries(store)
        assert list(store.checkpoints()) == []
        first = _checkpoint(1, ledger[:6], GENESIS, at=_T0 + timedelta(hours=1, microseconds=7))
        second = _checkpoint(2, ledger[6:], first.hash, at=_T0 + timedelta(hours=2))

        store.append_checkpoint(first)
        store.append_checkpoint(second)

        assert list(store.checkpoints()) == [first, second]
        for checkpoint in store.checkpoints():
            _assert_utc(checkpoint.at)

    def test_duplicate_checkpoint_number_conflicts(self, store: Store) -> None:
        _exercise(store)
        ledger = _entries(store)
        first = _checkpoint(1, ledger[:6], GENESIS, at=_T0)
        second = _checkpoint(2, ledger[6:], first.hash, at=_T0 + _SECOND)
        store.append_checkpoint(first)
        store.append_checkpoint(second)
        rival = _checkpoint(2, ledger[6:9], first.hash, at=_T0 + 2 * _SECOND)

        for duplicate in (rival, first):
            with pytest.raises(ConflictError):
                store.append_checkpoint(duplicate)

        assert list(store.checkpoints()) == [first, second]

    # -- values -----------------------------------------------------------------------------------

    def test_timestamps_round_trip_as_aware_utc(self, store: Store) -> None:
        new = _new("timestamps")
        claimed_at = datetime(2026, 7, 4, 23, 59, 59, 999_999, tzinfo=UTC)
        lease_for = timedelta(seconds=5, microseconds=1)
        store.claim(new, now=claimed_at, lease_for=lease_for)
        taken_at = claimed_at + lease_for + _MICRO
        store.takeover(new.scope, new.key, token=1, now=taken_at, lease_for=lease_for)
        live = _require(store, new.scope, new.key)
        assert live.lease_expires_at == taken_at + lease_for
        _assert_utc(live.lease_expires_at)
        done_at = datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

        _settle(store, new, Status.SUCCEEDED, token=2, now=done_at)

        record = _require(store, new.scope, new.key)
        assert (record.created_at, record.updated_at) == (claimed_at, done_at)
        assert (record.created_at.microsecond, record.updated_at.microsecond) == (999_999, 999_999)
        ledger = _entries(store)
        assert [e.at for e in ledger] == [claimed_at, taken_at, done_at]
        for value in (record.created_at, record.updated_at, *(e.at for e in ledger)):
            _assert_utc(value)

    @pytest.mark.parametrize("text", _INJECTIONS)
    def test_injection_strings_stored_literally(self, store: Store, text: str) -> None:
        bystander = _new("bystander")
        _claim(store, bystander)
        intent = canonical_json({"amount": 1250, "currency": "eur", "reference": text})
        new = _new("injection", scope=text, intent=intent, fingerprint=text)
        outcome = canonical_json({"error": {"message": text}})
        _claim(store, new)

        marked = store.mark_unknown(text, new.key, token=1, reason=text, now=_T0 + _SECOND)
        assert (marked.reason, _require(store, text, new.key).reason) == (text, text)
        store.takeover(text, new.key, token=1, now=_T0 + 2 * _SECOND, lease_for=_LEASE)
        now = _T0 + 3 * _SECOND
        store.complete(text, new.key, token=2, status=Status.FAILED, outcome=outcome, now=now)

        record = _require(store, text, new.key)
        assert (record.scope, record.fingerprint) == (text, text)
        assert (record.intent, record.outcome) == (intent, outcome)
        assert store.get(_SCOPE, new.key) is None
        assert _require(store, _SCOPE, bystander.key).status is Status.CLAIMED
        assert [e.scope for e in _entries(store) if e.key == new.key] == [text] * 4
        heads = [tuple(row) for row in store.heads(after=None, limit=10)]
        assert (text, new.key, record.ledger_head) in heads


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


class StoreContract(_StoreChecks):
    """The conformance suite of the sync ``Store`` contract (DESIGN §7).

    Subclass it in a pytest module and provide a ``store`` fixture that returns a fresh, empty
    store for every test (and closes it afterwards, if it needs closing). The store must be
    thread-safe: the concurrency checks call it from 16 threads at once.
    """

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

    def test_conforms_to_async_store_protocol(self, astore: AsyncStore, store: Store) -> None:
        # ``store`` is requested only so that the teardown closes ``astore`` on its loop.
        assert isinstance(astore, AsyncStore)
        names = [name for name in dir(AsyncStore) if not name.startswith("_")]
        assert names
        for name in names:
            assert inspect.iscoroutinefunction(getattr(astore, name)), f"{name} is not async"

"""verify_ledger while transitions are being written (every backend).

A record written after verification read the ledger has a head past what was read; verification
reads the ledger on from there and finds it, where it used to report the tail of the record's
chain as deleted. Another worker's transitions run around a chosen call of verification (no
threads, no timing). The stores whose numbers become visible out of order have their own tests:
PostgreSQL in tests/faults/test_postgres_seal.py, Redis Cluster in
tests/faults/test_redis_cluster_faults.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from payonce import Status, Store, verify_ledger
from payonce._model import NewRecord

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
SCOPE = "tenant-a"


def _nothing() -> None:
    pass


class _Busy:
    """``store`` as verification sees it: ``before`` and ``after`` (another worker's writes) run
    around its first call of ``at``."""

    def __init__(
        self,
        store: Store,
        at: str,
        before: Callable[[], None] = _nothing,
        after: Callable[[], None] = _nothing,
    ) -> None:
        self._store, self._at, self._before, self._after = store, at, before, after
        self._done = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name != self._at or self._done:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            self._done = True
            self._before()
            answer = method(*args, **kwargs)
            self._after()
            return answer

        return call


def _claimed(store: Store, key: str) -> int:
    new = NewRecord(SCOPE, key, "fp", "{}", "po1_" + key, "charge", 100, "usd", None, 0)
    claimed = store.claim(new, now=T0, lease_for=LEASE)
    assert claimed.lease is not None
    return claimed.lease.token


def test_a_record_completed_after_the_ledger_was_read_verifies(store: Store) -> None:
    for n in range(3):
        _claimed(store, f"k1_other_{n}")
    token = _claimed(store, "k1_moving")

    def complete() -> None:
        store.complete(
            SCOPE, "k1_moving", token=token, status=Status.SUCCEEDED, outcome="{}", now=T0
        )

    # The completion lands after the entries were read, before the records' heads are.
    report = verify_ledger(_Busy(store, "heads", before=complete))  # type: ignore[arg-type]
    assert (report.entries, report.records) == (5, 4)  # its entry was read on


def test_a_record_that_moved_on_again_after_its_head_was_read_verifies(store: Store) -> None:
    # Marked unknown before the heads are read, taken over after: the head read is an entry
    # of its key that is no longer the newest when the ledger is read on.
    token = _claimed(store, "k1_moving")
    late = T0 + LEASE

    def mark_unknown() -> None:
        store.mark_unknown(SCOPE, "k1_moving", token=token, reason="lost", now=T0)

    def take_over() -> None:
        taken = store.takeover(SCOPE, "k1_moving", token=token, now=late, lease_for=LEASE)
        assert taken.lease is not None

    busy = _Busy(store, "heads", before=mark_unknown, after=take_over)
    report = verify_ledger(busy)  # type: ignore[arg-type]
    assert (report.entries, report.records) == (3, 1)


def test_a_horizon_lost_to_an_outage_fails_the_verification(store: Store) -> None:
    # Only a refusal for good (a role that may only read) reads on without the horizon; an
    # outage or a timeout, perhaps behind busy writers, fails: verify again later.
    from payonce import StoreUnavailableError  # noqa: PLC0415

    _claimed(store, "k1_x")

    class _Down(_Busy):
        def ledger_horizon(self) -> int:
            raise StoreUnavailableError("the store timed out; retry", operation="ledger_horizon")

    with pytest.raises(StoreUnavailableError, match="timed out"):
        verify_ledger(_Down(store, "entries"))  # type: ignore[arg-type]


def test_a_horizon_refused_for_good_reads_to_the_end_with_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    from payonce import StoreError  # noqa: PLC0415

    _claimed(store, "k1_x")

    class _ReadOnly(_Busy):
        def ledger_horizon(self) -> int:
            raise StoreError("permission denied for function payonce_ledger_horizon")

    with caplog.at_level(logging.WARNING, logger="payonce.ledger"):
        report = verify_ledger(_ReadOnly(store, "entries"))  # type: ignore[arg-type]
    assert (report.entries, report.records) == (1, 1)
    assert any("refused the ledger's horizon" in r.getMessage() for r in caplog.records)


def test_a_refused_horizon_judges_no_gap_in_a_ledger_read_beside_writers(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # Without a horizon, a ledger read page by page (and, on Redis, bucket by bucket) beside
    # writers may see a later entry before an earlier one becomes visible. Here the purge entry
    # of a record gone since (nothing else refers to it) is not there yet when the first page
    # is read: without a horizon that is not taken for a deletion, even on a gapless store.
    from payonce import StoreError  # noqa: PLC0415

    token = _claimed(store, "k1_paid")
    store.complete(SCOPE, "k1_paid", token=token, status=Status.SUCCEEDED, outcome="{}", now=T0)
    _claimed(store, "k1_before")
    assert store.purge(now=T0 + timedelta(days=2), retention=timedelta(days=1), limit=10) == 1
    _claimed(store, "k1_after")
    purged = next(e.seq for e in store.entries(after=0, limit=10) if e.event.value == "purged")

    class _ReadOnly(_Busy):
        def ledger_horizon(self) -> int:
            raise StoreError("permission denied for function payonce_ledger_horizon")

        def entries(self, *, after: int, limit: int) -> Any:
            first = not self._done
            self._done = True
            read = self._store.entries(after=after, limit=limit)
            return [e for e in read if e.seq != purged] if first else read

    with caplog.at_level(logging.WARNING, logger="payonce.ledger"):
        report = verify_ledger(_ReadOnly(store, "never"))  # type: ignore[arg-type]
    assert (report.entries, report.records) == (4, 2)

"""The Reconciler: crashed workers and lost answers resolved against the provider, never a
second movement, never a deleted record, and nothing left UNKNOWN without a review flag (I4, I7).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from payonce import (
    AsyncReconciler,
    ConfigurationError,
    Event,
    Guard,
    Intent,
    OutcomeUnknownError,
    PaymentDeclinedError,
    Reconciler,
    ReconcileReport,
    RetryPolicy,
    Status,
    Store,
    StoreUnavailableError,
    verify_ledger,
)
from payonce._model import GatewayAnswer
from payonce._reconciler import REVIEW
from payonce.gateways.simulated import SimulatedGateway
from payonce.stores import MemoryStore
from payonce.stores._threaded import ThreadedAsyncStore
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET

INTENT = Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-9")
LEASE = timedelta(seconds=60)


class Crash(BaseException):
    """Stands in for a killed worker at a fault point."""


def _crash_at(point: str) -> object:
    def faults(name: str) -> None:
        if name == point:
            raise Crash

    return faults


def _guard(store: Store, clock: ManualClock, gateway: SimulatedGateway, **kw: object) -> Guard:
    return Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway, lease=LEASE, **kw)  # type: ignore[arg-type]


def _status(store: Store, guard: Guard) -> Status | None:
    record = store.get(SCOPE, guard.key_for(INTENT))
    return None if record is None else record.status


@pytest.mark.parametrize("idempotent", [True, False], ids=["dedup", "no-dedup"])
def test_r7_crash_after_the_charge_is_adopted_by_lookup(
    store: Store, clock: ManualClock, idempotent: bool
) -> None:
    gateway = SimulatedGateway(idempotent=idempotent, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    reconciler = Reconciler(store, gateway, clock=clock)
    assert reconciler.run_once().scanned == 0  # the lease is still live
    clock.advance(LEASE)
    report = reconciler.run_once()
    assert (report.scanned, report.succeeded, report.resent) == (1, 1, 0)
    guard = _guard(store, clock, gateway)
    assert _status(store, guard) is Status.SUCCEEDED
    assert guard.execute(INTENT).replayed
    assert len(gateway.movements()) == 1
    assert gateway.calls_received == 1
    verify_ledger(store)


class _GarbledLookup(SimulatedGateway):
    """Answers lookups with an object holding a lone surrogate, which no store can write."""

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        found = super().lookup(intent, provider_key, key=key, since=since)
        return None if found is None else replace(found, value={"id": "ch_\ud800"})


def test_an_answer_that_cannot_be_recorded_is_flagged_not_a_failed_pass(
    store: Store, clock: ManualClock
) -> None:
    gateway = _GarbledLookup(idempotent=True, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    clock.advance(LEASE)
    report = Reconciler(store, gateway, clock=clock).run_once()
    assert (report.scanned, report.flagged, report.succeeded) == (1, 1, 0)
    record = store.get(SCOPE, _guard(store, clock, gateway).key_for(INTENT))
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert "cannot be recorded" in (record.reason or "")
    assert len(gateway.movements()) == 1
    verify_ledger(store)


def test_r6_crash_before_the_call_is_resent_inside_the_window(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=True, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("after_claim")).execute(INTENT)
    clock.advance(LEASE)
    report = Reconciler(store, gateway, clock=clock).run_once()
    assert (report.succeeded, report.resent, report.flagged) == (1, 1, 0)
    assert len(gateway.movements()) == 1
    objects = gateway.objects()
    guard = _guard(store, clock, gateway)
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert objects[0].provider_key == record.provider_key  # the key fixed at claim


class _SlowLookup(SimulatedGateway):
    """A lookup that takes longer than the Reconciler's lease (the injected clock moves past
    it), and may let another worker take the record over meanwhile."""

    def __init__(self, store: Store, clock: ManualClock, *, taken_meanwhile: bool) -> None:
        super().__init__(idempotent=True, clock=clock)
        self.store, self.clock, self.taken_meanwhile = store, clock, taken_meanwhile

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        found = super().lookup(intent, provider_key, key=key, since=since)
        self.clock.advance(LEASE + timedelta(seconds=1))
        if self.taken_meanwhile:
            record = self.store.get(SCOPE, key)
            assert record is not None
            taken = self.store.takeover(
                SCOPE, key, token=record.token, now=self.clock.now(), lease_for=LEASE
            )
            assert taken.lease is not None
        return found


def _crashed_after_claim(store: Store, clock: ManualClock, gateway: SimulatedGateway) -> Guard:
    """A guard whose worker died right after claiming ``INTENT``: nothing was sent."""
    guard = _guard(store, clock, gateway, faults=_crash_at("after_claim"))
    with pytest.raises(Crash):
        guard.execute(INTENT)
    return guard


def _events(store: Store, key: str) -> list[Event]:
    return [entry.event for entry in store.entries(after=0, limit=100) if entry.key == key]


def test_a_lease_that_ran_out_during_a_slow_lookup_is_taken_again_before_the_resend(
    store: Store, clock: ManualClock
) -> None:
    gateway = _SlowLookup(store, clock, taken_meanwhile=False)
    guard = _crashed_after_claim(store, clock, gateway)
    clock.advance(LEASE)
    report = Reconciler(store, gateway, clock=clock, lease=LEASE).run_once()
    assert (report.succeeded, report.resent, report.skipped) == (1, 1, 0)
    key = guard.key_for(INTENT)
    assert _events(store, key) == [
        Event.CLAIMED,
        Event.TAKEN_OVER,
        Event.TAKEN_OVER,  # the lease taken again, fenced on its own token, before the resend
        Event.SUCCEEDED,
    ]
    assert len(gateway.movements()) == 1
    verify_ledger(store)


def test_no_resend_after_a_slow_lookup_once_another_worker_took_the_record(
    store: Store, clock: ManualClock
) -> None:
    gateway = _SlowLookup(store, clock, taken_meanwhile=True)
    guard = _crashed_after_claim(store, clock, gateway)
    clock.advance(LEASE)
    report = Reconciler(store, gateway, clock=clock, lease=LEASE).run_once()
    assert (report.succeeded, report.resent, report.skipped) == (0, 0, 1)
    assert gateway.calls_received == 0  # the other worker holds it: it resends, not this pass
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert (record.status, record.token) == (Status.CLAIMED, 3)
    verify_ledger(store)


def test_no_resend_that_could_end_past_the_window_it_is_flagged(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=True, clock=clock)
    _crashed_after_claim(store, clock, gateway)
    clock.advance(timedelta(hours=24) - timedelta(seconds=30))  # inside, but not by a lease
    report = Reconciler(store, gateway, clock=clock, lease=LEASE).run_once()
    assert (report.flagged, report.resent, report.succeeded) == (1, 0, 0)
    assert "too close to the end of its idempotency window" in next(iter(report.reasons.values()))
    assert gateway.calls_received == 0


def test_the_window_is_read_again_after_a_slow_lookup(store: Store, clock: ManualClock) -> None:
    # Due two minutes before the window ends; the lookup takes a lease and a second, after
    # which a resend could end past the window.
    gateway = _SlowLookup(store, clock, taken_meanwhile=False)
    _crashed_after_claim(store, clock, gateway)
    clock.advance(timedelta(hours=24) - timedelta(minutes=2))
    report = Reconciler(store, gateway, clock=clock, lease=LEASE).run_once()
    assert (report.flagged, report.resent, report.succeeded) == (1, 0, 0)
    assert gateway.calls_received == 0
    assert gateway.movements() == []


def test_not_found_without_provider_dedup_is_flagged_never_resent(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("after_claim")).execute(INTENT)
    clock.advance(LEASE)
    reconciler = Reconciler(store, gateway, clock=clock, recheck=timedelta(hours=1))
    report = reconciler.run_once()
    assert (report.flagged, report.resent, report.succeeded) == (1, 0, 0)
    guard = _guard(store, clock, gateway)
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert (record.reason or "").startswith(REVIEW)
    assert gateway.calls_received == 0
    assert reconciler.run_once().skipped == 1  # resting before the next look
    clock.advance(timedelta(hours=1))
    assert reconciler.run_once().flagged == 1
    with pytest.raises(OutcomeUnknownError):
        guard.execute(INTENT)
    assert gateway.movements() == []
    verify_ledger(store)


def test_r7b_after_the_window_the_charge_is_found_by_its_payonce_key(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=True, clock=clock)
    gateway.script(["after_send"])
    guard = _guard(store, clock, gateway, retry=RetryPolicy.never())
    with pytest.raises(OutcomeUnknownError):
        guard.execute(INTENT)
    clock.advance(timedelta(hours=25))  # the provider forgot the key
    report = Reconciler(store, gateway, clock=clock).run_once()
    assert (report.succeeded, report.resent) == (1, 0)
    assert gateway.calls_received == 1
    assert len(gateway.movements()) == 1


def test_a_purged_key_claimed_again_never_adopts_its_earlier_lifes_charge(
    store: Store, clock: ManualClock
) -> None:
    # A key is claimable again once purged, and its provider objects keep the same payonce_key.
    # Before, the Reconciler's lookup found the purged life's 5000 charge and recorded it as
    # the new 7000 payment's success: no money moved for it, and audit() matched it.
    gateway = SimulatedGateway(idempotent=True, clock=clock)
    earlier = _guard(store, clock, gateway).execute(INTENT)
    clock.advance(timedelta(days=31))
    assert store.purge(now=clock.now(), retention=timedelta(days=30), limit=10) == 1
    again = replace(INTENT, amount=7000)  # the same reference: the same key
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("after_claim")).execute(again)
    clock.advance(LEASE)
    report = Reconciler(store, gateway, clock=clock).run_once()
    assert (report.succeeded, report.resent) == (1, 1)  # inside the window: sent, once
    outcome = _guard(store, clock, gateway).execute(again)
    assert outcome.replayed
    assert outcome.value["amount"] == 7000
    assert outcome.value["id"] != earlier.value["id"]
    assert [m.amount for m in gateway.movements()] == [5000, 7000]
    assert Reconciler(store, gateway, clock=clock).audit().discrepancies == []


def test_the_lookup_of_a_purged_key_claimed_again_sees_only_the_new_life(
    store: Store, clock: ManualClock
) -> None:
    # Past the provider's window only a lookup may decide: it must find the new life's charge,
    # not the purged one's (the oldest object of that payonce_key).
    gateway = SimulatedGateway(idempotent=True, clock=clock)
    _guard(store, clock, gateway).execute(INTENT)
    clock.advance(timedelta(days=31))
    store.purge(now=clock.now(), retention=timedelta(days=30), limit=10)
    again = replace(INTENT, amount=7000)
    gateway.script(["after_send"])
    with pytest.raises(OutcomeUnknownError):
        _guard(store, clock, gateway, retry=RetryPolicy.never()).execute(again)
    clock.advance(timedelta(hours=25))  # the provider forgot the key
    report = Reconciler(store, gateway, clock=clock).run_once()
    assert (report.succeeded, report.resent) == (1, 0)
    outcome = _guard(store, clock, gateway).execute(again)
    assert outcome.value["amount"] == 7000
    assert [m.amount for m in gateway.movements()] == [5000, 7000]


class _LookupWithoutSince(SimulatedGateway):
    """A gateway written before lookups took ``since``."""

    def lookup(  # type: ignore[override]
        self, intent: Intent, provider_key: str, *, key: str
    ) -> GatewayAnswer | None:
        return super().lookup(intent, provider_key, key=key)


def test_a_gateway_whose_lookup_takes_no_since_still_resolves_and_is_warned_about(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Passing since to it raised TypeError on every lookup, and each record went to review.
    gateway = _LookupWithoutSince(idempotent=True, clock=clock)
    gateway.script(["after_send"])
    with pytest.raises(OutcomeUnknownError):
        _guard(store, clock, gateway, retry=RetryPolicy.never()).execute(INTENT)
    clock.advance(timedelta(hours=25))  # past the window: only a lookup may decide
    with caplog.at_level(logging.WARNING, logger="payonce.reconciler"):
        reconciler = Reconciler(store, gateway, clock=clock)
    assert any("lookup takes no since" in r.getMessage() for r in caplog.records)
    report = reconciler.run_once()
    assert (report.succeeded, report.flagged) == (1, 0)
    assert len(gateway.movements()) == 1


def test_a_declined_attempt_found_by_lookup_is_recorded_failed(
    store: Store, clock: ManualClock
) -> None:
    # The provider declined, and the answer was lost on the way back.
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    gateway.script(["after_send"])
    decline = Intent("charge", 5000, "usd", payment_method="tok_chargeDeclined", reference="r")
    with pytest.raises(OutcomeUnknownError):
        _guard(store, clock, gateway).execute(decline)
    assert Reconciler(store, gateway, clock=clock).run_once().failed == 1
    with pytest.raises(PaymentDeclinedError) as caught:
        _guard(store, clock, gateway).execute(decline)
    assert caught.value.replayed
    assert gateway.movements() == []


def test_two_reconcilers_never_act_on_one_record(store: Store, clock: ManualClock) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    clock.advance(LEASE)
    first = Reconciler(store, gateway, clock=clock)
    second = Reconciler(store, gateway, clock=clock)
    due = store.scan(now=clock.now(), limit=10)
    assert first.run_once().succeeded == 1
    # The second saw the same record before the first took it: its fenced takeover is refused.
    stale = due[0]
    taken = store.takeover(
        stale.scope, stale.key, token=stale.token, now=clock.now(), lease_for=LEASE
    )
    assert taken.lease is None
    assert second.run_once().scanned == 0
    assert gateway.lookups_received == 1


@pytest.mark.parametrize("idempotent", [True, False], ids=["dedup", "no-dedup"])
def test_async_reconciler_resolves_the_same_as_the_sync_one(
    store: Store, clock: ManualClock, idempotent: bool
) -> None:
    gateway = SimulatedGateway(idempotent=idempotent, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    clock.advance(LEASE)
    report = asyncio.run(AsyncReconciler(store, gateway, clock=clock).run_once())
    assert (report.scanned, report.succeeded) == (1, 1)
    assert _guard(store, clock, gateway).execute(INTENT).replayed
    assert len(gateway.movements()) == 1
    verify_ledger(store)


def test_async_reconciler_run_stops_when_told(store: Store, clock: ManualClock) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    reconciler = AsyncReconciler(store, gateway, clock=clock)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(reconciler.run(stop, interval=timedelta(milliseconds=1)))
        await asyncio.sleep(0)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(main())
    assert gateway.lookups_received == 0


def _resting_in_review(
    store: Store, clock: ManualClock, count: int
) -> tuple[SimulatedGateway, Reconciler]:
    """``count`` records the provider cannot settle (no dedup, nothing found), flagged for
    review by one pass of the returned Reconciler (recheck 1 h); and its gateway."""
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    for n in range(count):
        intent = Intent("charge", 5000, "usd", payment_method="tok_visa", reference=f"stuck-{n}")
        with pytest.raises(Crash):
            _guard(store, clock, gateway, faults=_crash_at("after_claim")).execute(intent)
    clock.advance(LEASE)
    reconciler = Reconciler(store, gateway, clock=clock, recheck=timedelta(hours=1))
    assert reconciler.run_once(batch=count).flagged == count
    return gateway, reconciler


def test_records_resting_in_review_do_not_starve_newer_ones(
    store: Store, clock: ManualClock
) -> None:
    # Three records the provider cannot settle (no dedup, nothing found): flagged for review.
    gateway, reconciler = _resting_in_review(store, clock, 3)
    # A newer crash after the charge: oldest first, the scan meets the three resting records
    # before it, and a batch of 2 must still reach it.
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    clock.advance(LEASE)
    report = reconciler.run_once(batch=2)
    assert (report.succeeded, report.skipped, report.flagged) == (1, 3, 0)
    assert _status(store, _guard(store, clock, gateway)) is Status.SUCCEEDED
    assert len(gateway.movements()) == 1
    verify_ledger(store)


def test_run_waits_after_a_pass_that_resolved_nothing(store: Store, clock: ManualClock) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("after_claim")).execute(INTENT)
    clock.advance(LEASE)
    reconciler = Reconciler(store, gateway, clock=clock, recheck=timedelta(hours=1))
    assert reconciler.run_once().flagged == 1

    class CountingStop(threading.Event):
        """Stops after the first wait: a pass that resolved nothing must wait, not spin."""

        def __init__(self) -> None:
            super().__init__()
            self.waits = 0

        def wait(self, timeout: float | None = None) -> bool:
            self.waits += 1
            self.set()
            return True

    stop = CountingStop()
    lookups = gateway.lookups_received
    reconciler.run(stop, interval=timedelta(seconds=30), batch=10)
    assert stop.waits == 1  # one idle pass, then the wait (which stopped it)
    assert gateway.lookups_received == lookups  # the resting record was not asked about again


def test_a_review_backlog_past_the_widening_bound_is_logged(
    store: Store,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from payonce import _reconciler  # noqa: PLC0415

    monkeypatch.setattr(_reconciler, "_WIDEN", 2)
    _, reconciler = _resting_in_review(store, clock, 3)
    with caplog.at_level("WARNING", logger="payonce.reconciler"):
        report = reconciler.run_once(batch=1)  # widens to 2 records at most: all resting
    assert (report.scanned, report.skipped) == (2, 2)
    assert any("flagged for review" in r.getMessage() for r in caplog.records)


def test_widening_past_a_review_backlog_doubles_the_scan_each_time(
    store: Store, clock: ManualClock
) -> None:
    # 30 records resting in review, then one newer record due: a pass of batch 1 must widen its
    # scan past all of them. Growing the limit one batch at a time read 1 + 2 + ... + 31 = 496
    # records in 31 scans; doubling it reads 63 in 6 (the last scan returns fewer than asked).
    gateway, reconciler = _resting_in_review(store, clock, 30)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    clock.advance(LEASE)
    scans = _outage_on_scans(store, 0, most=10)
    report = reconciler.run_once(batch=1)
    assert (report.succeeded, report.skipped) == (1, 30)
    assert scans == [1, 2, 4, 8, 16, 32]
    assert _status(store, _guard(store, clock, gateway)) is Status.SUCCEEDED


def _outage_on_scans(store: Store, failing: int, *, most: int) -> list[int]:
    """Make the store's first ``failing`` scans fail as an outage; return the list each scan's
    limit is appended to. A loop that scans more than ``most`` times fails the test at once
    instead of spinning until the test timeout."""
    scans: list[int] = []
    real_scan = store.scan

    def scan(*, now: object, limit: int) -> object:
        scans.append(limit)
        if len(scans) > most:
            raise AssertionError(f"the loop scanned {len(scans)} times; it should have stopped")
        if len(scans) <= failing:
            raise StoreUnavailableError("the store went away", operation="scan")
        return real_scan(now=now, limit=limit)  # type: ignore[arg-type]

    store.scan = scan  # type: ignore[method-assign]
    return scans


class _StopAfterWaits(threading.Event):
    """A stop event whose ``waits``-th wait sets it; earlier waits return at once."""

    def __init__(self, waits: int) -> None:
        super().__init__()
        self.left = waits

    def wait(self, timeout: float | None = None) -> bool:
        self.left -= 1
        if self.left == 0:
            self.set()
        return self.is_set()


def test_run_waits_out_a_store_outage_and_keeps_going(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    reconciler = Reconciler(store, gateway, clock=clock)
    scans = _outage_on_scans(store, 1, most=2)
    stop = _StopAfterWaits(2)
    with caplog.at_level("WARNING", logger="payonce.reconciler"):
        reconciler.run(stop, interval=timedelta(seconds=1), batch=5)
    assert len(scans) == 2  # the outage was waited out, then the loop scanned again
    assert any("unavailable" in r.getMessage() for r in caplog.records)


def test_run_warns_when_an_outage_starts_and_when_it_ends_not_at_every_pass(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler = Reconciler(store, SimulatedGateway(clock=clock), clock=clock)
    scans = _outage_on_scans(store, 3, most=4)
    with caplog.at_level("DEBUG", logger="payonce.reconciler"):
        reconciler.run(_StopAfterWaits(4), interval=timedelta(seconds=1), batch=5)
    assert len(scans) == 4  # three failed scans, then an empty pass
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in logged] == ["WARNING", "DEBUG", "DEBUG", "WARNING"]
    assert all("the store is unavailable" in text for _, text in logged[:3])
    assert "answers again" in logged[3][1]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_run_hands_each_finished_pass_to_on_pass(
    store: Store, clock: ManualClock, kind: str
) -> None:
    # A crash after the charge, then a loop of three scans: an outage (no pass finished, so
    # nothing is handed over), the pass that resolves the record, and an empty pass.
    gateway = SimulatedGateway(clock=clock)
    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=_crash_at("before_complete")).execute(INTENT)
    clock.advance(LEASE)
    scans = _outage_on_scans(store, 1, most=3)
    reports: list[ReconcileReport] = []
    stop = threading.Event() if kind == "sync" else asyncio.Event()

    def on_pass(report: ReconcileReport) -> None:
        reports.append(report)
        if len(reports) == 2:
            stop.set()

    if isinstance(stop, threading.Event):
        Reconciler(store, gateway, clock=clock).run(
            stop, interval=timedelta(0), batch=5, on_pass=on_pass
        )
    else:
        reconciler = AsyncReconciler(store, gateway, clock=clock)
        asyncio.run(reconciler.run(stop, interval=timedelta(0), batch=5, on_pass=on_pass))
    assert len(scans) == 3  # the outage, then two passes
    assert [(r.scanned, r.succeeded) for r in reports] == [(1, 1), (0, 0)]
    assert _guard(store, clock, gateway).execute(INTENT).replayed
    assert len(gateway.movements()) == 1


def _three_lost_answers(store: Store, clock: ManualClock, gateway: SimulatedGateway) -> list[str]:
    """Three charges made at the provider whose answers were lost; their keys, oldest first."""
    keys = []
    for n in range(3):
        intent = Intent("charge", 5000, "usd", payment_method="tok_visa", reference=f"lost-{n}")
        guard = _guard(store, clock, gateway, faults=_crash_at("before_complete"))
        with pytest.raises(Crash):
            guard.execute(intent)
        keys.append(guard.key_for(intent))
        clock.advance(timedelta(seconds=1))
    clock.advance(LEASE)
    return keys


def _outage_after(store: Store, method: str, calls: int) -> None:
    """The store's ``method`` works ``calls`` times, then the store is unavailable."""
    real = getattr(store, method)
    made = 0

    def call(*args: object, **kwargs: object) -> object:
        nonlocal made
        made += 1
        if made > calls:
            raise StoreUnavailableError("the store went away", operation=method)
        return real(*args, **kwargs)

    setattr(store, method, call)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("method", ["takeover", "complete"])
def test_an_outage_during_a_pass_stops_it_and_keeps_what_it_resolved(
    store: Store, clock: ManualClock, kind: str, method: str
) -> None:
    # The first record is resolved; the store goes away at the second one's takeover (or its
    # complete, after the provider was asked). The pass stops there: its report keeps the first
    # record, the third is not asked about, and both stay due for the next pass.
    gateway = SimulatedGateway(clock=clock)
    keys = _three_lost_answers(store, clock, gateway)
    lookups = gateway.lookups_received
    _outage_after(store, method, 1)
    if kind == "sync":
        report = Reconciler(store, gateway, clock=clock).run_once(batch=5)
    else:
        report = asyncio.run(AsyncReconciler(store, gateway, clock=clock).run_once(batch=5))
    assert (report.scanned, report.succeeded, report.skipped) == (2, 1, 1)
    assert report.interrupted is not None
    assert "the store went away" in report.interrupted
    asked = gateway.lookups_received - lookups
    assert asked == (1 if method == "takeover" else 2)  # never the third record
    statuses = [store.get(SCOPE, key).status for key in keys]  # type: ignore[union-attr]
    assert statuses == [Status.SUCCEEDED, Status.CLAIMED, Status.CLAIMED]
    del store.__dict__[method]  # the store is back
    clock.advance(LEASE)  # the lease the cut-short pass took on the second record runs out
    after = Reconciler(store, gateway, clock=clock).run_once(batch=5)
    assert (after.succeeded, after.interrupted) == (2, None)
    assert len(gateway.movements()) == 3  # one per charge, none twice
    verify_ledger(store)


def _loop_cut_short(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture, waits: int
) -> list[ReconcileReport]:
    """Three lost answers and a takeover that works once, then a loop stopped at its
    ``waits``-th wait; the reports it handed to on_pass (the log goes to ``caplog``)."""
    gateway = SimulatedGateway(clock=clock)
    _three_lost_answers(store, clock, gateway)
    _outage_after(store, "takeover", 1)
    reports: list[ReconcileReport] = []
    with caplog.at_level("DEBUG", logger="payonce.reconciler"):
        Reconciler(store, gateway, clock=clock).run(
            _StopAfterWaits(waits), interval=timedelta(seconds=5), batch=5, on_pass=reports.append
        )
    return reports


def test_run_hands_a_pass_cut_short_to_on_pass_and_waits_before_the_next(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The pass cut short is followed by a wait, which stops the loop.
    reports = _loop_cut_short(store, clock, caplog, waits=1)
    assert [(r.succeeded, r.interrupted is not None) for r in reports] == [(1, True)]
    assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]


def test_every_pass_an_outage_cuts_short_is_warned_about(
    store: Store, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Scans answer but a write keeps failing (a record whose own write fails, oldest first, stops
    # every pass): each such pass is a WARNING, not DEBUG as the scans of an outage are.
    reports = _loop_cut_short(store, clock, caplog, waits=2)
    assert [r.interrupted is not None for r in reports] == [True, True]
    stopped = [r for r in caplog.records if "a pass stopped early" in r.getMessage()]
    assert [r.levelname for r in stopped] == ["WARNING", "WARNING"]


@pytest.mark.parametrize("given", ["coroutine function", "value"])
def test_run_refuses_an_on_pass_it_cannot_call(clock: ManualClock, given: str) -> None:
    async def report_later(report: ReconcileReport) -> None:
        """A coroutine function: the loop would create its coroutine and never await it."""

    refused = report_later if given == "coroutine function" else "not a function"
    # Stopped before it starts: were the check missing, the loop would return at once.
    stop, sync_stop = asyncio.Event(), threading.Event()
    stop.set()
    sync_stop.set()
    reconciler = AsyncReconciler(MemoryStore(), SimulatedGateway(clock=clock), clock=clock)
    with pytest.raises(ConfigurationError, match="on_pass must be a plain function") as caught:
        asyncio.run(reconciler.run(stop, on_pass=refused))  # type: ignore[arg-type]
    assert caught.value.option == "on_pass"
    with pytest.raises(ConfigurationError, match="on_pass must be a plain function"):
        Reconciler(MemoryStore(), SimulatedGateway(clock=clock)).run(
            sync_stop,
            on_pass=refused,  # type: ignore[arg-type]
        )


class _AsyncCall:
    """Callable, not a coroutine function, yet its call returns a coroutine."""

    async def __call__(self, report: ReconcileReport) -> None:
        """Never awaited by the loop."""


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("given", ["async __call__", "function making a coroutine"])
def test_run_refuses_an_on_pass_that_returns_an_awaitable(
    store: Store, clock: ManualClock, kind: str, given: str
) -> None:
    async def later(report: ReconcileReport) -> None:
        """The coroutine the plain function makes."""

    def making(report: ReconcileReport) -> object:
        return later(report)

    on_pass = _AsyncCall() if given == "async __call__" else making
    scans = _outage_on_scans(store, 0, most=1)  # one empty pass, then the refusal
    gateway = SimulatedGateway(clock=clock)

    def loop() -> None:
        if kind == "sync":
            Reconciler(store, gateway, clock=clock).run(threading.Event(), on_pass=on_pass)
        else:
            reconciler = AsyncReconciler(store, gateway, clock=clock)
            asyncio.run(reconciler.run(asyncio.Event(), on_pass=on_pass))

    with pytest.raises(ConfigurationError, match="on_pass must be a plain function"):
        loop()
    assert len(scans) == 1


def test_an_async_loops_on_pass_may_hand_the_report_to_a_task(
    store: Store, clock: ManualClock
) -> None:
    # The refusal is for a coroutine nobody awaits; a task is scheduled and runs on its own.
    seen: list[ReconcileReport] = []
    stop = asyncio.Event()
    scans = _outage_on_scans(store, 0, most=2)

    async def notify(report: ReconcileReport) -> None:
        seen.append(report)
        stop.set()

    async def loop() -> None:
        running = asyncio.get_running_loop()
        reconciler = AsyncReconciler(store, SimulatedGateway(clock=clock), clock=clock)
        await reconciler.run(
            stop,
            interval=timedelta(seconds=5),
            on_pass=lambda report: running.create_task(notify(report)),
        )

    asyncio.run(loop())
    assert len(seen) == 1
    assert len(scans) == 1


def test_a_resend_is_counted_once_its_answer_is_recorded(store: Store, clock: ManualClock) -> None:
    # Lost answers whose calls never reached the provider: the pass resends the first one and
    # records it; the store goes away before the second resend's answer is written, so that
    # one is not counted as resent (it stays due, skipped).
    gateway = SimulatedGateway(clock=clock)
    for n in range(2):
        intent = Intent("charge", 5000, "usd", payment_method="tok_visa", reference=f"lost-{n}")
        with pytest.raises(Crash):
            _guard(store, clock, gateway, faults=_crash_at("after_claim")).execute(intent)
        clock.advance(timedelta(seconds=1))
    clock.advance(LEASE)
    _outage_after(store, "complete", 1)
    report = Reconciler(store, gateway, clock=clock).run_once(batch=5)
    assert (report.succeeded, report.resent, report.skipped) == (1, 1, 1)
    assert report.interrupted is not None
    assert report.scanned == report.succeeded + report.failed + report.flagged + report.skipped


def test_a_store_or_gateway_of_the_wrong_kind_is_refused_with_what_to_pass(
    clock: ManualClock,
) -> None:
    gateway = SimulatedGateway(clock=clock)
    with pytest.raises(ConfigurationError, match="sync Store such as SQLiteStore") as caught:
        Reconciler(object(), gateway)  # type: ignore[arg-type]
    assert caught.value.option == "store"
    with pytest.raises(ConfigurationError, match="Use AsyncReconciler for an AsyncStore"):
        Reconciler(ThreadedAsyncStore(MemoryStore()), gateway)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="needs an AsyncStore or a Store") as caught:
        AsyncReconciler(object(), gateway)  # type: ignore[arg-type]
    assert caught.value.option == "store"
    for reconciler in (Reconciler, AsyncReconciler):
        with pytest.raises(ConfigurationError, match="StripeGateway or SimulatedGateway"):
            reconciler(MemoryStore(), object())  # type: ignore[arg-type]
    # Both kinds of store are accepted by the async twin; the sync one runs in a thread.
    assert AsyncReconciler(MemoryStore(), gateway).store is not None
    assert AsyncReconciler(ThreadedAsyncStore(MemoryStore()), gateway).store is not None

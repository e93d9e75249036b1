"""Reconciler.audit (SCENARIOS R19): SUCCEEDED records checked against the provider, typed
discrepancies reported, nothing written. On every store, against SimulatedGateway with its
idempotency off; the Stripe-compatible server runs it in tests/scenarios.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from payonce import (
    AsyncReconciler,
    AuditReport,
    ConfigurationError,
    Discrepancy,
    Guard,
    Intent,
    Outcome,
    Reconciler,
    Store,
    StoreUnavailableError,
)
from payonce._reconciler import GATEWAY_FAILED, LEDGER_WITHOUT_GATEWAY, OBJECT_MISMATCH
from payonce.gateways._simulated import Fault
from payonce.gateways.simulated import SimulatedGateway
from payonce.stores import MemoryStore
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET


def _charge(ref: str, pm: str = "tok_visa", amount: int = 1000) -> Intent:
    return Intent("charge", amount, "usd", payment_method=pm, reference=ref)


def _setup(store: Store, clock: ManualClock) -> tuple[Guard, SimulatedGateway, Reconciler]:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
    return guard, gateway, Reconciler(store, gateway, clock=clock)


def _snapshot(store: Store, keys: list[str]) -> tuple[list[Any], list[Any]]:
    return [store.get(SCOPE, k) for k in keys], list(store.entries(after=0, limit=10_000))


def _behind_payonces_back(gateway: SimulatedGateway, outcome: Outcome, pm: str) -> None:
    """The provider makes an object stamped with the record's key that payonce never recorded."""
    gateway.execute(_charge("elsewhere", pm), outcome.provider_key, key=outcome.key)


def test_matching_records_give_a_clean_report(store: Store, clock: ManualClock) -> None:
    guard, gateway, reconciler = _setup(store, clock)
    charged = guard.execute(_charge("order-1"))
    refund = Intent("refund", 300, "usd", target=charged.value["id"], reference="refund-1")
    refunded = guard.execute(refund)
    before = _snapshot(store, [charged.key, refunded.key])
    report = reconciler.audit()
    assert isinstance(report, AuditReport)
    assert (report.checked, report.matched, report.discrepancies) == (2, 2, [])
    assert report.complete
    assert _snapshot(store, [charged.key, refunded.key]) == before  # nothing written
    assert gateway.calls_received == 2  # the two executes; the audit only looked up
    assert gateway.lookups_received == 2


def test_a_success_the_provider_does_not_hold_is_ledger_without_gateway(
    store: Store, clock: ManualClock
) -> None:
    guard, gateway, reconciler = _setup(store, clock)
    kept = guard.execute(_charge("order-1"))
    forgotten = guard.execute(_charge("order-2", "tok_forget"))
    before = _snapshot(store, [kept.key, forgotten.key])
    report = reconciler.audit()
    assert (report.checked, report.matched) == (2, 1)
    [found] = report.discrepancies
    assert isinstance(found, Discrepancy)
    assert (found.kind, found.scope, found.key, found.operation) == (
        LEDGER_WITHOUT_GATEWAY,
        SCOPE,
        forgotten.key,
        "charge",
    )
    assert _snapshot(store, [kept.key, forgotten.key]) == before  # never changes money records
    assert gateway.movements_made == 1  # and never moves money


def test_another_object_under_the_key_is_an_object_mismatch(
    store: Store, clock: ManualClock
) -> None:
    guard, gateway, reconciler = _setup(store, clock)
    recorded = guard.execute(_charge("order-1", "tok_forget"))
    _behind_payonces_back(gateway, recorded, "tok_visa")
    [found] = reconciler.audit().discrepancies
    assert (found.kind, found.key) == (OBJECT_MISMATCH, recorded.key)
    [other] = gateway.objects(key=recorded.key)
    assert recorded.value["id"] in found.reason
    assert other.id in found.reason


def test_a_failed_object_under_the_key_is_gateway_failed(store: Store, clock: ManualClock) -> None:
    guard, gateway, reconciler = _setup(store, clock)
    recorded = guard.execute(_charge("order-1", "tok_forget"))
    _behind_payonces_back(gateway, recorded, "tok_chargeDeclined")
    [found] = reconciler.audit().discrepancies
    assert (found.kind, found.key) == (GATEWAY_FAILED, recorded.key)
    assert "card_declined" in found.reason


def test_a_provider_that_cannot_be_asked_leaves_the_record_unverified(
    store: Store, clock: ManualClock
) -> None:
    guard, gateway, reconciler = _setup(store, clock)
    charged = guard.execute(_charge("order-1"))
    gateway.script([Fault("lookup")])
    report = reconciler.audit()
    assert (report.checked, report.matched, report.discrepancies) == (1, 0, [])
    assert report.unverified == [charged.key]
    assert reconciler.audit().matched == 1  # asked again later, it agrees


def test_limit_cursor_and_since_page_through_the_ledger(store: Store, clock: ManualClock) -> None:
    guard, _, reconciler = _setup(store, clock)
    keys = []
    for n in range(3):
        keys.append(guard.execute(_charge(f"order-{n}")).key)
        clock.advance(timedelta(minutes=1))
    first = reconciler.audit(limit=2)
    assert (first.checked, first.complete) == (2, False)
    rest = reconciler.audit(after=first.cursor, limit=10)
    assert (rest.checked, rest.matched, rest.complete) == (1, 1, True)
    assert rest.cursor > first.cursor
    assert reconciler.audit(after=rest.cursor).checked == 0
    late = store.get(SCOPE, keys[2])
    assert late is not None
    assert reconciler.audit(since=late.updated_at).checked == 1


def test_purged_records_are_skipped(store: Store, clock: ManualClock) -> None:
    guard, _, reconciler = _setup(store, clock)
    guard.execute(_charge("order-1"))
    clock.advance(timedelta(days=4))
    assert store.purge(now=clock.now(), retention=timedelta(hours=72), limit=10) == 1
    report = reconciler.audit()
    assert (report.checked, report.skipped, report.discrepancies) == (0, 1, [])


@pytest.mark.parametrize(
    "bad",
    [{"limit": 0}, {"limit": True}, {"after": -1}, {"since": "yesterday"}],
    ids=["limit-0", "limit-bool", "after-negative", "since-text"],
)
def test_bad_arguments_are_refused(store: Store, clock: ManualClock, bad: dict[str, Any]) -> None:
    _, _, reconciler = _setup(store, clock)
    with pytest.raises(ConfigurationError):
        reconciler.audit(**bad)


def test_an_unreadable_store_raises_and_reports_nothing(clock: ManualClock) -> None:
    class Down(MemoryStore):
        def entries(self, *, after: int, limit: int) -> list[Any]:
            raise StoreUnavailableError("unreachable (injected)", operation="entries")

    reconciler = Reconciler(Down(), SimulatedGateway(clock=clock), clock=clock)
    with pytest.raises(StoreUnavailableError):
        reconciler.audit()


def test_the_async_twin_reports_the_same(store: Store, clock: ManualClock) -> None:
    guard, gateway, reconciler = _setup(store, clock)
    guard.execute(_charge("order-1"))
    forgotten = guard.execute(_charge("order-2", "tok_forget"))
    report = asyncio.run(AsyncReconciler(store, gateway, clock=clock).audit())
    assert report == reconciler.audit()
    assert [d.key for d in report.discrepancies] == [forgotten.key]

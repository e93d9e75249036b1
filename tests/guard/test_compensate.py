"""Compensation: an idempotent refund derived from the original record, never more than was
captured, also under retried and concurrent calls (R20)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from payonce import (
    AsyncGuard,
    ConflictError,
    Event,
    GatewayRejectedError,
    Guard,
    Intent,
    IntentError,
    Outcome,
    OutcomeUnknownError,
    Reconciler,
    RetryPolicy,
    Store,
    verify_ledger,
)
from payonce.gateways.simulated import SimulatedGateway
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.faults.test_races import assert_one_outcome, race

CHARGE = Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-20")


def _setup(store: Store, clock: ManualClock) -> tuple[Guard, SimulatedGateway, str]:
    gateway = SimulatedGateway(idempotent=False, clock=clock)  # payonce alone must be safe
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
    return guard, gateway, guard.execute(CHARGE).key


def _refunded(gateway: SimulatedGateway) -> int:
    return sum(m.amount for m in gateway.movements() if m.operation == "refund")


def test_a_retried_full_refund_refunds_once(store: Store, clock: ManualClock) -> None:
    guard, gateway, key = _setup(store, clock)
    first = guard.compensate(key)
    again = guard.compensate(key)
    assert again.replayed
    assert again.value == first.value
    assert _refunded(gateway) == 5000
    record = store.get(SCOPE, first.key)
    assert record is not None
    assert record.intent_fields()["metadata"]["payonce_original"] == key
    verify_ledger(store)


def test_the_compensation_is_linked_to_the_original_in_the_record_and_the_ledger(
    store: Store, clock: ManualClock
) -> None:
    guard, _, key = _setup(store, clock)
    refund = guard.compensate(key, amount=1200, reason="duplicate")
    record = store.get(SCOPE, refund.key)
    assert record is not None
    fields = record.intent_fields()
    assert fields["reference"] == f"compensate:{key}"
    assert fields["metadata"] == {"payonce_original": key, "payonce_reason": "duplicate"}
    entries = list(store.entries(after=0, limit=1000))
    linked = [e for e in entries if e.key == refund.key]
    assert [e.event for e in linked] == [Event.CLAIMED, Event.SUCCEEDED]
    assert all(json.loads(e.detail)["compensates"] == key for e in linked)
    # The payment's own entries link to nothing; the chain of each still verifies.
    assert all("compensates" not in json.loads(e.detail) for e in entries if e.key == key)
    verify_ledger(store)


def test_the_ledger_link_needs_the_shape_of_a_compensation_not_just_its_metadata(
    store: Store, clock: ManualClock
) -> None:
    # Anyone may write payonce_original into an intent's metadata; only a refund or cancel
    # whose reference names the same payment (what compensate builds) is linked to it.
    guard, _, key = _setup(store, clock)
    target = json.loads(store.get(SCOPE, key).outcome or "{}")["value"]["id"]  # type: ignore[union-attr]
    forged = [
        Intent(
            "charge", 700, "usd", payment_method="tok_visa", reference="order-x",
            metadata={"payonce_original": key},
        ),
        Intent(
            "refund", 700, "usd", target=target, reference="refund-x",
            metadata={"payonce_original": key},
        ),
        Intent(
            "charge", 700, "usd", payment_method="tok_visa", reference=f"compensate:{key}",
            metadata={"payonce_original": key},
        ),
    ]  # fmt: skip
    keys = {guard.execute(intent).key for intent in forged}
    entries = [e for e in store.entries(after=0, limit=1000) if e.key in keys]
    assert len(entries) == 6
    assert all("compensates" not in json.loads(e.detail) for e in entries)
    verify_ledger(store)


def test_partial_refunds_by_sequence_never_exceed_the_charge(
    store: Store, clock: ManualClock
) -> None:
    guard, gateway, key = _setup(store, clock)
    guard.compensate(key, amount=3000, sequence=0)
    guard.compensate(key, amount=2000, sequence=1)
    with pytest.raises(IntentError, match="refund at most 0") as caught:
        guard.compensate(key, amount=1, sequence=2)
    assert caught.value.field == "amount"
    assert _refunded(gateway) == 5000
    with pytest.raises(IntentError, match="refund at most 2000"):
        guard.compensate(key, amount=2500, sequence=1)  # a different amount under a used number


def test_sixteen_concurrent_refunds_refund_once(store: Store, clock: ManualClock) -> None:
    guard, gateway, key = _setup(store, clock)
    results = race(16, lambda: guard.compensate(key))  # InProgressError is acceptable
    assert len(results) == 16
    assert _refunded(gateway) == 5000
    assert len([m for m in gateway.movements() if m.operation == "refund"]) == 1


def test_concurrent_refunds_under_different_numbers_are_capped_by_the_provider(
    store: Store, clock: ManualClock
) -> None:
    guard, gateway, key = _setup(store, clock)
    outcomes: list[object] = []
    for sequence in range(3):
        try:
            outcomes.append(guard.compensate(key, amount=2000, sequence=sequence))
        except (IntentError, GatewayRejectedError) as exc:
            outcomes.append(exc)
    assert _refunded(gateway) == 4000
    assert isinstance(outcomes[2], IntentError)


def test_only_a_succeeded_payment_is_compensated(store: Store, clock: ManualClock) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    gateway.script(["after_send"])
    guard = Guard(
        store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway, retry=RetryPolicy.never()
    )
    with pytest.raises(OutcomeUnknownError):
        guard.execute(CHARGE)
    with pytest.raises(ConflictError, match="Reconciler"):
        guard.compensate(guard.key_for(CHARGE))
    with pytest.raises(ConflictError, match="absent"):
        guard.compensate("k1_" + "0" * 64)
    clock.advance(timedelta(seconds=1))
    assert _refunded(gateway) == 0


HOLDS = pytest.mark.parametrize(
    "hold",
    [
        Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-hold",
               params={"capture": False}),
        Intent("charge", 5000, "usd", payment_method="pm_card_visa", reference="order-hold",
               params={"capture_method": "manual"}),
    ],
    ids=["charge-captured-false", "payment-intent-requires-capture"],
)  # fmt: skip


def _voids(gateway: SimulatedGateway) -> list[str]:
    return [m.operation for m in gateway.movements() if m.operation in ("void", "refund")]


@HOLDS
def test_a_hold_never_captured_is_cancelled_not_refunded(
    store: Store, clock: ManualClock, hold: Intent
) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
    held = guard.execute(hold)
    cancelled = guard.compensate(held.key)
    assert cancelled.value["status"] == "canceled"
    assert cancelled.value["id"] == held.value["id"]
    record = store.get(SCOPE, cancelled.key)
    assert record is not None
    assert (record.operation, record.amount) == ("cancel", 5000)
    assert record.intent_fields()["metadata"]["payonce_original"] == held.key
    again = guard.compensate(held.key)  # its own key: replayed, never a second call
    assert (again.replayed, again.body) == (True, cancelled.body)
    assert _voids(gateway) == ["void"]
    entries = [e for e in store.entries(after=0, limit=1000) if e.key == cancelled.key]
    assert all(json.loads(e.detail)["compensates"] == held.key for e in entries)
    verify_ledger(store)


@HOLDS
def test_a_hold_is_released_whole_and_once(store: Store, clock: ManualClock, hold: Intent) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
    held = guard.execute(hold)
    calls = gateway.calls_received
    with pytest.raises(IntentError, match="released whole") as part:
        guard.compensate(held.key, amount=1000)
    assert part.value.field == "amount"
    with pytest.raises(IntentError, match="released once") as later:
        guard.compensate(held.key, sequence=1)
    assert later.value.field == "sequence"
    assert gateway.calls_received == calls  # refused before any call
    assert guard.compensate(held.key, amount=5000).value["status"] == "canceled"
    assert _voids(gateway) == ["void"]


def test_sixteen_concurrent_compensations_of_a_hold_release_it_once(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    # The 15 waiters share the manual clock and each sleep advances it (up to the 5 s wait
    # each, 75 s in all): a lease of an hour keeps that simulated time from expiring the
    # holder's lease on a slow machine, which would make this a takeover test.
    guard = Guard(
        store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway, lease=timedelta(hours=1)
    )
    held = guard.execute(
        Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-hold",
               params={"capture": False})
    )  # fmt: skip
    results = race(16, lambda: guard.compensate(held.key))  # InProgressError is acceptable
    assert_one_outcome(results)
    assert _voids(gateway) == ["void"]


def test_a_cancel_whose_answer_was_lost_is_found_by_the_reconciler(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    guard = Guard(
        store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway, retry=RetryPolicy.never()
    )
    held = guard.execute(
        Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-hold",
               params={"capture": False})
    )  # fmt: skip
    gateway.script(["after_send"])
    with pytest.raises(OutcomeUnknownError):
        guard.compensate(held.key)
    clock.advance(timedelta(minutes=2))
    report = Reconciler(store, gateway, clock=clock).run_once()
    assert (report.succeeded, report.resent) == (1, 0)
    again = guard.compensate(held.key)
    assert again.replayed
    assert again.value["status"] == "canceled"
    assert _voids(gateway) == ["void"]


def test_a_hold_captured_since_is_refunded_through_its_capture(
    store: Store, clock: ManualClock
) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
    held = guard.execute(
        Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-hold",
               params={"capture": False})
    )  # fmt: skip
    capture = Intent("capture", 4000, "usd", target=held.value["id"], reference="cap-hold")
    captured = guard.execute(capture)
    with pytest.raises(GatewayRejectedError) as refused:  # the provider refuses the cancel
        guard.compensate(held.key)
    assert refused.value.code == "charge_already_captured"
    refund = guard.compensate(captured.key)  # the capture's key refunds what was captured
    assert refund.value["amount"] == 4000
    assert _voids(gateway) == ["refund"]


def test_the_async_twin_cancels_a_hold(store: Store, clock: ManualClock) -> None:
    gateway = SimulatedGateway(idempotent=False, clock=clock)
    guard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)

    async def scenario() -> tuple[Outcome, Outcome]:
        held = await guard.execute(
            Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-hold",
                   params={"capture": False})
        )  # fmt: skip
        return await guard.compensate(held.key), await guard.compensate(held.key)

    first, again = asyncio.run(scenario())
    assert first.value["status"] == "canceled"
    assert again.replayed
    assert _voids(gateway) == ["void"]

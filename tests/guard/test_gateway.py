"""The guard driving a gateway: retries by outcome class, resends with the same provider key only
inside the provider's idempotency window, and lookup of lost answers (issue 4, guard side).

Every case runs on every backend and against SimulatedGateway with its own idempotency on (a
provider like Stripe) and, where the case is about duplicates, off (payonce alone is safe).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from payonce import (
    ConfigurationError,
    GatewayUnavailableError,
    Guard,
    Intent,
    OutcomeUnknownError,
    PaymentDeclinedError,
    RetryPolicy,
    Status,
    Store,
    verify_ledger,
)
from payonce.gateways.simulated import SimulatedGateway
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET

INTENT = Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-7")
LEASE = timedelta(seconds=60)


class Crash(BaseException):
    """Stands in for a killed worker at a fault point: nothing after it runs."""


def _guard(store: Store, clock: ManualClock, gateway: SimulatedGateway, **options: object) -> Guard:
    return Guard(
        store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway, lease=LEASE, **options
    )  # type: ignore[arg-type]


def _gateway(clock: ManualClock, *, idempotent: bool) -> SimulatedGateway:
    return SimulatedGateway(idempotent=idempotent, clock=clock, seed=7)


@pytest.mark.parametrize("idempotent", [True, False], ids=["dedup", "no-dedup"])
def test_r1_r2_one_movement_then_replays(
    store: Store, clock: ManualClock, idempotent: bool
) -> None:
    gateway = _gateway(clock, idempotent=idempotent)
    guard = _guard(store, clock, gateway)
    first = guard.execute(INTENT)
    again = guard.execute(INTENT)
    assert first.value["status"] == "succeeded"
    assert again.replayed
    assert again.value == first.value
    assert gateway.calls_received == 1
    assert len(gateway.movements()) == 1
    verify_ledger(store)


def test_r9_answer_lost_inside_the_window_resends_the_same_key(
    store: Store, clock: ManualClock
) -> None:
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["after_send"])
    outcome = _guard(store, clock, gateway).execute(INTENT)
    keys = {call.provider_key for call in gateway.calls()}
    assert keys == {outcome.provider_key}
    assert gateway.calls_received == 2
    assert len(gateway.movements()) == 1
    assert outcome.value["status"] == "succeeded"


def test_r9_answer_lost_without_provider_dedup_is_unknown_then_looked_up(
    store: Store, clock: ManualClock
) -> None:
    gateway = _gateway(clock, idempotent=False)
    gateway.script(["after_send"])
    guard = _guard(store, clock, gateway)
    with pytest.raises(OutcomeUnknownError, match="never with a new one"):
        guard.execute(INTENT)
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.UNKNOWN
    adopted = guard.execute(INTENT)  # looks the charge up instead of charging again
    assert adopted.value["status"] == "succeeded"
    assert gateway.calls_received == 1
    assert gateway.lookups_received == 1
    assert len(gateway.movements()) == 1
    assert guard.execute(INTENT).replayed
    verify_ledger(store)


def test_the_guards_lookup_of_a_purged_key_claimed_again_adopts_only_the_new_charge(
    store: Store, clock: ManualClock
) -> None:
    # Both lives of the key carry the same payonce_key at the provider; before, the lookup
    # adopted the oldest charge of it, the purged life's 5000, for the new 7000 payment.
    gateway = _gateway(clock, idempotent=False)
    guard = _guard(store, clock, gateway)
    guard.execute(INTENT)
    clock.advance(timedelta(days=31))
    assert store.purge(now=clock.now(), retention=timedelta(days=30), limit=10) == 1
    again = Intent("charge", 7000, "usd", payment_method="tok_visa", reference="order-7")
    gateway.script(["after_send"])
    with pytest.raises(OutcomeUnknownError):
        guard.execute(again)
    adopted = guard.execute(again)  # looks the charge up instead of charging again
    assert adopted.value["amount"] == 7000
    assert [m.amount for m in gateway.movements()] == [5000, 7000]
    verify_ledger(store)


def test_an_interrupted_lookup_leaves_the_record_unknown_for_the_next_one(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before, the interruption left the record CLAIMED under the lookup's takeover, so the next
    # call found a live lease and waited instead of looking the charge up.
    gateway = _gateway(clock, idempotent=False)
    gateway.script(["after_send"])
    guard = _guard(store, clock, gateway)
    with pytest.raises(OutcomeUnknownError):
        guard.execute(INTENT)
    looked_up = gateway.lookup

    def interrupted(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(gateway, "lookup", interrupted)
    with pytest.raises(KeyboardInterrupt):
        guard.execute(INTENT)
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert "interrupted while asking the provider" in (record.reason or "")
    monkeypatch.setattr(gateway, "lookup", looked_up)
    adopted = guard.execute(INTENT)
    assert adopted.value["status"] == "succeeded"
    assert gateway.calls_received == 1
    assert len(gateway.movements()) == 1
    verify_ledger(store)


def test_r10_not_sent_twice_then_sent_once(store: Store, clock: ManualClock) -> None:
    gateway = _gateway(clock, idempotent=False)
    gateway.script(["before_send", "before_send", None])
    outcome = _guard(store, clock, gateway).execute(INTENT)
    assert outcome.value["status"] == "succeeded"
    assert len(gateway.calls()) == 3  # two never reached the provider
    assert gateway.calls_received == 1
    assert len(gateway.movements()) == 1


def test_r12_rate_limited_until_the_budget_is_spent_releases_the_key(
    store: Store, clock: ManualClock
) -> None:
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["status_429"] * 3)
    guard = _guard(store, clock, gateway)
    started = clock.now()
    with pytest.raises(GatewayUnavailableError) as caught:
        guard.execute(INTENT)
    assert caught.value.retry_after == timedelta(seconds=1)
    # Two backoffs, each at least the provider's Retry-After, on the injected clock.
    assert clock.now() - started >= timedelta(seconds=2)
    assert store.get(SCOPE, guard.key_for(INTENT)) is None  # released: the key is free
    assert gateway.movements() == []
    assert guard.execute(INTENT).value["status"] == "succeeded"
    assert len(gateway.movements()) == 1


def test_r13_decline_is_definite_and_replayed(store: Store, clock: ManualClock) -> None:
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["decline"])
    guard = _guard(store, clock, gateway)
    with pytest.raises(PaymentDeclinedError) as first:
        guard.execute(INTENT)
    with pytest.raises(PaymentDeclinedError) as again:
        guard.execute(INTENT)
    assert first.value.code == again.value.code == "card_declined"
    assert again.value.replayed
    assert gateway.calls_received == 1
    assert gateway.movements() == []


def test_r14_in_flight_at_the_provider_waits_and_keeps_the_key(
    store: Store, clock: ManualClock
) -> None:
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["in_progress_409", "in_progress_409", None])
    outcome = _guard(store, clock, gateway).execute(INTENT)
    assert {call.provider_key for call in gateway.calls()} == {outcome.provider_key}
    assert gateway.calls_received == 3
    assert len(gateway.movements()) == 1


@pytest.mark.parametrize("idempotent", [True, False], ids=["dedup", "no-dedup"])
def test_r7_crash_after_the_provider_charged(
    store: Store, clock: ManualClock, idempotent: bool
) -> None:
    gateway = _gateway(clock, idempotent=idempotent)

    def crash(point: str) -> None:
        if point == "before_complete":
            raise Crash

    with pytest.raises(Crash):
        _guard(store, clock, gateway, faults=crash).execute(INTENT)
    assert len(gateway.movements()) == 1
    clock.advance(LEASE)
    outcome = _guard(store, clock, gateway).execute(INTENT)
    assert outcome.value["status"] == "succeeded"
    assert len(gateway.movements()) == 1  # resent and replayed (dedup) or looked up (no dedup)
    if idempotent:
        assert gateway.calls_received == 2
    else:
        assert gateway.calls_received == 1
        assert gateway.lookups_received == 1
    verify_ledger(store)


def test_r7_after_the_window_the_guard_looks_up_instead_of_resending(
    store: Store, clock: ManualClock
) -> None:
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["after_send", "after_send", "after_send"])
    guard = _guard(store, clock, gateway, retry=RetryPolicy.never())
    with pytest.raises(OutcomeUnknownError):
        guard.execute(INTENT)
    clock.advance(timedelta(hours=25))  # past the provider's 24 h idempotency window
    outcome = guard.execute(INTENT)
    assert outcome.value["status"] == "succeeded"
    assert gateway.calls_received == 1
    assert gateway.lookups_received == 1
    assert len(gateway.movements()) == 1


def test_no_resend_that_could_end_past_the_window_the_guard_looks_up(
    store: Store, clock: ManualClock
) -> None:
    # 30 s before the window ends, a resend (with its retries, inside a 60 s lease) could reach
    # the provider after it forgot the key: the guard looks the call up instead.
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["after_send"])
    guard = _guard(store, clock, gateway, retry=RetryPolicy.never())
    with pytest.raises(OutcomeUnknownError):
        guard.execute(INTENT)
    clock.advance(timedelta(hours=24) - timedelta(seconds=30))
    outcome = guard.execute(INTENT)
    assert outcome.value["status"] == "succeeded"
    assert (gateway.calls_received, gateway.lookups_received) == (1, 1)
    assert len(gateway.movements()) == 1


def test_retries_stay_inside_the_lease(store: Store, clock: ManualClock) -> None:
    gateway = _gateway(clock, idempotent=True)
    gateway.script(["status_429"] * 10)
    patient = RetryPolicy(max_attempts=10, deadline=timedelta(hours=1))
    guard = Guard(
        store,
        secret=SECRET,
        scope=SCOPE,
        clock=clock,
        gateway=gateway,
        lease=timedelta(seconds=5),
        retry=patient,
    )
    with pytest.raises(GatewayUnavailableError):
        guard.execute(INTENT)
    assert gateway.calls_received < 10


def test_execute_without_a_gateway_says_what_to_pass(store: Store, clock: ManualClock) -> None:
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock)
    with pytest.raises(ConfigurationError, match="gateway="):
        guard.execute(INTENT)

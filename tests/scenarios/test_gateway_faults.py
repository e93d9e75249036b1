"""SCENARIOS R6, R7, R9-R13 on G1 (stripe-stateful-mock through the fault proxy, StripeGateway)
and G2 (SimulatedGateway without idempotency), each over memory, SQLite, PostgreSQL and Redis.

Every test ends with the Reconciler (``world.reconcile``) and the I1-I5 check (``check``).
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from payonce import (
    GatewayUnavailableError,
    InProgressError,
    OutcomeUnknownError,
    PaymentDeclinedError,
    RetryPolicy,
    Status,
)
from payonce._reconciler import REVIEW
from payonce.gateways._simulated import Fault
from tests.fault_proxy import Mode
from tests.scenarios.harness import (
    BLACKHOLE,
    DROP,
    IN_USE,
    LEASE,
    RESET,
    Crash,
    World,
    check,
    crash_at,
)

AFTER_LEASE = LEASE + timedelta(seconds=1)


def _proxy_keys(world: World) -> list[str | None]:
    assert world.proxy is not None
    return [r.idempotency_key for c in world.proxy.log for r in c.requests if "POST" in r.line]


def test_r6_crash_after_claim_before_the_gateway(world: World) -> None:
    intent = world.intent("r6")
    with pytest.raises(Crash):
        world.guard(faults=crash_at("after_claim")).execute(intent)
    record = world.record(intent)
    assert record is not None
    assert record.status is Status.CLAIMED
    assert record.lease_expires_at is not None
    with pytest.raises(InProgressError):  # the lease is live
        world.guard().execute(intent)
    assert world.calls() == []
    world.clock.advance(AFTER_LEASE)
    acks = []
    if world.g1:
        # Inside Stripe's window the taker-over resends with the key fixed at claim.
        outcome = world.guard().execute(intent)
        assert outcome.provider_key == record.provider_key
        assert outcome.attempt == 2
        assert {c.provider_key for c in world.calls()} == {record.provider_key}
        assert _proxy_keys(world) == [record.provider_key]
        acks.append(outcome)
    else:
        # Without provider dedup a blind resend could charge twice: look up, then flag.
        with pytest.raises(OutcomeUnknownError):
            world.guard().execute(intent)
        assert world.calls() == []
    world.reconcile()
    assert len(world.charges(record.key)) == (1 if world.g1 else 0)
    after = world.record(intent)
    assert after is not None
    if world.g1:
        assert after.status is Status.SUCCEEDED
    else:
        assert after.status is Status.UNKNOWN
        assert (after.reason or "").startswith(REVIEW)
    check(world, acks)


def test_r7_crash_after_the_gateway_charged_before_recording(world: World) -> None:
    intent = world.intent("r7")
    with pytest.raises(Crash):
        world.guard(faults=crash_at("before_complete")).execute(intent)
    record = world.record(intent)
    assert record is not None
    assert record.status is Status.CLAIMED
    [charge] = world.charges(record.key)
    world.clock.advance(AFTER_LEASE)
    gateway = world.gateway()
    outcome = world.guard(gateway=gateway).execute(intent)
    assert outcome.value["id"] == charge["id"]
    if world.g1:
        # The same key resent: Stripe replays its stored charge.
        assert _proxy_keys(world) == [record.provider_key, record.provider_key]
        assert gateway.lookups == 0
    else:
        # No dedup: found by its payonce_key metadata and adopted, never called again.
        assert len(world.calls()) == 1
        assert gateway.lookups == 1
    assert len(world.charges(record.key)) == 1
    replay = world.guard().execute(intent)
    assert (replay.replayed, replay.body) == (True, outcome.body)
    world.reconcile()
    history = check(world, [outcome, replay])
    events = [e.event.value for e in history.entries if e.key == record.key]
    assert events[-1] == "succeeded"


def test_r7b_after_the_window_the_reconciler_finds_the_charge_by_payonce_key(
    world: World,
) -> None:
    intent = world.intent("r7b")
    with pytest.raises(Crash):
        world.guard(faults=crash_at("before_complete")).execute(intent)
    key = world.key_of(intent)
    world.clock.advance(timedelta(hours=25))  # past Stripe's 24 h: a resend could charge again
    report = world.reconciler().run_once()
    assert (report.scanned, report.succeeded, report.resent, report.flagged) == (1, 1, 0, 0)
    assert len(world.calls()) == 1  # only the crashed worker's call
    [charge] = world.charges(key)
    outcome = world.guard().execute(intent)
    assert outcome.replayed
    assert outcome.value["id"] == charge["id"]
    check(world, [outcome])


@pytest.mark.parametrize(
    ("fault", "retry"),
    # A blackhole costs a real client timeout (1 s): once, with the caller's retry.
    [(DROP, "caller"), (DROP, "automatic"), (BLACKHOLE, "caller")],
)
def test_r9_timeout_where_the_gateway_executed(world: World, fault: str, retry: str) -> None:
    intent = world.intent(f"r9-{fault}-{retry}")
    key = world.key_of(intent)
    world.fault(fault)
    first = world.guard(
        gateway=world.gateway(timeout=1.0),
        retry=RetryPolicy.never() if retry == "caller" else None,
    )
    acks = []
    if retry == "automatic" and world.g1:
        # Inside the window the guard resends with the same key at once: Stripe replays.
        outcome = first.execute(intent)
        acks.append(outcome)
        assert not outcome.replayed
    else:
        with pytest.raises(OutcomeUnknownError) as caught:
            first.execute(intent)
        assert "same intent" in str(caught.value)
        assert "never with a new one" in str(caught.value)
        record = world.record(intent)
        assert record is not None
        assert record.status is Status.UNKNOWN  # never "failed"
    [charge] = world.charges(key)  # the provider acted
    if retry == "caller":
        outcome = world.guard().execute(intent)
        acks.append(outcome)
    else:
        world.reconcile()
        outcome = world.guard().execute(intent)
        assert outcome.replayed
        acks.append(outcome)
    assert outcome.value["id"] == charge["id"]
    if world.g1:
        assert world.proxy is not None
        assert world.proxy.log[0].mode is (Mode.DROP_RESPONSE if fault == DROP else Mode.BLACKHOLE)
        assert set(_proxy_keys(world)) == {outcome.provider_key}
    else:
        assert len(world.calls()) == 1  # G2 never resends: lookup adopted it
    world.reconcile()
    assert len(world.charges(key)) == 1
    check(world, acks)


@pytest.mark.parametrize("resets", [1, 3])
def test_r10_network_failure_before_the_gateway_saw_it(world: World, resets: int) -> None:
    intent = world.intent(f"r10-{resets}")
    world.fault(*[RESET] * resets)
    outcome = world.guard(retry=RetryPolicy(max_attempts=resets + 1)).execute(intent)
    assert not outcome.replayed
    calls = world.calls()
    assert len(calls) == resets + 1
    assert {c.provider_key for c in calls} == {outcome.provider_key}
    assert [c.at for c in calls] == sorted(c.at for c in calls)  # backoff on the clock
    if world.g1:
        assert world.proxy is not None
        modes = [c.mode for c in world.proxy.log]
        assert modes == [Mode.RESET] * resets + [Mode.PASS]
        assert [c.forwarded for c in world.proxy.log] == [False] * resets + [True]
    else:
        assert world.sim is not None
        assert [c.fault for c in world.sim.calls()] == ["before_send"] * resets + [None]
    world.reconcile()
    assert len(world.charges(outcome.key)) == 1
    check(world, [outcome])


def test_r11_gateway_500(world: World) -> None:
    # The first request of the chain answers 500 (stored and replayed under its key); a new
    # request of the same chain succeeds.
    pm = f"tok_500|tok_visa|{world.nonce}" if world.g1 else "tok_visa"
    first = world.intent("r11a", pm=pm)
    if not world.g1:
        world.fault("status_500")
    with pytest.raises(OutcomeUnknownError):
        world.guard().execute(first)
    key = world.key_of(first)
    record = world.record(first)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert world.charges() == []
    if world.g1:
        # Resent with the same key inside the window: every answer is the stored 500.
        assert len(world.calls(key)) == 3
        assert set(_proxy_keys(world)) == {record.provider_key}
    world.reconcile()
    after = world.record(first)
    assert after is not None
    assert after.status is Status.UNKNOWN
    assert (after.reason or "").startswith(REVIEW)  # no charge found: a person decides
    assert world.charges() == []
    # The controlled new attempt: a new intent (new reference), never the old key reused.
    second = world.intent("r11b", pm=pm)
    outcome = world.guard().execute(second)
    assert len(world.charges()) == 1
    acks = [outcome]
    if not world.g1:
        # The provider moved money before answering 500: lookup adopts it, still one charge.
        third = world.intent("r11c")
        world.sim.script([Fault("status_500", moved=True)])  # type: ignore[union-attr]
        with pytest.raises(OutcomeUnknownError):
            world.guard().execute(third)
        world.reconcile()
        third_record = world.record(third)
        assert third_record is not None
        assert third_record.status is Status.SUCCEEDED
        assert len(world.charges(third_record.key)) == 1
        acks.append(world.guard().execute(third))
    world.reconcile()
    check(world, acks)


def test_r12_rate_limit_exhausted_releases_the_claim(world: World) -> None:
    intent = world.intent("r12", pm="tok_429" if world.g1 else "tok_visa")
    if not world.g1:
        world.fault("status_429", "status_429", "status_429")
    policy = RetryPolicy(max_attempts=3, base_delay=timedelta(milliseconds=200))
    with pytest.raises(GatewayUnavailableError) as caught:
        world.guard(retry=policy).execute(intent)
    assert "Retry the same intent" in str(caught.value)
    assert world.record(intent) is None  # released: the provider did not act
    calls = world.calls()
    assert len(calls) == 3
    assert len({c.provider_key for c in calls}) == 1  # never a new key
    gaps = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(timedelta(0) <= g for g in gaps)
    assert sum(gaps, timedelta(0)) > timedelta(0)  # backoff slept on the clock
    if world.g1:
        assert set(_proxy_keys(world)) == {calls[0].provider_key}
    assert world.charges() == []
    # 429 once, then the same key goes through: one charge.
    again = world.intent("r12b", pm=f"tok_429|tok_visa|{world.nonce}" if world.g1 else "tok_visa")
    if not world.g1:
        world.fault("status_429")
    outcome = world.guard(retry=policy).execute(again)
    assert len(world.calls(outcome.key)) == 2
    assert len(world.charges()) == 1
    world.reconcile()
    check(world, [outcome])


def test_r13_decline_is_definite_and_replayed(world: World) -> None:
    declined = world.intent("r13", pm="tok_chargeDeclined")
    with pytest.raises(PaymentDeclinedError) as first:
        world.guard().execute(declined)
    assert first.value.code == "card_declined"
    assert first.value.replayed is False
    record = world.record(declined)
    assert record is not None
    assert record.status is Status.FAILED
    calls = len(world.calls())
    with pytest.raises(PaymentDeclinedError) as again:
        world.guard().execute(declined)
    assert (again.value.code, again.value.replayed) == ("card_declined", True)
    assert len(world.calls()) == calls  # 0 new gateway calls
    # A new intent (another payment method, a new reference) may charge.
    outcome = world.guard().execute(world.intent("r13-new"))
    assert len(world.charges()) == 1
    world.reconcile()
    check(world, [outcome])


def test_r14_gateway_409_in_progress_waits_with_the_same_key(world: World) -> None:
    # G1: the proxy answers Stripe's 409 idempotency_key_in_use on the wire (the mock cannot);
    # G2: the simulated provider's in_progress_409.
    intent = world.intent("r14")
    world.fault(IN_USE, IN_USE)
    outcome = world.guard().execute(intent)
    assert not outcome.replayed
    calls = world.calls()
    assert [c.kind for c in calls] == ["in_flight", "in_flight", "success"]
    assert {c.provider_key for c in calls} == {outcome.provider_key}  # never a new key
    # The provider's Retry-After (1 s) was honoured on the guard's clock.
    assert all(b.at - a.at >= timedelta(seconds=1) for a, b in itertools.pairwise(calls))
    if world.g1:
        assert world.proxy is not None
        assert [c.mode for c in world.proxy.log] == [Mode.RESPOND, Mode.RESPOND, Mode.PASS]
        assert _proxy_keys(world) == [outcome.provider_key] * 3
    else:
        assert world.sim is not None
        assert [c.code for c in world.sim.calls()] == ["idempotency_key_in_use"] * 2 + [None]
    acks = [outcome]
    if world.g1:
        # The realistic order: the first request's answer is lost while Stripe still runs it;
        # the resend (same key, inside the window) meets 409, waits, and gets the replay.
        second = world.intent("r14-after-a-lost-answer")
        world.fault(DROP, IN_USE)
        replayed = world.guard().execute(second)
        assert [c.kind for c in world.calls(replayed.key)] == ["unknown", "in_flight", "success"]
        assert len(set(_proxy_keys(world)[3:])) == 1
        acks.append(replayed)
    assert len(world.charges()) == len(acks)
    world.reconcile()
    check(world, acks)

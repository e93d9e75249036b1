"""SCENARIOS R14 and R16 on SimulatedGateway (G3), with its idempotency on (Stripe-like) and off
(G2), over every store; R16 also on the Stripe-compatible server (G1), whose answer the fault
proxy holds back until the lease has expired and another request took the record over. Then the
Reconciler and the I1-I5 check. (R14 on G1, a 409 on the wire, is in test_gateway_faults.py.)"""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest

from payonce import (
    LeaseLostError,
    OutcomeUnknownError,
    PayonceError,
    RetryPolicy,
    Status,
    Store,
)
from payonce._model import Event
from payonce.gateways._simulated import Fault
from payonce.testing import ManualClock
from tests.fault_proxy import Mode
from tests.scenarios.harness import LEASE, World, check, open_world, sim_world
from tests.stripe_server import StripeMock

EVENT_TIMEOUT = 10.0  # seconds; only a safety net so that a broken test fails, never a timing

IDEMPOTENT = pytest.mark.parametrize("idempotent", [True, False], ids=["g3-dedup", "g2-no-dedup"])


@IDEMPOTENT
def test_r14_gateway_409_in_progress_waits_with_the_same_key(
    store: Store, clock: ManualClock, idempotent: bool
) -> None:
    world = sim_world(store, clock, idempotent=idempotent)
    intent = world.intent("r14")
    world.fault("in_progress_409", "in_progress_409")
    outcome = world.guard().execute(intent)
    assert not outcome.replayed
    assert world.sim is not None
    seen = world.sim.calls()
    assert [c.code for c in seen] == ["idempotency_key_in_use"] * 2 + [None]
    assert {c.provider_key for c in seen} == {outcome.provider_key}  # never a new key
    # The provider's Retry-After (1 s) was honoured on the guard's clock.
    calls = world.calls()
    assert all(b.at - a.at >= timedelta(seconds=1) for a, b in itertools.pairwise(calls))
    assert len(world.charges()) == 1
    world.reconcile()
    check(world, [outcome])


@IDEMPOTENT
def test_r16_lease_expires_while_the_gateway_call_is_in_flight(
    store: Store, clock: ManualClock, idempotent: bool
) -> None:
    taker: list[object] = []
    holder: list[World] = []

    def provider_takes_its_time(duration: timedelta) -> None:
        # The provider is still working when the lease runs out; meanwhile a second request
        # for the same intent arrives and takes the record over.
        clock.advance(duration)
        if not taker:
            world = holder[0]
            try:
                taker.append(world.guard().execute(intent))
            except PayonceError as exc:
                taker.append(exc)

    world = sim_world(store, clock, idempotent=idempotent, sleep=provider_takes_its_time)
    holder.append(world)
    intent = world.intent("r16")
    assert world.sim is not None
    world.sim.script([Fault("slow", duration=LEASE * 2)])
    zombie = world.guard()
    with pytest.raises(LeaseLostError):  # its late write is fenced off
        zombie.execute(intent)
    [taken] = taker
    assert isinstance(taken, OutcomeUnknownError)  # never "not charged", never a second call
    record = world.record(intent)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert record.attempt == 2
    assert len(world.charges(record.key)) == 1  # the zombie's call did complete
    # Both attempts used the key fixed at claim.
    assert {c.provider_key for c in world.calls()} == {record.provider_key}
    assert {c.provider_key for c in world.sim.calls()} == {record.provider_key}
    world.reconcile()
    final = world.record(intent)
    assert final is not None
    assert final.status is Status.SUCCEEDED
    history = check(world)
    entries = [e for e in history.entries if e.key == record.key]
    [succeeded] = [e for e in entries if e.event is Event.SUCCEEDED]
    assert succeeded.attempt == final.attempt == 3  # written by the Reconciler's lease, not 1
    outcome = world.guard().execute(intent)
    assert outcome.replayed
    assert len(world.charges()) == 1


@pytest.mark.parametrize("then", ["status_429", "before_send"])
def test_r12_not_executed_after_a_lost_answer_never_releases_the_claim(
    store: Store, clock: ManualClock, then: str
) -> None:
    # R9 then R12 inside one execute (a provider that deduplicates, so the guard resends): the
    # first call's answer is lost after the provider charged; the resends are refused (429, or
    # a refused connection). "This resend was not executed" says nothing about the first call,
    # so the claim must not be released as "no money moved".
    world = sim_world(store, clock, idempotent=True)
    intent = world.intent(f"r12-after-r9-{then}")
    world.fault("after_send", then, then)
    with pytest.raises(OutcomeUnknownError):
        world.guard(retry=RetryPolicy(max_attempts=3)).execute(intent)
    record = world.record(intent)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert len(world.charges(record.key)) == 1
    world.reconcile()
    outcome = world.guard().execute(intent)
    assert outcome.replayed
    assert len(world.charges()) == 1
    check(world, [outcome])


def test_r16_lease_expires_while_the_stripe_call_is_in_flight(
    store: Store, clock: ManualClock, stripe_server: StripeMock
) -> None:
    with open_world("g1", store, clock, stripe_server) as world:
        assert world.proxy is not None
        intent = world.intent("r16-g1")
        world.proxy.plan(Mode.HOLD)  # Stripe charges; its answer waits at the proxy
        zombie_saw: list[BaseException] = []

        def zombie() -> None:
            try:
                world.guard(gateway=world.gateway(timeout=EVENT_TIMEOUT)).execute(intent)
            except BaseException as exc:  # the test inspects it
                zombie_saw.append(exc)

        thread = threading.Thread(target=zombie)
        thread.start()
        held = world.proxy.connection(1, timeout=EVENT_TIMEOUT)
        assert held.upstream_answered.wait(EVENT_TIMEOUT), "Stripe never answered"
        record = world.record(intent)
        assert record is not None
        assert record.status is Status.CLAIMED
        clock.advance(LEASE + timedelta(seconds=1))  # the lease runs out mid-call
        # The second request takes over and, inside Stripe's window, resends the same key:
        # Stripe replays the charge the zombie's request made.
        taken = world.guard().execute(intent)
        assert taken.attempt == 2
        world.proxy.release()
        thread.join(EVENT_TIMEOUT)
        assert not thread.is_alive()
        [late] = zombie_saw
        assert isinstance(late, LeaseLostError)  # its late write is fenced off
        final = world.record(intent)
        assert final is not None
        assert (final.status, final.attempt, final.token) == (Status.SUCCEEDED, 2, 2)
        assert {r.idempotency_key for c in world.proxy.log for r in c.requests} == {
            record.provider_key
        }
        [charge] = world.charges(record.key)
        assert taken.value["id"] == charge["id"]
        world.reconcile()
        history = check(world, [taken])
        events = [e.event for e in history.entries if e.key == record.key]
        assert events == [Event.CLAIMED, Event.TAKEN_OVER, Event.SUCCEEDED]

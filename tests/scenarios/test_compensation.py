"""SCENARIOS R20 through ``guard.compensate`` on G1 (stripe-stateful-mock through the fault proxy)
and G2 (SimulatedGateway without idempotency), over every store: a retried and 16 concurrent
compensations of one charge never refund more than was captured; a hold that was never captured
is cancelled (voided) whole, once; every compensation is linked to its payment in the record and
the ledger. Then the Reconciler, the audit and the I1-I5 check.
"""

from __future__ import annotations

import json
import threading

import pytest

from payonce import (
    Event,
    InProgressError,
    IntentError,
    Outcome,
    OutcomeUnknownError,
    PayonceError,
    Status,
)
from tests.conftest import SCOPE
from tests.scenarios.harness import DROP, World, all_records, check


def _concurrently(world: World, key: str, *, sequence: int, callers: int = 16) -> list[object]:
    barrier = threading.Barrier(callers)
    results: list[object] = [None] * callers

    def caller(index: int) -> None:
        guard = world.guard()  # G1: a client of its own per thread
        barrier.wait()
        try:
            results[index] = guard.compensate(key, sequence=sequence)
        except PayonceError as exc:
            results[index] = exc

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    return results


def _links(world: World, key: str) -> list[str | None]:
    entries = world.store.entries(after=0, limit=100_000)
    return [json.loads(e.detail).get("compensates") for e in entries if e.key == key]


def test_r20_compensate_refunds_a_charge_never_beyond_the_capture(world: World) -> None:
    charged = world.guard().execute(world.intent("r20-comp", 1000))
    acks: list[Outcome] = [charged]
    # A retried compensation whose first answer was lost.
    world.fault(DROP)
    try:
        acks.append(world.guard().compensate(charged.key, amount=400))  # G1: resent in window
    except OutcomeUnknownError:
        assert not world.g1
        world.reconcile()  # G2: found by its payonce_key and adopted
    again = world.guard().compensate(charged.key, amount=400)
    assert again.replayed
    acks.append(again)
    # 16 concurrent compensations of what is left: one refund of 600.
    results = _concurrently(world, charged.key, sequence=1)
    assert all(isinstance(r, Outcome | InProgressError) for r in results), results
    done = [r for r in results if isinstance(r, Outcome)]
    assert done
    assert {r.value["amount"] for r in done} == {600}
    acks += done
    with pytest.raises(IntentError, match="refund at most 0"):
        world.guard().compensate(charged.key, sequence=2)
    world.reconcile()
    refunds = [o for o in world.objects() if o["object"] == "refund" and o["moved"]]
    assert sorted(r["amount"] for r in refunds) == [400, 600]
    assert {r["target"] for r in refunds} == {charged.value["id"]}
    if world.g1:
        [stored] = [c for c in world.charges() if c["id"] == charged.value["id"]]
        assert stored["amount_refunded"] == 1000  # the provider's own total
    compensations = [r for r in all_records(world.store) if r.operation == "refund"]
    assert {r.status for r in compensations} == {Status.SUCCEEDED}
    for record in compensations:  # linked in the record and the ledger
        assert record.intent_fields()["metadata"]["payonce_original"] == charged.key
        assert set(_links(world, record.key)) == {charged.key}
    assert world.reconciler().audit().discrepancies == []
    check(world, acks)


def test_r20_compensate_cancels_a_hold_never_captured(world: World) -> None:
    held = world.guard().execute(world.intent("r20-hold", 1500, params={"capture": False}))
    assert held.value["captured"] is False
    results = _concurrently(world, held.key, sequence=0)
    assert all(isinstance(r, Outcome | InProgressError) for r in results), results
    cancelled = [r for r in results if isinstance(r, Outcome)]
    assert cancelled
    assert len({r.body for r in cancelled}) == 1  # one release, replayed to everyone else
    record = world.store.get(SCOPE, cancelled[0].key)
    assert record is not None
    assert (record.operation, record.amount, record.status) == ("cancel", 1500, Status.SUCCEEDED)
    entries = [e for e in world.store.entries(after=0, limit=100_000) if e.key == record.key]
    assert [e.event for e in entries] == [Event.CLAIMED, Event.SUCCEEDED]
    assert set(_links(world, record.key)) == {held.key}
    if world.g1:
        # Stripe voids an uncaptured charge by refunding all of it; no money had moved.
        [charge] = [c for c in world.objects() if c["id"] == held.value["id"]]
        assert (charge["amount_refunded"], charge["net"]) == (1500, 0)
        releases = [o for o in world.objects() if o["object"] == "refund"]
        assert [(r["amount"], r["payonce_key"]) for r in releases] == [(1500, record.key)]
    else:
        assert world.sim is not None
        [obj] = world.sim.objects(key=held.key)
        assert obj.status == "canceled"
        assert [m.operation for m in world.sim.movements()] == ["authorization", "void"]
    with pytest.raises(IntentError, match="released whole"):
        world.guard().compensate(held.key, amount=100)
    world.reconcile()
    assert world.reconciler().audit().discrepancies == []
    check(world, [held, *cancelled])

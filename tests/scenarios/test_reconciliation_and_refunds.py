"""SCENARIOS R19 (reconciliation) and R20 (refunds) on G1 and G2 over every store.

Refunds go through ``guard.execute`` with refund intents (compensation, ``guard.compensate``, is
covered where it is written).
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from payonce import (
    Event,
    GatewayRejectedError,
    InProgressError,
    Outcome,
    OutcomeUnknownError,
    PaymentDeclinedError,
    PayonceError,
    RetryPolicy,
    Status,
)
from payonce._reconciler import LEDGER_WITHOUT_GATEWAY, REVIEW
from tests.conftest import SCOPE
from tests.scenarios.harness import (
    DROP,
    LEASE,
    Crash,
    World,
    all_records,
    check,
    crash_at,
)


def test_r19_reconciliation_adopts_resolves_and_flags_never_deletes(world: World) -> None:
    crashed_after_charge = world.intent("r19-charged")
    crashed_before_call = world.intent("r19-claimed")
    lost_answer = world.intent("r19-lost")
    lost_decline = world.intent("r19-declined", pm="tok_chargeDeclined")
    for intent, point in (
        (crashed_after_charge, "before_complete"),
        (crashed_before_call, "after_claim"),
    ):
        with pytest.raises(Crash):
            world.guard(faults=crash_at(point)).execute(intent)
    for intent in (lost_answer, lost_decline):
        world.fault(DROP)
        with pytest.raises(OutcomeUnknownError):
            world.guard(retry=RetryPolicy.never()).execute(intent)
    before = {r.key for r in all_records(world.store)}
    assert len(before) == 4
    calls = len(world.calls())
    world.clock.advance(LEASE + timedelta(seconds=1))
    report = world.reconciler().run_once()
    assert report.scanned == 4
    after = {r.key: r for r in all_records(world.store)}
    assert set(after) == before  # never deletes a money record
    status = {name: after[world.key_of(i)].status for name, i in (
        ("charged", crashed_after_charge),
        ("claimed", crashed_before_call),
        ("lost", lost_answer),
        ("declined", lost_decline),
    )}  # fmt: skip
    assert status["charged"] is Status.SUCCEEDED  # the orphan charge is adopted
    assert status["lost"] is Status.SUCCEEDED
    assert status["declined"] is Status.FAILED  # found failed: definite
    if world.g1:
        # Not found but inside Stripe's window: resent once with the same key.
        assert status["claimed"] is Status.SUCCEEDED
        assert (report.succeeded, report.failed, report.resent, report.flagged) == (3, 1, 1, 0)
        assert len(world.calls()) == calls + 1
    else:
        # Not found and the provider does not deduplicate: flagged, never resent.
        assert status["claimed"] is Status.UNKNOWN
        claimed = after[world.key_of(crashed_before_call)]
        assert (claimed.reason or "").startswith(REVIEW)
        assert (report.succeeded, report.failed, report.resent, report.flagged) == (2, 1, 0, 1)
        assert len(world.calls()) == calls
    acks = [world.guard().execute(crashed_after_charge), world.guard().execute(lost_answer)]
    assert all(a.replayed for a in acks)
    assert len(world.charges()) == (3 if world.g1 else 2)
    check(world, acks)


def test_r19_audit_reports_a_success_the_provider_does_not_hold(world: World) -> None:
    # tok_forget: the provider answers success and keeps nothing (the mock's token on G1, the
    # simulated provider's twin of it on G2). The audit reports it as a typed discrepancy and
    # changes nothing; the history checker sees the same hole (I2).
    kept = world.guard().execute(world.intent("r19-kept"))
    forgotten = world.guard().execute(world.intent("r19-forget", pm="tok_forget"))
    with pytest.raises(PaymentDeclinedError):  # FAILED records are not audited
        world.guard().execute(world.intent("r19-declined", pm="tok_chargeDeclined"))
    refund = world.guard().execute(world.refund(kept.value["id"], 400, "r19-refund"))
    world.reconcile()
    records = all_records(world.store)
    entries = list(world.store.entries(after=0, limit=100_000))
    calls = len(world.calls())
    report = world.reconciler().audit()
    assert (report.checked, report.matched, report.unverified) == (3, 2, [])
    [found] = report.discrepancies
    assert (found.kind, found.key, found.operation) == (
        LEDGER_WITHOUT_GATEWAY,
        forgotten.key,
        "charge",
    )
    assert found.scope == SCOPE
    assert forgotten.value["id"] in found.reason
    assert "never repeat the movement under a new key" in found.reason
    [succeeded] = [e for e in entries if e.key == forgotten.key and e.event is Event.SUCCEEDED]
    assert found.seq == succeeded.seq
    assert (report.complete, report.cursor) == (True, entries[-1].seq)
    # It only reads: records, ledger and provider as they were; no execute call.
    assert all_records(world.store) == records
    assert list(world.store.entries(after=0, limit=100_000)) == entries
    assert len(world.calls()) == calls
    assert world.charges(forgotten.key) == []
    assert refund.key not in {d.key for d in report.discrepancies}
    with pytest.raises(AssertionError, match=r"I2: .*(not at the provider|nothing moved)"):
        check(world, [kept, forgotten, refund])


def _refund_all(world: World, intents: list, threads: int) -> list[object]:
    barrier = threading.Barrier(threads)
    results: list[object] = [None] * len(intents)

    def caller(index: int) -> None:
        guard = world.guard()  # G1: a client of its own per thread
        barrier.wait()
        try:
            results[index] = guard.execute(intents[index])
        except PayonceError as exc:
            results[index] = exc

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(len(intents))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    return results


def test_r20_retried_and_concurrent_refunds_never_exceed_the_capture(world: World) -> None:
    charged = world.guard().execute(world.intent("r20", 1000))
    charge_id = charged.value["id"]
    acks: list[Outcome] = [charged]
    # A retried refund: its answer lost once, then the same intent again.
    first = world.refund(charge_id, 300, "r20-retried")
    world.fault(DROP)
    try:
        acks.append(world.guard().execute(first))  # G1: resent inside the window
    except OutcomeUnknownError:
        assert not world.g1
        world.reconcile()  # G2: found by its payonce_key and adopted
    again = world.guard().execute(first)
    assert again.replayed
    acks.append(again)
    # 16 concurrent callers of one refund intent: one refund.
    same = world.refund(charge_id, 100, "r20-same")
    results = _refund_all(world, [same] * 16, 16)
    assert all(isinstance(r, Outcome | InProgressError) for r in results), results
    acks += [r for r in results if isinstance(r, Outcome)]
    # 16 concurrent distinct refunds of 100 against the 600 left: at most 6 succeed.
    distinct = [world.refund(charge_id, 100, f"r20-{i}") for i in range(16)]
    results = _refund_all(world, distinct, 16)
    done = [r for r in results if isinstance(r, Outcome)]
    refused = [r for r in results if isinstance(r, GatewayRejectedError)]
    assert len(done) + len(refused) == 16, results
    assert len(done) == 6
    acks += done
    # A double full refund: the second is a typed, definite error.
    other = world.guard().execute(world.intent("r20-full", 500))
    acks.append(other)
    acks.append(world.guard().execute(world.refund(other.value["id"], 500, "r20-full-1")))
    with pytest.raises(GatewayRejectedError):
        world.guard().execute(world.refund(other.value["id"], 500, "r20-full-2"))
    world.reconcile()
    refunds = [o for o in world.objects() if o["object"] == "refund" and o["moved"]]
    by_charge: dict[str, int] = {}
    for refund in refunds:
        by_charge[refund["target"]] = by_charge.get(refund["target"], 0) + refund["amount"]
    assert by_charge == {charge_id: 1000, other.value["id"]: 500}
    if world.g1:
        [stored] = [c for c in world.charges() if c["id"] == charge_id]
        assert stored["amount_refunded"] == 1000  # the provider's own total
    succeeded = [
        r
        for r in all_records(world.store)
        if r.operation == "refund" and r.status is Status.SUCCEEDED
    ]
    assert sum(r.amount for r in succeeded) == 1500  # the ledger agrees with the provider
    check(world, acks)

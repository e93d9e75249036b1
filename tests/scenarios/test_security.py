"""SCENARIOS S6 (no secrets logged) and S7 (stored outcomes hold only what a caller needs), on G1
and G2 over every store, after a representative run: a success with a customer, a lost answer,
a decline, a 500, a 429, a crash after the charge, the Reconciler and replays.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

import pytest
import stripe

from payonce import Outcome, PayonceError, RetryPolicy, Status
from tests.conftest import SECRET
from tests.scenarios.harness import (
    ALLOWED_VALUE,
    API_KEY,
    DROP,
    LEASE,
    Crash,
    World,
    all_records,
    check,
    crash_at,
)

SECRET_KEY = re.compile(r"(sk|rk)_(test|live)_[A-Za-z0-9]+|whsec_[A-Za-z0-9]+")


def _customer(world: World) -> str:
    if world.g1:
        created = world.direct.v1.customers.create(params={"source": "tok_visa"})
        return str(created["id"])
    return f"cus_S6rawCustomer{world.nonce}"


def _representative_run(world: World) -> tuple[list[Outcome], list[str], list[str], list[str]]:
    """Run the subset; return (outcomes, error texts, raw customer ids, raw references)."""
    customer = _customer(world)
    intents = {
        "paid": world.intent("s6-order-paid", customer=customer, pm=None),
        "lost": world.intent("s6-order-lost", customer=customer, pm=None),
        "declined": world.intent("s6-order-declined", pm="tok_chargeDeclined"),
        "error": world.intent("s6-order-500", pm="tok_500" if world.g1 else "tok_visa"),
        "limited": world.intent("s6-order-429", pm="tok_429" if world.g1 else "tok_visa"),
        "crashed": world.intent("s6-order-crashed", customer=customer, pm=None),
    }
    outcomes: list[Outcome] = []
    errors: list[str] = []

    def run(name: str, **options: Any) -> None:
        try:
            outcomes.append(world.guard(**options).execute(intents[name]))
        except (PayonceError, Crash) as exc:
            errors.extend([str(exc), repr(exc)])
            errors.extend(str(a) for a in exc.args)

    run("paid")
    world.fault(DROP)
    run("lost", retry=RetryPolicy.never())
    run("declined")
    if not world.g1:
        world.fault("status_500")
    run("error")
    if not world.g1:
        world.fault("status_429", "status_429", "status_429")
    run("limited")
    run("crashed", faults=crash_at("before_complete"))
    report = world.reconciler().run_once()
    world.clock.advance(LEASE * 2)
    report = world.reconciler().run_once()
    errors.append(repr(report))
    for name in intents:
        run(name)
    references = [i.reference for i in intents.values() if i.reference is not None]
    return outcomes, errors, [customer], references


def _stored_text(world: World) -> tuple[str, list[str]]:
    """Everything the store holds, through its API, except each record's intent (which keeps the
    intent by design); and the outcome bodies alone."""
    parts, outcomes = [], []
    for record in all_records(world.store):
        parts.append(repr(dataclasses.replace(record, intent="")))
        if record.outcome is not None:
            outcomes.append(record.outcome)
    parts += [repr(e) for e in world.store.entries(after=0, limit=100_000)]
    return "\n".join(parts), outcomes


def test_s6_no_secret_or_raw_id_in_logs_errors_or_store(
    world: World,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stripe, "log", "debug")  # STRIPE_LOG=debug: the SDK prints to stderr
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="stripe")
    outcomes, errors, customers, references = _representative_run(world)
    world.reconcile()
    check(world, outcomes)
    stored, _ = _stored_text(world)
    out, err = capsys.readouterr()
    reprs = [repr(world.guard()), repr(world.reconciler()), repr(world.gateway().inner)]
    everything = "\n".join([caplog.text, out, err, *errors, stored, *map(repr, outcomes), *reprs])
    if world.g1:
        assert any(r.name.startswith("stripe") for r in caplog.records), "stripe logged nothing"
        assert API_KEY[:12] not in everything
    # I8: no API key and no HMAC secret anywhere, in any form.
    assert not SECRET_KEY.search(everything), SECRET_KEY.search(everything)
    assert SECRET.decode("latin-1") not in everything
    assert SECRET.hex() not in everything
    # payonce's own lines, errors and records carry no raw customer id or client reference.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("payonce")]
    payonce_text = "\n".join([*ours, *errors, stored, *map(repr, outcomes), *reprs])
    for raw in [*customers, *references]:
        assert raw not in payonce_text, raw
    assert errors, "the run must have raised typed errors to scan"


def test_s7_stored_outcomes_hold_only_the_documented_fields(world: World) -> None:
    outcomes, _, customers, _ = _representative_run(world)
    world.reconcile()
    _, bodies = _stored_text(world)
    statuses = {r.status for r in all_records(world.store)}
    assert {Status.SUCCEEDED, Status.FAILED} <= statuses
    assert len(bodies) >= 4
    for body in bodies:
        parsed = json.loads(body)
        assert set(parsed) in ({"value"}, {"error"}, {"error", "value"}), parsed
        if "error" in parsed:
            assert set(parsed["error"]) == {"code", "kind"}, parsed
            assert parsed["error"]["kind"] in ("declined", "definite")
        value = parsed.get("value")
        if value is not None:
            assert set(value) <= ALLOWED_VALUE, set(value) - ALLOWED_VALUE
        raws = (*customers, "tok_visa", "tok_chargeDeclined", API_KEY, '"card":', '"source":')
        for raw in (*raws, '"last4":', '"billing_details":', '"payment_method_details":'):
            assert raw not in body, (raw, body)
    for record in all_records(world.store):
        if record.status in (Status.CLAIMED, Status.UNKNOWN):
            assert record.outcome is None
    for outcome in outcomes:
        assert outcome.body in bodies  # what the caller got is what was stored, byte for byte

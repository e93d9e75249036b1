"""SimulatedGateway on its own: every fault and its effect on the provider's movement ledger,
its idempotency on and off, refunds never beyond what was captured, lookup inside and after the
idempotency window, and reproducibility for a seed.

Nothing sleeps for timing: time is a ManualClock, and calls that must overlap wait on events or a
barrier inside the injected ``sleep``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from payonce import (
    AsyncGateway,
    ConfigurationError,
    Gateway,
    GatewayAnswer,
    Intent,
    OutcomeClass,
)
from payonce.gateways import SimulatedGateway
from payonce.gateways._simulated import (
    FAULTS,
    VALUE_FIELDS,
    AsyncSimulatedGateway,
    Fault,
    provider_params,
)
from payonce.testing import ManualClock

HOUR = timedelta(hours=1)
EVENT_TIMEOUT = 5.0  # seconds; only a safety net so that a broken test fails instead of hanging


def charge(ref: str = "order-1", amount: int = 1000, **kw: Any) -> Intent:
    kw.setdefault("payment_method", "tok_visa")
    return Intent("charge", amount, "usd", customer="cus_secret42", reference=ref, **kw)


def refund(target: str, amount: int, ref: str = "refund-1") -> Intent:
    return Intent("refund", amount, "usd", target=target, reference=ref)


def run(gw: SimulatedGateway, intent: Intent, n: int | str = 1) -> GatewayAnswer:
    return gw.execute(intent, f"po1_{n}", key=f"k1_{n}")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def gw(clock: ManualClock) -> SimulatedGateway:
    return SimulatedGateway(clock=clock, seed=7)


@pytest.fixture
def plain(clock: ManualClock) -> SimulatedGateway:
    """The gateway without idempotency of its own (SCENARIOS G2)."""
    return SimulatedGateway(clock=clock, seed=7, idempotent=False)


# -- protocol, mapping and value shape --------------------------------------------------------


def test_twins_implement_the_gateway_protocols() -> None:
    assert isinstance(SimulatedGateway(), Gateway)
    assert isinstance(AsyncSimulatedGateway(), AsyncGateway)
    assert SimulatedGateway().idempotency_window == timedelta(hours=24)
    assert SimulatedGateway(idempotent=False).idempotency_window is None


def test_imports_nothing_outside_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import payonce.gateways._simulated; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names) - {'payonce'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_provider_params_maps_payment_methods_to_the_right_api() -> None:
    kind, params = provider_params(charge(params={"amount": 1, "description": "x"}), "k1_a")
    assert kind == "charge"
    assert params["source"] == "tok_visa"
    assert params["amount"] == 1000  # intent params never override the intent itself
    assert params["description"] == "x"
    assert params["metadata"] == {"payonce_key": "k1_a"}
    kind, params = provider_params(charge(payment_method="pm_card_visa"), "k1_b")
    assert (kind, params["payment_method"], params["confirm"]) == (
        "payment_intent",
        "pm_card_visa",
        True,
    )
    kind, params = provider_params(
        Intent("transfer", 500, "eur", destination="acct_1", metadata={"a": "b"}), "k1_c"
    )
    assert (kind, params["destination"]) == ("transfer", "acct_1")
    assert params["metadata"] == {"a": "b", "payonce_key": "k1_c"}


def test_every_operation_answers_with_only_the_documented_value_fields(
    gw: SimulatedGateway,
) -> None:
    ch = run(gw, charge(), 1)
    pi = run(
        gw, charge("order-2", payment_method="pm_card_visa", params={"capture_method": "manual"}), 2
    )
    cap = run(gw, Intent("capture", 800, "usd", target=pi.value["id"], reference="cap"), 3)
    ref = run(gw, refund(ch.value["id"], 300), 4)
    po = run(gw, Intent("payout", 700, "usd", destination="ba_1", reference="p"), 5)
    tr = run(gw, Intent("transfer", 600, "usd", destination="acct_1", reference="t"), 6)
    sub = run(gw, Intent("subscription", 900, "usd", customer="cus_secret42", reference="s"), 7)
    declined = run(gw, charge("order-3", payment_method="tok_chargeDeclinedInsufficientFunds"), 8)
    results = [ch, pi, cap, ref, po, tr, sub, declined]
    assert [r.kind for r in results] == [OutcomeClass.SUCCESS] * 7 + [OutcomeClass.DEFINITE]
    shown = [(r.value["object"], r.value["status"], r.value["amount"]) for r in results]
    assert shown == [
        ("charge", "succeeded", 1000),
        ("payment_intent", "requires_capture", 1000),
        ("payment_intent", "succeeded", 800),  # a capture answers with the amount captured
        ("refund", "succeeded", 300),
        ("payout", "pending", 700),
        ("transfer", "succeeded", 600),
        ("subscription", "active", 900),
        ("charge", "failed", 1000),
    ]
    for r in results:
        assert r.value is not None
        expected = {"id", "object", "status", "amount", "currency"}
        if r.kind is OutcomeClass.DEFINITE:
            expected |= {"decline_code"}
        if r.value["object"] == "charge":
            expected |= {"captured"}  # as Stripe's charges say whether the hold was captured
        assert set(r.value) == expected <= VALUE_FIELDS
        assert "cus_secret42" not in repr(r)
        assert "tok_" not in repr(r)
    assert declined.code == declined.value["decline_code"] == "insufficient_funds"
    sub_intent = Intent(
        "subscription", 900, "usd", customer="cus_x", payment_method="pm_card_chargeDeclined"
    )
    sub_declined = run(gw, sub_intent, 9)
    assert (sub_declined.kind, sub_declined.code) == (OutcomeClass.DEFINITE, "card_declined")
    assert sub_declined.value["status"] == "incomplete"
    # the authorization is a hold, the capture moves the money; the decline moves nothing
    ops = [m.operation for m in gw.movements()]
    assert ops == [
        "charge",
        "authorization",
        "capture",
        "refund",
        "payout",
        "transfer",
        "subscription",
    ]
    assert gw.movements_made == 7
    assert gw.calls_received == 9
    assert (
        len(gw.objects()) == 8
    )  # 6 objects moved money, plus 2 failed ones; the capture made none


# -- each fault and its movement effect -------------------------------------------------------


def test_before_send_is_not_executed_and_not_received(gw: SimulatedGateway) -> None:
    gw.script(["before_send"])
    first = run(gw, charge())
    assert (first.kind, first.code) == (OutcomeClass.NOT_EXECUTED, "connection_refused")
    assert gw.calls_received == 0
    assert gw.movements_made == 0
    again = run(gw, charge())  # nothing was stored under the key: this one executes afresh
    assert again.kind is OutcomeClass.SUCCESS
    assert not again.replayed
    assert gw.movements_made == 1
    assert [c.received for c in gw.calls()] == [False, True]


@pytest.mark.parametrize("idempotent", [True, False])
def test_after_send_moves_money_and_loses_the_answer(clock: ManualClock, idempotent: bool) -> None:
    gw = SimulatedGateway(clock=clock, idempotent=idempotent)
    gw.script(["after_send"])
    lost = run(gw, charge())
    assert (lost.kind, lost.code, lost.value) == (OutcomeClass.UNKNOWN, "connection_lost", None)
    assert gw.movements_made == 1
    retry = run(gw, charge())
    assert retry.kind is OutcomeClass.SUCCESS
    assert retry.replayed is idempotent
    # With its own idempotency the provider replays; without it, a resend charges again: only
    # payonce's lookup-before-resend keeps that case at one movement.
    assert gw.movements_made == (1 if idempotent else 2)


def test_status_500_by_default_moves_nothing_and_replays(gw: SimulatedGateway) -> None:
    gw.script(["status_500"])
    first = run(gw, charge())
    assert (first.kind, first.code) == (OutcomeClass.UNKNOWN, "api_error")
    again = run(gw, charge())
    assert (again.kind, again.code, again.replayed) == (OutcomeClass.UNKNOWN, "api_error", True)
    assert gw.movements_made == 0
    assert gw.lookup(charge(), "po1_1", key="k1_1") is None


@pytest.mark.parametrize(
    ("gateway_default", "fault"),
    [(True, Fault("status_500")), (False, Fault("status_500", moved=True))],
)
def test_status_500_can_be_told_the_money_moved(
    clock: ManualClock, gateway_default: bool, fault: Fault
) -> None:
    gw = SimulatedGateway(clock=clock, movement_on_500=gateway_default)
    gw.script([fault])
    assert run(gw, charge()).kind is OutcomeClass.UNKNOWN
    assert gw.movements_made == 1
    found = gw.lookup(charge(), "po1_1", key="k1_1")
    assert found is not None
    assert found.kind is OutcomeClass.SUCCESS


def test_status_429_is_not_executed_with_a_hint_and_not_stored(gw: SimulatedGateway) -> None:
    gw.script([Fault("status_429", retry_after=timedelta(seconds=3))])
    limited = run(gw, charge())
    assert (limited.kind, limited.code) == (OutcomeClass.NOT_EXECUTED, "rate_limit")
    assert limited.retry_after == timedelta(seconds=3)
    assert gw.movements_made == 0
    assert gw.calls_received == 1
    after = run(gw, charge())
    assert after.kind is OutcomeClass.SUCCESS
    assert not after.replayed
    assert gw.movements_made == 1


def test_in_progress_409_is_in_flight_and_not_stored(gw: SimulatedGateway) -> None:
    gw.script(["in_progress_409", "in_progress_409"])
    answers = [run(gw, charge()) for _ in range(3)]
    assert [(a.kind, a.code) for a in answers[:2]] == [
        (OutcomeClass.IN_FLIGHT, "idempotency_key_in_use")
    ] * 2
    assert answers[0].retry_after == timedelta(seconds=1)
    assert answers[2].kind is OutcomeClass.SUCCESS
    assert not answers[2].replayed
    assert gw.movements_made == 1
    assert {c.provider_key for c in gw.calls()} == {"po1_1"}  # what R14 checks


def test_decline_is_definite_recorded_and_replayed(gw: SimulatedGateway) -> None:
    gw.script([Fault("decline", code="insufficient_funds")])
    declined = run(gw, charge())
    assert (declined.kind, declined.code) == (OutcomeClass.DEFINITE, "insufficient_funds")
    assert declined.value is not None
    assert declined.value["status"] == "failed"
    assert gw.movements_made == 0
    [obj] = gw.objects(key="k1_1")
    assert (obj.status, obj.decline_code, obj.amount_captured) == (
        "failed",
        "insufficient_funds",
        0,
    )
    again = run(gw, charge())
    assert (again.kind, again.value, again.replayed) == (
        OutcomeClass.DEFINITE,
        declined.value,
        True,
    )
    found = gw.lookup(charge(), "po1_1", key="k1_1")
    assert found is not None
    assert (found.kind, found.code, found.value) == (
        OutcomeClass.DEFINITE,
        "insufficient_funds",
        declined.value,
    )
    assert gw.movements_made == 0


def test_slow_advances_the_manual_clock_instead_of_sleeping(clock: ManualClock) -> None:
    gw = SimulatedGateway(clock=clock, latency=timedelta(seconds=2))
    start = clock.now()
    gw.script([Fault("slow", duration=timedelta(minutes=5))])
    assert run(gw, charge()).kind is OutcomeClass.SUCCESS
    assert clock.now() - start == timedelta(minutes=5, seconds=2)
    [movement] = gw.movements()
    assert movement.created == clock.now()  # the movement happens when the slow call ends


def test_a_call_whose_sleep_dies_never_executes_and_frees_the_key(clock: ManualClock) -> None:
    class Died(BaseException):
        pass

    def die(_: timedelta) -> None:
        raise Died

    gw = SimulatedGateway(clock=clock, sleep=die)
    gw.script(["slow"])
    with pytest.raises(Died):
        run(gw, charge())
    assert gw.movements_made == 0
    assert run(gw, charge()).kind is OutcomeClass.SUCCESS  # not "in use" forever


def test_lookup_fault_means_the_provider_could_not_be_asked(gw: SimulatedGateway) -> None:
    run(gw, charge())
    gw.script(["lookup"], provider_key="po1_1")
    failed = gw.lookup(charge(), "po1_1", key="k1_1")
    assert failed is not None
    assert (failed.kind, failed.code) == (
        OutcomeClass.UNKNOWN,
        "api_connection_error",
    )
    found = gw.lookup(charge(), "po1_1", key="k1_1")
    assert found is not None
    assert found.kind is OutcomeClass.SUCCESS
    assert gw.lookups_received == 2


def test_faults_for_a_provider_key_come_before_the_general_queue(gw: SimulatedGateway) -> None:
    gw.script(["decline", None, "status_429"])
    gw.script(["after_send"], provider_key="po1_b")
    b = run(gw, charge("b"), "b")  # its own fault, the general queue untouched
    a = run(gw, charge("a"), "a")  # general: decline
    c = run(gw, charge("c"), "c")  # general: None, no fault
    d = run(gw, charge("d"), "d")  # general: 429
    e = run(gw, charge("e"), "e")  # queues empty, no rates: no fault
    assert [r.kind for r in (b, a, c, d, e)] == [
        OutcomeClass.UNKNOWN,
        OutcomeClass.DEFINITE,
        OutcomeClass.SUCCESS,
        OutcomeClass.NOT_EXECUTED,
        OutcomeClass.SUCCESS,
    ]
    assert [c.fault for c in gw.calls()] == ["after_send", "decline", None, "status_429", None]


def test_bad_faults_and_rates_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown fault"):
        Fault("timeout")
    with pytest.raises(ConfigurationError, match="unknown fault"):
        SimulatedGateway(rates={"crash": 0.1})
    with pytest.raises(ConfigurationError, match="between 0 and 1"):
        SimulatedGateway(rates={"decline": 1.5})
    with pytest.raises(ConfigurationError, match="at most 1"):
        SimulatedGateway(rates={"decline": 0.6, "status_500": 0.6})
    with pytest.raises(ConfigurationError, match="negative"):
        SimulatedGateway(latency=timedelta(seconds=-1))


# -- idempotency --------------------------------------------------------------------------------


def test_same_key_twice_is_one_movement_when_on_and_two_when_off(
    gw: SimulatedGateway, plain: SimulatedGateway
) -> None:
    first, second = run(gw, charge()), run(gw, charge())
    assert second.replayed
    assert second.value == first.value
    assert gw.movements_made == 1
    assert len(gw.movements(key="k1_1")) == 1
    one, two = run(plain, charge()), run(plain, charge())
    assert not two.replayed
    assert one.value != two.value
    assert plain.movements_made == 2
    assert len(plain.movements(key="k1_1")) == 2


def test_a_replay_cannot_be_changed_by_the_caller(gw: SimulatedGateway) -> None:
    first = run(gw, charge())
    assert first.value is not None
    original = dict(first.value)
    first.value["amount"] = 1
    replayed = run(gw, charge())
    assert replayed.value == original
    assert replayed.value is not None
    replayed.value["amount"] = 2
    assert run(gw, charge()).value == original


def test_same_key_other_parameters_is_an_idempotency_error(gw: SimulatedGateway) -> None:
    run(gw, charge(amount=1000))
    reused = run(gw, charge(amount=2000))
    assert (reused.kind, reused.code, reused.value) == (
        OutcomeClass.DEFINITE,
        "idempotency_error",
        None,
    )
    other_record_key = gw.execute(charge(), "po1_1", key="k1_other")  # payonce_key is a parameter
    assert other_record_key.code == "idempotency_error"
    assert gw.movements_made == 1


def test_a_key_is_forgotten_after_the_window(clock: ManualClock, gw: SimulatedGateway) -> None:
    run(gw, charge())
    clock.advance(23 * HOUR)
    assert run(gw, charge()).replayed
    clock.advance(HOUR)  # 24 h after the first request
    again = run(gw, charge())
    assert again.kind is OutcomeClass.SUCCESS
    assert not again.replayed
    assert gw.movements_made == 2  # why payonce must look up, not resend, after the window


def test_no_window_remembers_keys_forever(clock: ManualClock) -> None:
    gw = SimulatedGateway(clock=clock, idempotency_window=None)
    run(gw, charge())
    clock.advance(24 * 365 * HOUR)
    assert run(gw, charge()).replayed
    assert gw.movements_made == 1


def _holding_sleep(
    clock: ManualClock,
) -> tuple[Callable[[timedelta], None], threading.Event, threading.Event]:
    """A sleep that reports the call in flight, holds it until released, then advances time."""
    started, release = threading.Event(), threading.Event()

    def sleep(duration: timedelta) -> None:
        started.set()
        assert release.wait(EVENT_TIMEOUT)
        clock.advance(duration)

    return sleep, started, release


def test_a_key_in_flight_answers_409_until_the_first_call_ends(clock: ManualClock) -> None:
    sleep, started, release = _holding_sleep(clock)
    gw = SimulatedGateway(clock=clock, sleep=sleep)
    gw.script([Fault("slow", duration=timedelta(minutes=2))])
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(run, gw, charge())
        assert started.wait(EVENT_TIMEOUT)
        busy = run(gw, charge())
        assert (busy.kind, busy.code) == (OutcomeClass.IN_FLIGHT, "idempotency_key_in_use")
        assert busy.retry_after is not None
        assert gw.lookup(charge(), "po1_1", key="k1_1") is None  # not visible while in flight
        assert gw.movements_made == 0
        release.set()
        first = slow.result(EVENT_TIMEOUT)
    assert first.kind is OutcomeClass.SUCCESS
    assert not first.replayed
    assert run(gw, charge()).replayed
    assert gw.movements_made == 1


def test_without_idempotency_a_duplicate_in_flight_moves_money_twice(clock: ManualClock) -> None:
    sleep, started, release = _holding_sleep(clock)
    gw = SimulatedGateway(clock=clock, sleep=sleep, idempotent=False)
    gw.script(["slow"])
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(run, gw, charge())
        assert started.wait(EVENT_TIMEOUT)
        assert run(gw, charge()).kind is OutcomeClass.SUCCESS
        release.set()
        assert slow.result(EVENT_TIMEOUT).kind is OutcomeClass.SUCCESS
    assert len(gw.movements(key="k1_1")) == 2


# -- captures and refunds -----------------------------------------------------------------------


def test_capture_of_an_uncaptured_charge(gw: SimulatedGateway) -> None:
    auth = run(gw, charge(params={"capture": False}), "auth")
    assert auth.value is not None
    ch = auth.value["id"]
    assert run(gw, refund(ch, 100), "early").code == "amount_too_large"  # nothing captured yet
    too_much = run(gw, Intent("capture", 1500, "usd", target=ch, reference="c0"), "c0")
    assert too_much.code == "amount_too_large"
    cap = run(gw, Intent("capture", 700, "usd", target=ch, reference="c1"), "c1")
    assert cap.kind is OutcomeClass.SUCCESS
    assert cap.value is not None
    assert (cap.value["id"], cap.value["amount"]) == (ch, 700)
    again = run(gw, Intent("capture", 700, "usd", target=ch, reference="c2"), "c2")
    assert again.code == "charge_already_captured"
    [obj] = gw.objects(key="k1_auth")
    assert obj.amount_captured == 700
    assert run(gw, refund(ch, 701), "r1").code == "amount_too_large"  # captured, not authorized
    assert run(gw, refund(ch, 700), "r2").kind is OutcomeClass.SUCCESS
    found = gw.lookup(
        Intent("capture", 700, "usd", target=ch, reference="c1"), "po1_c1", key="k1_c1"
    )
    assert found is not None
    assert found.value == cap.value
    assert [m.operation for m in gw.movements()] == ["authorization", "capture", "refund"]


@pytest.mark.parametrize(
    "hold",
    [{"params": {"capture": False}}, {"payment_method": "pm_card_visa",
                                      "params": {"capture_method": "manual"}}],
    ids=["charge", "payment_intent"],
)  # fmt: skip
def test_cancel_releases_a_hold_whole_and_once(
    plain: SimulatedGateway, hold: dict[str, Any]
) -> None:
    auth = run(plain, charge(**hold), "auth")
    assert auth.value is not None
    target, kind = auth.value["id"], auth.value["object"]
    assert auth.value.get("captured", False) is False

    def cancel(amount: int, n: str) -> GatewayAnswer:
        return run(plain, Intent("cancel", amount, "usd", target=target, reference=n), n)

    assert cancel(400, "part").code == "amount_mismatch"  # a hold is released whole
    done = cancel(1000, "v1")
    assert done.kind is OutcomeClass.SUCCESS
    assert done.value is not None
    assert (done.value["id"], done.value["status"], done.value["amount"]) == (
        target,
        "canceled",
        1000,
    )
    # Without the provider's idempotency a second cancel is refused, never a second release.
    twice = cancel(1000, "v2")
    assert twice.kind is OutcomeClass.DEFINITE
    assert twice.code == (
        "payment_intent_unexpected_state" if kind == "payment_intent" else "charge_already_refunded"
    )
    late = run(plain, Intent("capture", 1000, "usd", target=target, reference="c"), "c")
    assert late.code == twice.code  # a released hold cannot be captured either
    assert [m.operation for m in plain.movements()] == ["authorization", "void"]
    found = plain.lookup(Intent("cancel", 1000, "usd", target=target, reference="v1"), "po1_v1",
                         key="k1_v1")  # fmt: skip
    assert found is not None
    assert (found.kind, found.value) == (OutcomeClass.SUCCESS, done.value)
    assert (
        plain.lookup(
            Intent("cancel", 1000, "usd", target=target, reference="v2"), "po1_v2", key="k1_v2"
        )
        is None
    )


def test_cancel_of_a_captured_charge_is_refused(plain: SimulatedGateway) -> None:
    ch = run(plain, charge()).value["id"]
    refused = run(plain, Intent("cancel", 1000, "usd", target=ch, reference="v"), "v")
    assert (refused.kind, refused.code) == (OutcomeClass.DEFINITE, "charge_already_captured")
    assert [m.operation for m in plain.movements()] == ["charge"]


def test_refunds_never_exceed_what_was_captured(gw: SimulatedGateway) -> None:
    ch = run(gw, charge()).value["id"]
    assert run(gw, refund(ch, 600, "a"), "a").kind is OutcomeClass.SUCCESS
    over = run(gw, refund(ch, 500, "b"), "b")
    assert (over.kind, over.code, over.value) == (OutcomeClass.DEFINITE, "amount_too_large", None)
    assert run(gw, refund(ch, 400, "c"), "c").kind is OutcomeClass.SUCCESS
    assert run(gw, refund(ch, 1, "d"), "d").code == "amount_too_large"
    [obj] = gw.objects(key="k1_1")
    assert (obj.amount_captured, obj.amount_refunded) == (1000, 1000)
    assert run(gw, refund("ch_missing", 1, "e"), "e").code == "resource_missing"
    other = Intent("refund", 1, "eur", target=ch, reference="f")
    assert run(gw, other, "f").code == "currency_mismatch"


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_retried_refund_after_a_lost_answer(clock: ManualClock, idempotent: bool) -> None:
    gw = SimulatedGateway(clock=clock, idempotent=idempotent)
    ch = run(gw, charge()).value["id"]
    gw.script(["after_send"])
    assert run(gw, refund(ch, 1000), "r").kind is OutcomeClass.UNKNOWN
    retry = run(gw, refund(ch, 1000), "r")
    if idempotent:
        assert retry.kind is OutcomeClass.SUCCESS
        assert retry.replayed
    else:  # the provider refuses the second full refund on its own
        assert (retry.kind, retry.code) == (OutcomeClass.DEFINITE, "amount_too_large")
    assert [m.operation for m in gw.movements()] == ["charge", "refund"]


@pytest.mark.parametrize("idempotent", [True, False])
def test_sixteen_concurrent_refunds_never_exceed_the_capture(
    clock: ManualClock, idempotent: bool
) -> None:
    barrier = threading.Barrier(16, timeout=EVENT_TIMEOUT)
    armed = threading.Event()

    def sleep(duration: timedelta) -> None:
        if armed.is_set():
            barrier.wait()  # all 16 are in flight together before any of them executes
        clock.advance(duration)

    gw = SimulatedGateway(
        clock=clock, sleep=sleep, latency=timedelta(milliseconds=50), idempotent=idempotent
    )
    ch = run(gw, Intent("charge", 1000, "usd", payment_method="tok_visa", reference="o"), "ch")
    assert ch.value is not None
    armed.set()
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda n: run(gw, refund(ch.value["id"], 150, f"r{n}"), f"r{n}"), range(16))
        )
    ok = [r for r in results if r.kind is OutcomeClass.SUCCESS]
    refused = [r for r in results if r.code == "amount_too_large"]
    assert (len(ok), len(refused)) == (6, 10)  # 6 * 150 = 900 <= 1000 < 7 * 150
    refunds = [m for m in gw.movements() if m.operation == "refund"]
    assert sum(m.amount for m in refunds) == 900
    [obj] = gw.objects(key="k1_ch")
    assert obj.amount_refunded == 900 <= obj.amount_captured


# -- lookup -------------------------------------------------------------------------------------


def test_lookup_before_and_after_the_window(clock: ManualClock, gw: SimulatedGateway) -> None:
    assert gw.lookup(charge(), "po1_1", key="k1_1") is None  # nothing exists yet
    made = run(gw, charge())
    inside = gw.lookup(charge(), "po1_1", key="k1_1")
    assert inside == GatewayAnswer(OutcomeClass.SUCCESS, value=made.value)
    clock.advance(25 * HOUR)
    after = gw.lookup(charge(), "po1_1", key="k1_1")
    assert after == inside  # found by metadata, not by the forgotten provider key
    assert gw.lookup(charge("other"), "po1_2", key="k1_2") is None
    assert gw.movements_made == 1


def test_lookup_prefers_the_object_that_moved_money(plain: SimulatedGateway) -> None:
    plain.script(["decline", None, "decline"])
    results = [run(plain, charge()) for _ in range(3)]
    found = plain.lookup(charge(), "po1_1", key="k1_1")
    assert found is not None
    assert (found.kind, found.value) == (OutcomeClass.SUCCESS, results[1].value)


# -- reproducibility ----------------------------------------------------------------------------


def _workload(seed: int, clock: ManualClock) -> tuple[list[GatewayAnswer], list[Any]]:
    rates = dict.fromkeys(FAULTS - {"slow"}, 0.08) | {"slow": 0.05}
    gw = SimulatedGateway(clock=clock, seed=seed, rates=rates)
    results: list[GatewayAnswer | None] = []
    for n in range(80):
        intent = charge(f"order-{n % 25}")  # repeats: replays, in-flight-free duplicates
        results.append(gw.execute(intent, f"po1_{n % 25}", key=f"k1_{n % 25}"))
        results.append(gw.lookup(intent, f"po1_{n % 25}", key=f"k1_{n % 25}"))
    return [r for r in results if r is not None], gw.objects()


def test_the_same_seed_gives_the_same_faults_results_and_ids() -> None:
    first = _workload(42, ManualClock())
    second = _workload(42, ManualClock())
    assert first == second
    results, objects = first
    assert {r.kind for r in results} == set(OutcomeClass)  # the rates did inject faults
    assert all(set(r.value) <= VALUE_FIELDS for r in results if r.value is not None)
    assert len({o.id for o in objects}) == len(objects)
    assert _workload(43, ManualClock()) != first


# -- the async twin -----------------------------------------------------------------------------


def test_async_twin_shares_the_provider_logic(clock: ManualClock) -> None:
    gw = AsyncSimulatedGateway(clock=clock, idempotent=True)

    async def scenario() -> list[GatewayAnswer | None]:
        gw.script([Fault("slow", duration=timedelta(minutes=1)), "after_send"])
        return [
            await gw.execute(charge(), "po1_1", key="k1_1"),
            await gw.execute(charge("b"), "po1_2", key="k1_2"),
            await gw.execute(charge("b"), "po1_2", key="k1_2"),
            await gw.lookup(charge("b"), "po1_2", key="k1_2"),
        ]

    start = clock.now()
    slow, lost, replay, found = asyncio.run(scenario())
    assert clock.now() - start == timedelta(minutes=1)
    assert slow is not None
    assert slow.kind is OutcomeClass.SUCCESS
    assert lost is not None
    assert lost.kind is OutcomeClass.UNKNOWN
    assert replay is not None
    assert replay.replayed
    assert found is not None
    assert found.value == replay.value
    assert gw.movements_made == 2

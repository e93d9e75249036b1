"""SimulatedGateway (L4): an in-process payment provider for tests and the demo. Stdlib only.

It keeps its own ledger of money movements, deduplicates on the provider key like Stripe (or not
at all, to prove that payonce alone is safe), and injects faults deterministically at the points
of DESIGN §11. ``provider_params`` is the one place an intent becomes provider parameters.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from payonce._clock import SystemClock
from payonce._errors import ConfigurationError
from payonce._intent import Intent
from payonce._keys import canonical_json
from payonce._model import GatewayAnswer, OutcomeClass
from payonce._protocols import Clock

__all__ = [
    "FAULTS",
    "VALUE_FIELDS",
    "AsyncSimulatedGateway",
    "Call",
    "Fault",
    "Movement",
    "ProviderObject",
    "SimulatedGateway",
    "provider_params",
]

#: Every fault kind. ``lookup`` applies to ``lookup`` calls, every other kind to ``execute``.
FAULTS: Final = frozenset(
    {
        "before_send",
        "after_send",
        "status_500",
        "status_429",
        "in_progress_409",
        "decline",
        "slow",
        "lookup",
    }
)
#: The only keys a result's ``value`` may hold (``decline_code`` only for a decline, ``captured``
#: only for a charge).
VALUE_FIELDS: Final = frozenset(
    {"id", "object", "status", "amount", "currency", "decline_code", "captured"}
)

_CHARGES_API: Final = ("tok_", "src_", "card_")
_PREFIX: Final = {
    "charge": "ch",
    "payment_intent": "pi",
    "refund": "re",
    "payout": "po",
    "transfer": "tr",
    "subscription": "sub",
}
_SUCCEEDED: Final = {"payout": "pending", "subscription": "active"}
_FAILED: Final = {"payment_intent": "requires_payment_method", "subscription": "incomplete"}
# Stripe's test payment methods that decline, so that a demo can decline without scripting.
_DECLINING: Final = {
    "tok_chargeDeclined": "card_declined",
    "tok_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclined": "card_declined",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
_RANDOM_DECLINES: Final = ("card_declined", "insufficient_funds")
# stripe-stateful-mock's token that answers success and keeps nothing: the provider forgot.
_FORGETTING: Final = "tok_forget"
_ID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault; ``kind`` is one of ``FAULTS``. See ``SimulatedGateway`` for effects.

    Attributes:
        kind: the fault.
        code: for ``decline``, the decline code (default ``card_declined``).
        duration: for ``slow``, how long the call takes on the gateway's sleep.
        retry_after: for ``status_429`` and ``in_progress_409``, the provider's hint.
        moved: for ``status_500``, whether the provider moved the money before failing
            (None: the gateway's ``movement_on_500``).
    """

    kind: str
    code: str | None = None
    duration: timedelta = timedelta(seconds=30)
    retry_after: timedelta = timedelta(seconds=1)
    moved: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ConfigurationError(
                f"unknown fault {self.kind!r}; use one of {', '.join(sorted(FAULTS))}"
            )


@dataclass(frozen=True, slots=True)
class ProviderObject:
    """An object the provider created, as it stands now (refunds and captures update it).

    ``amount_captured`` and ``amount_refunded`` matter for charges and PaymentIntents; a failed
    object carries its ``decline_code``.
    """

    id: str
    object: str
    operation: str
    amount: int
    currency: str
    customer: str | None
    status: str
    payonce_key: str
    provider_key: str
    created: datetime
    target: str | None = None
    decline_code: str | None = None
    amount_captured: int = 0
    amount_refunded: int = 0


@dataclass(frozen=True, slots=True)
class Movement:
    """One money movement, in the order the provider made them.

    ``operation`` is ``charge`` (captured at once), ``authorization`` (an uncaptured charge: a
    hold), ``capture``, ``void`` (a hold released by ``cancel``), ``refund``, ``payout``,
    ``transfer`` or ``subscription``; ``object_id`` is the object created (or, for a capture or a
    void, the charge it acted on).
    """

    object_id: str
    operation: str
    amount: int
    currency: str
    customer: str | None
    payonce_key: str
    provider_key: str
    created: datetime


@dataclass(frozen=True, slots=True)
class Call:
    """One ``execute`` or ``lookup`` call, as the gateway saw and answered it.

    ``received`` is False when the call never reached the provider (``before_send``); ``fault``
    names the injected fault, if any; ``kind``/``code``/``replayed`` are what the caller got.
    """

    operation: str
    provider_key: str
    payonce_key: str
    fault: str | None
    received: bool
    kind: OutcomeClass | None
    code: str | None
    replayed: bool


def provider_params(intent: Intent, key: str) -> tuple[str, dict[str, Any]]:
    """The provider's object type and parameters for ``intent`` (the one mapping).

    Stripe-shaped: a payment method ``tok_``/``src_``/``card_`` goes through the Charges API
    (``source``), anything else through PaymentIntents (created and confirmed). ``key`` goes
    into the metadata as ``payonce_key``. ``intent.params`` are passed on but never override
    what the intent itself says. Currency is sent for every operation, so that the provider
    refuses a capture or refund in another currency than its charge.
    """
    core: dict[str, Any] = {"amount": intent.amount, "currency": intent.currency}
    op = intent.operation
    if op == "charge":
        pm = intent.payment_method
        if pm is not None and pm.startswith(_CHARGES_API):
            kind, core["source"] = "charge", pm
        else:
            kind, core["confirm"] = "payment_intent", True
            if pm is not None:
                core["payment_method"] = pm
    elif op == "subscription":
        kind = "subscription"
        if intent.payment_method is not None:
            core["default_payment_method"] = intent.payment_method
    elif op in ("capture", "refund", "cancel"):
        assert intent.target is not None  # the Intent refuses these without a target
        kind, core["target"] = op, intent.target
    else:
        kind = op
    if op not in ("capture", "cancel") and intent.customer is not None:
        core["customer"] = intent.customer
    if op in ("payout", "transfer") and intent.destination is not None:
        core["destination"] = intent.destination
    core["metadata"] = {**intent.metadata, "payonce_key": key}
    return kind, {**intent.params, **core}


def _view(
    obj: ProviderObject, *, amount: int | None = None, status: str | None = None
) -> dict[str, Any]:
    # Only what a caller needs (S7): never card data, customer ids or raw provider bodies.
    out: dict[str, Any] = {
        "id": obj.id,
        "object": obj.object,
        "status": status or obj.status,
        "amount": obj.amount if amount is None else amount,
        "currency": obj.currency,
    }
    if obj.decline_code is not None:
        out["decline_code"] = obj.decline_code
    if obj.object == "charge":
        out["captured"] = obj.amount_captured > 0
    return out


@dataclass(frozen=True, slots=True)
class _Capture:
    object_id: str
    amount: int
    payonce_key: str
    decline_code: str | None


@dataclass(slots=True)
class _Entry:
    params: str
    answer: GatewayAnswer | None  # None while the first call with the key is in flight
    created: datetime


@dataclass(frozen=True, slots=True)
class _Pending:
    """A call admitted by ``_begin``: to finish after ``delay`` on the gateway's sleep."""

    kind: str
    params: dict[str, Any]
    operation: str
    provider_key: str
    key: str
    fault: Fault | None
    replay: GatewayAnswer | None
    delay: timedelta


def _unexpected(charge: ProviderObject) -> str:
    """Stripe's code for acting on a hold that was released (or never made)."""
    if charge.object == "payment_intent":
        return "payment_intent_unexpected_state"
    return "charge_already_refunded"


def _result(
    kind: OutcomeClass,
    code: str | None = None,
    *,
    value: Any = None,
    retry_after: timedelta | None = None,
) -> GatewayAnswer:
    return GatewayAnswer(kind=kind, value=value, code=code, retry_after=retry_after)


class _SimulatedBase:
    """The provider's state and logic; the twins add only the sleep."""

    idempotency_window: timedelta | None

    def __init__(
        self,
        *,
        idempotent: bool,
        latency: timedelta,
        clock: Clock | None,
        seed: int | None,
        idempotency_window: timedelta | None,
        rates: Mapping[str, float] | None,
        movement_on_500: bool,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._idempotent = idempotent
        self._window = idempotency_window
        self.idempotency_window = idempotency_window if idempotent else None
        if latency < timedelta(0):
            raise ConfigurationError("latency must not be negative")
        self._latency = latency
        self._movement_on_500 = movement_on_500
        self._rates = self._check_rates(rates or {})
        # Seeded generators, not security: the same seed and calls give the same faults and ids.
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault draws
        ids_seed = f"payonce-sim-ids:{seed}" if seed is not None else None
        self._ids = random.Random(ids_seed)  # noqa: S311 - reproducible object ids
        self._lock = threading.Lock()
        self._queue: deque[Fault | None] = deque()
        self._by_key: dict[str, deque[Fault | None]] = {}
        self._lookup_queue: deque[Fault | None] = deque()
        self._lookup_by_key: dict[str, deque[Fault | None]] = {}
        self._keys: dict[str, _Entry] = {}
        self._objects: dict[str, ProviderObject] = {}
        self._movements: list[Movement] = []
        self._captures: list[_Capture] = []
        self._cancels: list[_Capture] = []
        self._calls: list[Call] = []
        self._received = 0
        self._lookups = 0

    @staticmethod
    def _check_rates(rates: Mapping[str, float]) -> dict[str, float]:
        for kind, rate in rates.items():
            if kind not in FAULTS:
                raise ConfigurationError(f"unknown fault {kind!r} in rates")
            if not 0.0 <= rate <= 1.0:
                raise ConfigurationError(f"rate of {kind!r} must be between 0 and 1")
        if sum(rate for kind, rate in rates.items() if kind != "lookup") > 1.0:
            raise ConfigurationError("the execute fault rates must add up to at most 1")
        return dict(sorted(rates.items()))  # sorted: the draw must not depend on dict order

    # -- scripting and accessors ------------------------------------------------------------

    def script(
        self, faults: Iterable[Fault | str | None], *, provider_key: str | None = None
    ) -> None:
        """Queue faults for the next calls, in order: of ``provider_key`` only, or of any key.

        ``None`` stands for a call without a fault. A ``lookup`` fault is consumed by the next
        ``lookup`` call, every other kind by the next ``execute`` call. A call takes the next
        fault of its provider key's queue first, then of the general queue, and draws from
        ``rates`` only when both are empty.
        """
        with self._lock:
            for item in faults:
                fault = Fault(item) if isinstance(item, str) else item
                lookup = fault is not None and fault.kind == "lookup"
                if provider_key is None:
                    (self._lookup_queue if lookup else self._queue).append(fault)
                else:
                    table = self._lookup_by_key if lookup else self._by_key
                    table.setdefault(provider_key, deque()).append(fault)

    def objects(self, *, key: str | None = None) -> list[ProviderObject]:
        """Every object created (failed ones too), oldest first; of ``payonce_key`` ``key``."""
        with self._lock:
            return [o for o in self._objects.values() if key is None or o.payonce_key == key]

    def movements(self, *, key: str | None = None) -> list[Movement]:
        """Every money movement, oldest first; only those of ``payonce_key`` ``key`` if given."""
        with self._lock:
            return [m for m in self._movements if key is None or m.payonce_key == key]

    def calls(self) -> list[Call]:
        """Every ``execute`` and ``lookup`` call, in the order they were answered."""
        with self._lock:
            return list(self._calls)

    @property
    def calls_received(self) -> int:
        """``execute`` calls that reached the provider (all but ``before_send``)."""
        with self._lock:
            return self._received

    @property
    def movements_made(self) -> int:
        """How many money movements the provider made."""
        with self._lock:
            return len(self._movements)

    @property
    def lookups_received(self) -> int:
        """``lookup`` calls, including those a ``lookup`` fault failed."""
        with self._lock:
            return self._lookups

    # -- execute ----------------------------------------------------------------------------

    def _next_fault(
        self, queue: deque[Fault | None], by_key: dict[str, deque[Fault | None]], pk: str
    ) -> tuple[bool, Fault | None]:
        mine = by_key.get(pk)
        if mine:
            fault = mine.popleft()
            if not mine:
                del by_key[pk]
            return True, fault
        if queue:
            return True, queue.popleft()
        return False, None

    def _draw(self, *, lookup: bool) -> Fault | None:
        rates = {k: r for k, r in self._rates.items() if (k == "lookup") == lookup}
        if not rates:
            return None
        point = self._rng.random()
        for kind, rate in rates.items():
            if point < rate:
                code = self._rng.choice(_RANDOM_DECLINES) if kind == "decline" else None
                return Fault(kind, code=code)
            point -= rate
        return None

    def _record(
        self,
        op: str,
        pk: str,
        key: str,
        fault: Fault | None,
        result: GatewayAnswer | None,
        *,
        rx: bool,
    ) -> None:
        self._calls.append(
            Call(
                op,
                pk,
                key,
                None if fault is None else fault.kind,
                rx,
                None if result is None else result.kind,
                None if result is None else result.code,
                result is not None and result.replayed,
            )
        )

    def _begin(self, intent: Intent, pk: str, key: str) -> GatewayAnswer | _Pending:
        with self._lock:
            scripted, fault = self._next_fault(self._queue, self._by_key, pk)
            if not scripted:
                fault = self._draw(lookup=False)
            kind = None if fault is None else fault.kind
            op = intent.operation
            if kind == "before_send":
                refused = _result(OutcomeClass.NOT_EXECUTED, "connection_refused")
                self._record(op, pk, key, fault, refused, rx=False)
                return refused
            self._received += 1
            early: GatewayAnswer | None = None
            replay: GatewayAnswer | None = None
            obj_kind, params = provider_params(intent, key)
            hint = None if fault is None else fault.retry_after
            if kind == "status_429":
                early = _result(OutcomeClass.NOT_EXECUTED, "rate_limit", retry_after=hint)
            elif kind == "in_progress_409":
                early = _result(OutcomeClass.IN_FLIGHT, "idempotency_key_in_use", retry_after=hint)
            elif self._idempotent:
                early, replay = self._admit(pk, canonical_json([obj_kind, params]))
            if early is not None:
                if kind == "after_send":
                    early = _result(OutcomeClass.UNKNOWN, "connection_lost")
                self._record(op, pk, key, fault, early, rx=True)
                return early
            delay = self._latency
            if fault is not None and kind == "slow":
                delay += fault.duration
            return _Pending(obj_kind, params, op, pk, key, fault, replay, delay)

    def _admit(self, pk: str, params: str) -> tuple[GatewayAnswer | None, GatewayAnswer | None]:
        """The provider's idempotency layer: (an early answer, or a stored answer to replay)."""
        now = self._clock.now()
        entry = self._keys.get(pk)
        # A key expires a window after its first request; one still in flight never does.
        if (
            entry is not None
            and entry.answer is not None
            and self._window is not None
            and now >= entry.created + self._window
        ):
            del self._keys[pk]
            entry = None
        if entry is None:
            self._keys[pk] = _Entry(params, None, now)
            return None, None
        if entry.answer is None:
            in_use = _result(
                OutcomeClass.IN_FLIGHT, "idempotency_key_in_use", retry_after=timedelta(seconds=1)
            )
            return in_use, None
        if entry.params != params:
            return _result(OutcomeClass.DEFINITE, "idempotency_error"), None
        value = None if entry.answer.value is None else dict(entry.answer.value)
        return None, replace(entry.answer, value=value, replayed=True)

    def _abort(self, p: _Pending) -> None:
        """The caller died while the call was on its way (its sleep raised): nothing executed."""
        with self._lock:
            if self._idempotent and p.replay is None:
                self._keys.pop(p.provider_key, None)

    def _finish(self, p: _Pending) -> GatewayAnswer:
        with self._lock:
            if p.replay is not None:
                result = p.replay
            else:
                result, stored = self._perform(p)
                if self._idempotent:
                    if stored:  # a copy, so that the caller cannot edit what replays return
                        kept = None if result.value is None else dict(result.value)
                        self._keys[p.provider_key].answer = replace(result, value=kept)
                    else:
                        del self._keys[p.provider_key]
            if p.fault is not None and p.fault.kind == "after_send":
                result = _result(OutcomeClass.UNKNOWN, "connection_lost")
            self._record(p.operation, p.provider_key, p.key, p.fault, result, rx=True)
            return result

    def _perform(self, p: _Pending) -> tuple[GatewayAnswer, bool]:
        """Execute a new call: (its answer, whether the idempotency layer stores it)."""
        fault_kind = None if p.fault is None else p.fault.kind
        if p.fault is not None and fault_kind == "status_500":
            moved = self._movement_on_500 if p.fault.moved is None else p.fault.moved
            if moved:
                self._apply(p, None)
            # Stripe stores a 500 under the key and replays it.
            return _result(OutcomeClass.UNKNOWN, "api_error"), True
        decline: str | None
        if p.fault is not None and fault_kind == "decline":
            decline = p.fault.code or "card_declined"
        else:
            names = ("source", "payment_method", "default_payment_method")
            method = next((p.params[n] for n in names if n in p.params), None)
            decline = _DECLINING.get(method) if isinstance(method, str) else None
        return self._apply(p, decline)

    def _new_id(self, kind: str) -> str:
        return f"{_PREFIX[kind]}_{''.join(self._ids.choices(_ID_ALPHABET, k=24))}"

    def _move(self, obj: ProviderObject, op: str, amount: int, pk: str, key: str) -> None:
        now = self._clock.now()
        self._movements.append(
            Movement(obj.id, op, amount, obj.currency, obj.customer, key, pk, now)
        )

    def _apply(self, p: _Pending, decline: str | None) -> tuple[GatewayAnswer, bool]:
        if p.kind in ("capture", "refund", "cancel"):
            return self._act_on_charge(p, decline)
        params, now = p.params, self._clock.now()
        amount = int(params["amount"])
        manual = params.get("capture") is False or params.get("capture_method") == "manual"
        if decline is not None:
            status = _FAILED.get(p.kind, "failed")
        elif manual and p.kind == "payment_intent":
            status = "requires_capture"
        else:
            status = _SUCCEEDED.get(p.kind, "succeeded")
        captured = 0 if decline is not None or manual else amount
        obj = ProviderObject(
            id=self._new_id(p.kind),
            object=p.kind,
            operation=p.operation,
            amount=amount,
            currency=str(params["currency"]),
            customer=params.get("customer"),
            status=status,
            payonce_key=p.key,
            provider_key=p.provider_key,
            created=now,
            decline_code=decline,
            amount_captured=captured if p.kind in ("charge", "payment_intent") else 0,
        )
        if decline is None and _FORGETTING in (params.get("source"), params.get("payment_method")):
            # Success answered, nothing kept: no object, no movement, nothing under the key.
            return _result(OutcomeClass.SUCCESS, value=_view(obj)), False
        self._objects[obj.id] = obj
        if decline is not None:
            return _result(OutcomeClass.DEFINITE, decline, value=_view(obj)), True
        op = "authorization" if manual and p.operation == "charge" else p.operation
        self._move(obj, op, amount, p.provider_key, p.key)
        return _result(OutcomeClass.SUCCESS, value=_view(obj)), True

    def _act_on_charge(self, p: _Pending, decline: str | None) -> tuple[GatewayAnswer, bool]:
        params = p.params
        amount, currency = int(params["amount"]), str(params["currency"])
        charge = self._objects.get(str(params["target"]))
        # Refusals of the request itself are not stored under the key (Stripe stores only what
        # began executing), so they are not replayed either.
        if charge is None or charge.object not in ("charge", "payment_intent"):
            return _result(OutcomeClass.DEFINITE, "resource_missing"), False
        if currency != charge.currency:
            return _result(OutcomeClass.DEFINITE, "currency_mismatch"), False
        if p.kind == "cancel":
            return self._cancel(p, charge, amount)
        if p.kind == "capture":
            if charge.status == "canceled":
                return _result(OutcomeClass.DEFINITE, _unexpected(charge)), False
            if charge.decline_code is not None or charge.amount_captured > 0:
                return _result(OutcomeClass.DEFINITE, "charge_already_captured"), False
            if amount > charge.amount:
                return _result(OutcomeClass.DEFINITE, "amount_too_large"), False
            self._captures.append(_Capture(charge.id, amount, p.key, decline))
            if decline is not None:
                failed = _view(charge, amount=amount, status="failed") | {"decline_code": decline}
                return _result(OutcomeClass.DEFINITE, decline, value=failed), True
            charge = replace(charge, amount_captured=amount, status="succeeded")
            self._objects[charge.id] = charge
            self._move(charge, "capture", amount, p.provider_key, p.key)
            return _result(OutcomeClass.SUCCESS, value=_view(charge, amount=amount)), True
        if amount > charge.amount_captured - charge.amount_refunded:
            return _result(OutcomeClass.DEFINITE, "amount_too_large"), False
        refund = ProviderObject(
            id=self._new_id("refund"),
            object="refund",
            operation="refund",
            amount=amount,
            currency=currency,
            customer=charge.customer,
            status="failed" if decline is not None else "succeeded",
            payonce_key=p.key,
            provider_key=p.provider_key,
            created=self._clock.now(),
            target=charge.id,
            decline_code=decline,
        )
        self._objects[refund.id] = refund
        if decline is not None:
            return _result(OutcomeClass.DEFINITE, decline, value=_view(refund)), True
        self._objects[charge.id] = replace(charge, amount_refunded=charge.amount_refunded + amount)
        self._move(refund, "refund", amount, p.provider_key, p.key)
        return _result(OutcomeClass.SUCCESS, value=_view(refund)), True

    def _cancel(
        self, p: _Pending, charge: ProviderObject, amount: int
    ) -> tuple[GatewayAnswer, bool]:
        """Release an authorisation that was never captured: the whole of it, once."""
        if charge.decline_code is not None or charge.status == "canceled":
            return _result(OutcomeClass.DEFINITE, _unexpected(charge)), False
        if charge.amount_captured > 0:
            return _result(OutcomeClass.DEFINITE, "charge_already_captured"), False
        if amount != charge.amount:
            # Like Stripe, which cannot release part of a hold: capture less instead.
            return _result(OutcomeClass.DEFINITE, "amount_mismatch"), False
        charge = replace(charge, status="canceled")
        self._objects[charge.id] = charge
        self._cancels.append(_Capture(charge.id, amount, p.key, None))
        self._move(charge, "void", amount, p.provider_key, p.key)
        return _result(OutcomeClass.SUCCESS, value=_view(charge)), True

    # -- lookup -----------------------------------------------------------------------------

    def _lookup(self, intent: Intent, pk: str, key: str) -> GatewayAnswer | None:
        with self._lock:
            self._lookups += 1
            scripted, fault = self._next_fault(self._lookup_queue, self._lookup_by_key, pk)
            if not scripted:
                fault = self._draw(lookup=True)
            found: GatewayAnswer | None
            if fault is not None:
                found = _result(OutcomeClass.UNKNOWN, "api_connection_error")
            else:
                found = self._find(intent, key)
            self._record("lookup", pk, key, fault, found, rx=True)
            return found

    def _find(self, intent: Intent, key: str) -> GatewayAnswer | None:
        # By metadata, as Stripe's list endpoints do: independent of the idempotency window.
        views: list[tuple[dict[str, Any], str | None]] = []
        if intent.operation == "cancel":
            views = [
                (_view(self._objects[c.object_id]), None)
                for c in self._cancels
                if c.payonce_key == key
            ]
        elif intent.operation == "capture":
            for cap in self._captures:
                if cap.payonce_key == key:
                    view = _view(self._objects[cap.object_id], amount=cap.amount)
                    if cap.decline_code is not None:
                        view |= {"status": "failed", "decline_code": cap.decline_code}
                    views.append((view, cap.decline_code))
        else:
            views = [
                (_view(o), o.decline_code) for o in self._objects.values() if o.payonce_key == key
            ]
        # The oldest object that moved money wins; else the newest failed attempt.
        for view, decline in views:
            if decline is None:
                return _result(OutcomeClass.SUCCESS, value=view)
        if views:
            view, decline = views[-1]
            return _result(OutcomeClass.DEFINITE, decline, value=view)
        return None


class SimulatedGateway(_SimulatedBase):
    """An in-process payment provider with a ledger of movements and scriptable faults.

    Args:
        idempotent: deduplicate on the provider key like Stripe. Off, every call that executes
            moves money again: what proves payonce alone is safe (SCENARIOS G2).
        latency: added to every call that reaches execution, on ``sleep``.
        clock: stamps objects and expires keys (default: the system clock).
        sleep: how the provider takes time (default: ``clock.sleep``, so a ``ManualClock``
            advances instead of blocking). Tests may pass one that waits on an event.
        seed: makes fault draws and object ids reproducible.
        idempotency_window: how long a provider key is remembered (None: forever). The
            ``idempotency_window`` attribute is None when ``idempotent`` is off.
        rates: probability per call of each fault kind, drawn when no scripted fault is queued
            (``lookup`` is drawn separately, per ``lookup`` call). A drawn ``slow`` takes
            ``Fault``'s default 30 s on ``sleep``: give a ManualClock or a ``sleep`` in tests.
        movement_on_500: whether a ``status_500`` fault moves the money before answering.

    A call goes through these steps; the faults act where named:

    1. ``before_send``: refused connection. NOT_EXECUTED ``connection_refused``; not received,
       no movement, nothing stored under the key.
    2. ``status_429``: NOT_EXECUTED ``rate_limit`` with ``retry_after``; ``in_progress_409``:
       IN_FLIGHT ``idempotency_key_in_use`` with ``retry_after``. Received, no movement, not
       stored under the key (Stripe does not store either).
    3. Idempotency (when on): the key still in flight gives IN_FLIGHT ``idempotency_key_in_use``;
       the key with other parameters gives DEFINITE ``idempotency_error``; the key with the same
       parameters replays the stored answer (``replayed=True``) without executing. A key is
       forgotten ``idempotency_window`` after its first request.
    4. Execution (new calls only; on a replay these faults have no effect): ``slow`` first takes
       ``duration`` (plus ``latency``) on ``sleep`` while the key is in flight, then executes
       normally. ``status_500``: UNKNOWN ``api_error``, stored and replayed like Stripe's 500s;
       no movement unless ``movement_on_500`` (or ``Fault.moved``), then one movement and a
       findable object. ``decline``: DEFINITE with the decline code; a failed object is created
       (``lookup`` finds it), no movement; stored and replayed. Refusals of the request itself
       (``resource_missing``, ``currency_mismatch``, ``charge_already_captured``,
       ``amount_too_large`` for refunds beyond what was captured and not yet refunded,
       ``amount_mismatch`` for a cancel of other than the whole hold,
       ``payment_intent_unexpected_state``/``charge_already_refunded`` for a hold released
       already) are
       DEFINITE without a value and not stored.
       A charge paid with ``tok_forget`` answers SUCCESS and keeps nothing (no object, no
       movement, nothing under the key), like stripe-stateful-mock: a provider that lost a
       movement payonce recorded (``Reconciler.audit`` reports it).
    5. ``after_send``: the provider did everything above (a movement if it executed, the answer
       stored under the key), then the answer was lost: UNKNOWN ``connection_lost``.

    ``cancel`` releases a hold (a charge with ``capture=False``, a PaymentIntent in
    ``requires_capture``) whole: the object becomes ``canceled`` and a ``void`` movement is made;
    its lookup finds the canceled object by the cancel's ``payonce_key``.

    ``lookup`` finds what execute did by ``payonce_key`` metadata, also after the window: the
    oldest object that moved money (SUCCESS), else the newest failed attempt (DEFINITE), else
    None. A ``lookup`` fault answers UNKNOWN ``api_connection_error``. Lookups do not see a call
    still in flight (its object does not exist yet), like Stripe's list endpoints.

    ``value`` holds only ``VALUE_FIELDS``; ``amount`` is what the call moved (for a capture, the
    amount captured).
    """

    def __init__(
        self,
        *,
        idempotent: bool = True,
        latency: timedelta = timedelta(0),
        clock: Clock | None = None,
        sleep: Callable[[timedelta], None] | None = None,
        seed: int | None = None,
        idempotency_window: timedelta | None = timedelta(hours=24),
        rates: Mapping[str, float] | None = None,
        movement_on_500: bool = False,
    ) -> None:
        super().__init__(
            idempotent=idempotent,
            latency=latency,
            clock=clock,
            seed=seed,
            idempotency_window=idempotency_window,
            rates=rates,
            movement_on_500=movement_on_500,
        )
        self._sleep = sleep if sleep is not None else self._clock.sleep

    def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """Make the movement ``intent`` describes; never raises for a provider answer."""
        begun = self._begin(intent, provider_key, key)
        if isinstance(begun, GatewayAnswer):
            return begun
        if begun.delay > timedelta(0):
            try:
                self._sleep(begun.delay)
            except BaseException:
                self._abort(begun)
                raise
        return self._finish(begun)

    def lookup(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer | None:
        """Find the object payonce created for ``key`` by its metadata, or None."""
        return self._lookup(intent, provider_key, key)


class AsyncSimulatedGateway(_SimulatedBase):
    """The async twin of ``SimulatedGateway``: the same provider, awaited.

    ``sleep`` is awaited (default: ``clock.asleep``).
    """

    def __init__(
        self,
        *,
        idempotent: bool = True,
        latency: timedelta = timedelta(0),
        clock: Clock | None = None,
        sleep: Callable[[timedelta], Awaitable[None]] | None = None,
        seed: int | None = None,
        idempotency_window: timedelta | None = timedelta(hours=24),
        rates: Mapping[str, float] | None = None,
        movement_on_500: bool = False,
    ) -> None:
        super().__init__(
            idempotent=idempotent,
            latency=latency,
            clock=clock,
            seed=seed,
            idempotency_window=idempotency_window,
            rates=rates,
            movement_on_500=movement_on_500,
        )
        self._asleep = sleep if sleep is not None else self._clock.asleep

    async def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """See ``SimulatedGateway.execute``."""
        begun = self._begin(intent, provider_key, key)
        if isinstance(begun, GatewayAnswer):
            return begun
        if begun.delay > timedelta(0):
            try:
                await self._asleep(begun.delay)
            except BaseException:  # cancelled on the way: the provider never executed it
                self._abort(begun)
                raise
        return self._finish(begun)

    async def lookup(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer | None:
        """See ``SimulatedGateway.lookup``."""
        return self._lookup(intent, provider_key, key)

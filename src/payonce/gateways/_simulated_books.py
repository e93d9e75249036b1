"""The simulated provider's books (L4): the objects it made and the money it moved. Stdlib only.

``provider_params`` is the one place an intent becomes provider parameters. ``Books`` is what
happens once a call got past the gateway's faults and idempotency layer: it creates objects,
makes money movements, refuses what Stripe refuses (and says whether the answer is stored under
the key), and finds by ``payonce_key`` what earlier calls did. ``SimulatedGateway`` owns one
``Books`` and calls it under its lock, so ``Books`` itself takes none.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from payonce._intent import Intent
from payonce._model import GatewayAnswer, OutcomeClass
from payonce._protocols import LOOKUP_SKEW, Clock

__all__ = [
    "VALUE_FIELDS",
    "Books",
    "Movement",
    "ProviderObject",
    "Submission",
    "answer",
    "method_decline",
    "provider_params",
]

#: The only keys an answer's ``value`` may hold (``decline_code`` only for a decline, ``captured``
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
# stripe-stateful-mock's token that answers success and keeps nothing: the provider forgot.
_FORGETTING: Final = "tok_forget"
_ID_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


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
class Submission:
    """What one call asks the provider to do: ``provider_params``' object type and parameters,
    the intent's operation, and the provider key and ``payonce_key`` it carries."""

    kind: str
    params: dict[str, Any]
    operation: str
    provider_key: str
    key: str


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


def method_decline(params: dict[str, Any]) -> str | None:
    """The decline code of the payment method in ``params``, if it is one of Stripe's test
    payment methods that decline; else None."""
    names = ("source", "payment_method", "default_payment_method")
    method = next((params[n] for n in names if n in params), None)
    return _DECLINING.get(method) if isinstance(method, str) else None


def answer(
    kind: OutcomeClass,
    code: str | None = None,
    *,
    value: Any = None,
    retry_after: timedelta | None = None,
) -> GatewayAnswer:
    """A ``GatewayAnswer``, with the code positional (the simulated provider's shorthand)."""
    return GatewayAnswer(kind=kind, value=value, code=code, retry_after=retry_after)


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


def _unexpected(charge: ProviderObject) -> str:
    """Stripe's code for acting on a hold that was released (or never made)."""
    if charge.object == "payment_intent":
        return "payment_intent_unexpected_state"
    return "charge_already_refunded"


@dataclass(frozen=True, slots=True)
class _Capture:
    object_id: str
    amount: int
    payonce_key: str
    decline_code: str | None


class Books:
    """Every object the provider made and every money movement, and the rules that make them.

    Args:
        clock: stamps objects and movements.
        seed: makes object ids reproducible (None: ids differ from run to run).
        on_move: called for every money movement the books make, with the object, the
            movement's operation, its amount, the provider key and the ``payonce_key``; it must
            end in ``record`` (default: ``record`` itself).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        seed: int | None,
        on_move: Callable[[ProviderObject, str, int, str, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_move = on_move if on_move is not None else self.record
        # Seeded, not security: the same seed and calls give the same object ids.
        ids_seed = f"payonce-sim-ids:{seed}" if seed is not None else None
        self._ids = random.Random(ids_seed)  # noqa: S311 - reproducible object ids
        self._objects: dict[str, ProviderObject] = {}
        self._movements: list[Movement] = []
        self._captures: list[_Capture] = []
        self._cancels: list[_Capture] = []

    def objects(self, *, key: str | None = None) -> list[ProviderObject]:
        """Every object created (failed ones too), oldest first; of ``payonce_key`` ``key``."""
        return [o for o in self._objects.values() if key is None or o.payonce_key == key]

    def movements(self, *, key: str | None = None) -> list[Movement]:
        """Every money movement, oldest first; only those of ``payonce_key`` ``key`` if given."""
        return [m for m in self._movements if key is None or m.payonce_key == key]

    @property
    def movements_made(self) -> int:
        """How many money movements the provider made."""
        return len(self._movements)

    def apply(self, p: Submission, decline: str | None) -> tuple[GatewayAnswer, bool]:
        """Execute ``p``, declined with ``decline`` if given: (its answer, whether the
        idempotency layer stores it)."""
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
            return answer(OutcomeClass.SUCCESS, value=_view(obj)), False
        self._objects[obj.id] = obj
        if decline is not None:
            return answer(OutcomeClass.DEFINITE, decline, value=_view(obj)), True
        op = "authorization" if manual and p.operation == "charge" else p.operation
        self._on_move(obj, op, amount, p.provider_key, p.key)
        return answer(OutcomeClass.SUCCESS, value=_view(obj)), True

    def find(self, intent: Intent, key: str, since: datetime | None = None) -> GatewayAnswer | None:
        """What the calls with ``payonce_key`` ``key`` did: the oldest object that moved money
        (SUCCESS), else the newest failed attempt (DEFINITE), else None. With ``since``, objects
        created before it (less the skew Stripe's lookup allows) are left out: an earlier life
        of a key purged since made them. Captures and cancels act on their target and are
        found by it, as with Stripe, whatever ``since`` says."""
        oldest = None if since is None else since - LOOKUP_SKEW
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
                (_view(o), o.decline_code)
                for o in self._objects.values()
                if o.payonce_key == key and (oldest is None or o.created >= oldest)
            ]
        # The oldest object that moved money wins; else the newest failed attempt.
        for view, decline in views:
            if decline is None:
                return answer(OutcomeClass.SUCCESS, value=view)
        if views:
            view, decline = views[-1]
            return answer(OutcomeClass.DEFINITE, decline, value=view)
        return None

    def _new_id(self, kind: str) -> str:
        return f"{_PREFIX[kind]}_{''.join(self._ids.choices(_ID_ALPHABET, k=24))}"

    def record(self, obj: ProviderObject, op: str, amount: int, pk: str, key: str) -> None:
        """Write down one money movement of ``obj``, made now."""
        now = self._clock.now()
        self._movements.append(
            Movement(obj.id, op, amount, obj.currency, obj.customer, key, pk, now)
        )

    def _act_on_charge(self, p: Submission, decline: str | None) -> tuple[GatewayAnswer, bool]:
        params = p.params
        amount, currency = int(params["amount"]), str(params["currency"])
        charge = self._objects.get(str(params["target"]))
        # Refusals of the request itself are not stored under the key (Stripe stores only what
        # began executing), so they are not replayed either.
        if charge is None or charge.object not in ("charge", "payment_intent"):
            return answer(OutcomeClass.DEFINITE, "resource_missing"), False
        if currency != charge.currency:
            return answer(OutcomeClass.DEFINITE, "currency_mismatch"), False
        if p.kind == "cancel":
            return self._cancel(p, charge, amount)
        if p.kind == "capture":
            if charge.status == "canceled":
                return answer(OutcomeClass.DEFINITE, _unexpected(charge)), False
            if charge.decline_code is not None or charge.amount_captured > 0:
                return answer(OutcomeClass.DEFINITE, "charge_already_captured"), False
            if amount > charge.amount:
                return answer(OutcomeClass.DEFINITE, "amount_too_large"), False
            self._captures.append(_Capture(charge.id, amount, p.key, decline))
            if decline is not None:
                failed = _view(charge, amount=amount, status="failed") | {"decline_code": decline}
                return answer(OutcomeClass.DEFINITE, decline, value=failed), True
            charge = replace(charge, amount_captured=amount, status="succeeded")
            self._objects[charge.id] = charge
            self._on_move(charge, "capture", amount, p.provider_key, p.key)
            return answer(OutcomeClass.SUCCESS, value=_view(charge, amount=amount)), True
        if amount > charge.amount_captured - charge.amount_refunded:
            return answer(OutcomeClass.DEFINITE, "amount_too_large"), False
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
            return answer(OutcomeClass.DEFINITE, decline, value=_view(refund)), True
        self._objects[charge.id] = replace(charge, amount_refunded=charge.amount_refunded + amount)
        self._on_move(refund, "refund", amount, p.provider_key, p.key)
        return answer(OutcomeClass.SUCCESS, value=_view(refund)), True

    def _cancel(
        self, p: Submission, charge: ProviderObject, amount: int
    ) -> tuple[GatewayAnswer, bool]:
        """Release an authorisation that was never captured: the whole of it, once."""
        if charge.decline_code is not None or charge.status == "canceled":
            return answer(OutcomeClass.DEFINITE, _unexpected(charge)), False
        if charge.amount_captured > 0:
            return answer(OutcomeClass.DEFINITE, "charge_already_captured"), False
        if amount != charge.amount:
            # Like Stripe, which cannot release part of a hold: capture less instead.
            return answer(OutcomeClass.DEFINITE, "amount_mismatch"), False
        charge = replace(charge, status="canceled")
        self._objects[charge.id] = charge
        self._cancels.append(_Capture(charge.id, amount, p.key, None))
        self._on_move(charge, "void", amount, p.provider_key, p.key)
        return answer(OutcomeClass.SUCCESS, value=_view(charge)), True

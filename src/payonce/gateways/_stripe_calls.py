"""The Stripe adapter's requests (L4): which Stripe call makes an intent's movement, and finds it.

``stripe_call`` turns an Intent into the one Stripe request that makes its movement (the only
place where intents meet Stripe's parameters); ``lookup_query`` turns it into the list (or the
retrieve) that finds what that request made. Both refuse an intent Stripe cannot express with
``UnmappableError``. Needs nothing of the SDK: these are plain dicts, sent by ``_stripe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from payonce._intent import Intent
from payonce._protocols import LOOKUP_SKEW

__all__ = ["Query", "StripeCall", "UnmappableError", "lookup_query", "stripe_call"]

_PAGE: Final = 100  # Stripe's largest list page


class UnmappableError(ValueError):
    """The intent cannot become a Stripe request (a missing or conflicting parameter)."""


@dataclass(frozen=True, slots=True)
class StripeCall:
    """One Stripe API request: ``client.v1.<service>.<method>(*target, params=…)``.

    Attributes:
        service: the attribute of ``StripeClient.v1`` (``charges``, ``payment_intents``, …).
        method: ``create``, ``capture`` or ``cancel``.
        params: the request parameters, as the SDK takes them.
        target: the object the method acts on (captures, cancels), else None.
    """

    service: str
    method: str
    params: dict[str, Any]
    target: str | None = None


def stripe_call(intent: Intent, *, key: str) -> StripeCall:
    """Map ``intent`` to the Stripe request that makes its movement; ``key`` is the record key
    stamped as ``metadata["payonce_key"]``.

    - charge: a ``tok_``/``src_``/``card_`` payment method (or only a customer, whose default
      source pays) goes through the Charges API (``source=…``); ``pm_`` through PaymentIntents,
      created and confirmed in one request (``confirm=true``) so that one provider key covers it.
    - capture: ``charges.capture`` (``amount``) or ``payment_intents.capture``
      (``amount_to_capture``) of ``target``.
    - refund: ``refunds.create`` with ``charge`` or ``payment_intent`` from ``target``.
    - cancel (release a hold that was never captured): ``payment_intents.cancel`` of a ``pi_``
      target; a charge has no cancel endpoint, so an uncaptured ``ch_`` is released by a refund of
      its whole amount (``refunds.create``), which is how Stripe voids an authorisation.
    - payout, transfer: ``payouts.create`` / ``transfers.create`` (``destination``).
    - subscription: ``subscriptions.create`` for ``customer`` with one item: ``params["price"]``
      (and ``quantity``), or a ``price_data`` of the intent's amount and currency for
      ``params["product"]`` every ``params["interval"]``.

    Every other entry of ``intent.params`` is passed through as a top-level parameter; one that
    would override a parameter set here is refused.

    Raises:
        ValueError: the intent cannot be expressed as a Stripe request.
    """
    extra = dict(intent.params)
    metadata = {**intent.metadata, "payonce_key": key}
    money = {"amount": intent.amount, "currency": intent.currency, "metadata": metadata}
    op = intent.operation
    pm = intent.payment_method
    if op == "charge":
        if pm is not None and pm.startswith("pm_"):
            core: dict[str, Any] = {**money, "payment_method": pm, "confirm": True}
            if "return_url" not in extra:
                # Confirming server-side without a return URL: only methods without redirects.
                core["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
            return StripeCall("payment_intents", "create", _merge(core, extra, intent.customer))
        core = dict(money)
        if pm is not None:
            core["source"] = pm
        return StripeCall("charges", "create", _merge(core, extra, intent.customer))
    if op == "capture":
        target = _target(intent)
        if target.startswith("pi_"):
            core = {"amount_to_capture": intent.amount, "metadata": metadata}
            return StripeCall("payment_intents", "capture", _merge(core, extra), target)
        # A charge capture takes no metadata: the captured charge is found by its id (lookup).
        return StripeCall("charges", "capture", _merge({"amount": intent.amount}, extra), target)
    if op == "cancel":
        target = _target(intent)
        if target.startswith("pi_"):
            # Stripe's cancel takes no metadata: lookup reads the PaymentIntent itself.
            return StripeCall("payment_intents", "cancel", _merge({}, extra), target)
        core = {"charge": target, "amount": intent.amount, "metadata": metadata}
        return StripeCall("refunds", "create", _merge(core, extra))
    if op == "refund":
        target = _target(intent)
        field = "payment_intent" if target.startswith("pi_") else "charge"
        core = {field: target, "amount": intent.amount, "metadata": metadata}
        return StripeCall("refunds", "create", _merge(core, extra))
    if op == "payout":
        core = dict(money)
        if intent.destination is not None:
            core["destination"] = intent.destination
        return StripeCall("payouts", "create", _merge(core, extra))
    if op == "transfer":
        core = {**money, "destination": intent.destination}
        return StripeCall("transfers", "create", _merge(core, extra))
    if op == "subscription":
        return StripeCall("subscriptions", "create", _subscription(intent, extra, metadata))
    raise UnmappableError(f"operation {op!r} has no Stripe request")  # pragma: no cover


def _merge(
    core: dict[str, Any], extra: dict[str, Any], customer: str | None = None
) -> dict[str, Any]:
    if customer is not None:
        core["customer"] = customer
    clash = sorted(set(core) & set(extra))
    if clash:
        raise UnmappableError(f"params.{clash[0]} would override a parameter payonce sets itself")
    return {**core, **extra}


def _target(intent: Intent) -> str:
    target = intent.target
    if target is None or not target.startswith(("ch_", "py_", "pi_")):
        raise UnmappableError(
            f"a {intent.operation} needs target: a charge (ch_…) or PaymentIntent"
        )
    return target


def _subscription(
    intent: Intent, extra: dict[str, Any], metadata: dict[str, str]
) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if "quantity" in extra:
        item["quantity"] = extra.pop("quantity")
    if "price" in extra:
        item["price"] = extra.pop("price")
    elif "product" in extra and "interval" in extra:
        item["price_data"] = {
            "currency": intent.currency,
            "unit_amount": intent.amount,
            "product": extra.pop("product"),
            "recurring": {"interval": extra.pop("interval")},
        }
    else:
        raise UnmappableError(
            "a subscription needs params.price, or params.product and params.interval"
        )
    core = {"items": [item], "metadata": metadata}
    return _merge(core, extra, intent.customer)


@dataclass(frozen=True, slots=True)
class Query:
    """How ``lookup`` finds an object: a list with filters, or a retrieve of the target."""

    service: str
    params: dict[str, Any]
    retrieve: str | None = None


def lookup_query(intent: Intent, since: datetime | None) -> Query:
    """How ``lookup`` finds what ``stripe_call(intent)`` made (see ``StripeGateway.lookup``).

    Raises:
        UnmappableError: the intent has no target Stripe could hold.
    """
    op = intent.operation
    filters: dict[str, Any] = {}
    if op == "capture" or (op == "cancel" and (intent.target or "").startswith("pi_")):
        target = _target(intent)
        service = "payment_intents" if target.startswith("pi_") else "charges"
        return Query(service, {}, retrieve=target)
    if op == "charge":
        pm = intent.payment_method
        service = "payment_intents" if pm is not None and pm.startswith("pm_") else "charges"
        if intent.customer is not None:
            filters["customer"] = intent.customer
    elif op in ("refund", "cancel"):  # a charge's hold is released by a refund
        service = "refunds"
        target = _target(intent)
        filters["payment_intent" if target.startswith("pi_") else "charge"] = target
    elif op == "payout":
        service = "payouts"
        if intent.destination is not None:
            filters["destination"] = intent.destination
    elif op == "transfer":
        service = "transfers"
        filters["destination"] = intent.destination
    else:
        service = "subscriptions"
        filters["customer"] = intent.customer
        filters["status"] = "all"
    if since is not None:
        filters["created"] = {"gte": int((since - LOOKUP_SKEW).timestamp())}
    return Query(service, {**filters, "limit": _PAGE})

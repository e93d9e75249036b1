"""The Stripe adapter's answers (L4): every answer of the SDK, object or exception, classified.

``classify`` turns every answer of the Stripe SDK into a ``GatewayAnswer`` (DESIGN §6); it is the
only place where Stripe's errors, headers and objects are read. The helpers after it read what
``lookup`` found the same way. Outcomes keep only ids, status, amounts, currency and codes (S7).
Importing this module needs the ``stripe`` extra; ``_stripe`` imports it only after checking.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any, Final

import stripe

from payonce._intent import Intent
from payonce._model import GatewayAnswer, OutcomeClass

__all__ = [
    "NO_RETRY",
    "cancelled",
    "classify",
    "get_field",
    "lookup_answer",
    "retrieved",
    "unreachable",
]

#: Suffix of ``GatewayAnswer.code`` when Stripe answered ``Stripe-Should-Retry: false``: resending
#: the same request would only replay this answer, so only ``lookup`` can tell more.
NO_RETRY: Final = ":no_retry"

# What an outcome keeps of each object (S7): ids, status, amounts, currency. Never card details,
# billing data, descriptions, the customer or the raw body.
_KEEP: Final = {
    "charge": ("id", "object", "status", "amount", "currency", "amount_refunded", "captured"),
    "payment_intent": ("id", "object", "status", "amount", "currency", "amount_received"),
    "refund": ("id", "object", "status", "amount", "currency", "charge", "payment_intent"),
    "payout": ("id", "object", "status", "amount", "currency"),
    "transfer": ("id", "object", "amount", "currency", "amount_reversed"),
    "subscription": ("id", "object", "status", "currency"),
}
_DEFAULT_KEEP: Final = ("id", "object", "status", "amount", "currency")
# Object statuses that mean "no money moved and none will for this request".
_FAILED: Final = {
    "charge": frozenset({"failed"}),
    "payment_intent": frozenset({"canceled", "requires_payment_method"}),
    "refund": frozenset({"failed", "canceled"}),
    "payout": frozenset({"failed", "canceled"}),
    "subscription": frozenset({"incomplete_expired"}),
}
# Exceptions (by class name, anywhere in an MRO of the cause chain) raised before a single byte of
# the request left this machine: the connection was never established. The SDK supports several
# HTTP libraries (requests, httpx, aiohttp, …) and wraps their errors in APIConnectionError; the
# cause chain is the only place where "before send" is still visible, and importing every
# library to isinstance-check would make them all dependencies.
_BEFORE_SEND: Final = frozenset({
    "ConnectionRefusedError",  # the OS: nothing listens
    "gaierror",  # the OS: DNS failure
    "NewConnectionError",  # urllib3 (requests): the TCP connect failed
    "NameResolutionError",  # urllib3
    "ConnectTimeoutError",  # urllib3
    "ConnectTimeout",  # requests, httpx
    "ConnectError",  # httpx: failed while connecting
    "PoolTimeout",  # httpx: no connection could be had from the pool
    "ClientConnectorError",  # aiohttp
})  # fmt: skip


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by case-insensitive name (the HTTP clients return different mapping types)."""
    if not headers:
        return None
    for candidate in (name, name.title(), name.lower()):
        if candidate in headers:
            return str(headers[candidate])
    for header, value in headers.items():
        if header.lower() == name:
            return str(value)
    return None


def _retry_after(headers: Mapping[str, str] | None) -> timedelta | None:
    # Only the delta-seconds form: an HTTP date would need a clock, and Stripe sends seconds.
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return timedelta(seconds=seconds)


def get_field(obj: object, name: str) -> Any:
    """A field of a Stripe object (which has no ``get`` in recent SDKs), or None."""
    if isinstance(obj, stripe.StripeObject):
        try:
            return obj[name]
        except KeyError:
            return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return None


def _keep(obj: stripe.StripeObject) -> dict[str, Any]:
    fields = _KEEP.get(str(get_field(obj, "object")), _DEFAULT_KEEP)
    return {name: get_field(obj, name) for name in fields if get_field(obj, name) is not None}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from, wraps or carries (bounded, no cycles)."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _transport(exc: stripe.APIConnectionError) -> GatewayAnswer:
    """A request that got no HTTP answer: NOT_EXECUTED only if it provably never left."""
    causes = list(_causes(exc))
    names = {cls.__name__ for cause in causes for cls in type(cause).__mro__}
    # The classes themselves, not their bases (urllib3's NewConnectionError is a
    # ConnectTimeoutError by inheritance only), say whether it was a timeout.
    timeout = any("Timeout" in type(cause).__name__ for cause in causes)
    if names & _BEFORE_SEND:
        code = "connect_timeout" if timeout else "connection_failed"
        return GatewayAnswer(OutcomeClass.NOT_EXECUTED, code=code)
    # Sent (or possibly sent): a reset, a read timeout or a dropped answer. Stripe may have acted.
    return GatewayAnswer(OutcomeClass.UNKNOWN, code="timeout" if timeout else "connection_lost")


def _error(exc: stripe.StripeError) -> GatewayAnswer:
    if isinstance(exc, stripe.APIConnectionError):
        return _transport(exc)
    headers = exc.headers
    status = exc.http_status
    detail = exc.error
    code = (
        (detail.code if detail is not None else None)
        or exc.code
        or (detail.type if detail is not None else None)
        or type(exc).__name__
    )
    should_retry = _header(headers, "stripe-should-retry")
    final = should_retry == "false"
    common: dict[str, Any] = {
        "retry_after": _retry_after(headers),
        "replayed": _header(headers, "idempotent-replayed") == "true",
    }
    if status is None or status < 400:
        # No status, or a success the SDK could not read (an unparsable body): Stripe may have
        # acted, and nothing here says what it did.
        return GatewayAnswer(OutcomeClass.UNKNOWN, code=code, **common)
    if status == 409:
        # idempotency_key_in_use: another request with this key is executing; Stripe saves
        # nothing for this one. Unless Stripe says a retry is pointless, wait and resend.
        if final:
            return GatewayAnswer(OutcomeClass.UNKNOWN, code=code + NO_RETRY, **common)
        return GatewayAnswer(OutcomeClass.IN_FLIGHT, code=code, **common)
    if status == 429 or isinstance(exc, stripe.RateLimitError):
        return GatewayAnswer(
            OutcomeClass.NOT_EXECUTED, code=code + (NO_RETRY if final else ""), **common
        )
    if status in (401, 403):
        # Refused before any endpoint ran (bad key, a restricted key without the permission).
        code = "authentication_error" if status == 401 else "permission_error"
        return GatewayAnswer(OutcomeClass.NOT_EXECUTED, code=code, **common)
    if status >= 500:
        # Stripe stores a 500 under the key and replays it: the outcome stays unknown either
        # way; with Stripe-Should-Retry: false a resend cannot tell more, only lookup can.
        return GatewayAnswer(
            OutcomeClass.UNKNOWN, code=code + (NO_RETRY if final else ""), **common
        )
    # 400, 402, 404 and the other 4xx: a definite answer; no money moved for this request.
    value: dict[str, Any] = {"type": detail.type if detail is not None else None, "code": code}
    if detail is not None:
        for name in ("decline_code", "param", "charge"):
            found = get_field(detail, name)
            if isinstance(found, str):
                value[name] = found
    value = {name: item for name, item in value.items() if item is not None}
    return GatewayAnswer(OutcomeClass.DEFINITE, value=value, code=code, **common)


def _object(obj: stripe.StripeObject) -> GatewayAnswer:
    response = obj.last_response
    replayed = response is not None and _header(response.headers, "idempotent-replayed") == "true"
    value = _keep(obj)
    kind = str(get_field(obj, "object"))
    if get_field(obj, "status") in _FAILED.get(kind, ()):
        failure = get_field(obj, "failure_code") or get_field(obj, "failure_reason")
        error = get_field(obj, "last_payment_error")
        if failure is None and error is not None:
            failure = get_field(error, "decline_code") or get_field(error, "code")
            if get_field(error, "decline_code"):
                value["decline_code"] = get_field(error, "decline_code")
        code = str(failure or get_field(obj, "status"))
        value["code"] = code
        return GatewayAnswer(OutcomeClass.DEFINITE, value=value, code=code, replayed=replayed)
    return GatewayAnswer(OutcomeClass.SUCCESS, value=value, replayed=replayed)


def classify(answer: stripe.StripeObject | stripe.StripeError) -> GatewayAnswer:
    """Classify one answer of the Stripe SDK (DESIGN §6). The only place that reads them.

    - 2xx object (charge, PaymentIntent, refund, …): SUCCESS; DEFINITE when its status says it
      failed (charge ``failed``, PaymentIntent ``requires_payment_method`` or ``canceled``,
      refund or payout ``failed``/``canceled``), with the failure code.
    - 402 ``card_error``: DEFINITE, ``code`` Stripe's (``card_declined``) and
      ``value["decline_code"]``.
    - 400/404 invalid request, 400 ``idempotency_error`` (same key, other parameters): DEFINITE.
    - 409 ``idempotency_key_in_use``: IN_FLIGHT (Stripe saved nothing for this request).
    - 429 rate limit: NOT_EXECUTED with ``retry_after`` from ``Retry-After``.
    - 401, 403: NOT_EXECUTED (``authentication_error``, ``permission_error``).
    - 5xx: UNKNOWN (Stripe stores a 500 under the key and replays it).
    - ``Stripe-Should-Retry: false`` on a 409 or 5xx: UNKNOWN with ``code`` ending in
      ``:no_retry``: a resend would only replay this answer, so only ``lookup`` can decide; on a
      429 the class stays NOT_EXECUTED and the code gets the same suffix.
    - no connection made (refused, DNS, connect timeout): NOT_EXECUTED, ``connection_failed``
      or ``connect_timeout``.
    - sent or maybe sent (reset, dropped answer, read timeout): UNKNOWN, ``connection_lost``
      or ``timeout``. A reset after the request was written is UNKNOWN even when the provider
      never saw it: the client cannot tell the two apart.

    ``replayed`` is read from ``Idempotent-Replayed``, on objects and on replayed errors.
    """
    if isinstance(answer, stripe.StripeError):
        return _error(answer)
    return _object(answer)


def _captured(obj: stripe.StripeObject) -> bool:
    if get_field(obj, "object") == "payment_intent":
        return get_field(obj, "status") in ("succeeded", "processing")
    return bool(get_field(obj, "captured"))


def retrieved(intent: Intent, obj: stripe.StripeObject) -> GatewayAnswer | None:
    """What a retrieved target says of a capture or a PaymentIntent cancel: done, or None."""
    if intent.operation == "cancel":
        if get_field(obj, "status") != "canceled":
            return None
        return cancelled(intent, lookup_answer(obj))
    return lookup_answer(obj) if _captured(obj) else None


def cancelled(intent: Intent, answer: GatewayAnswer) -> GatewayAnswer:
    """A cancel's answer: a PaymentIntent now ``canceled`` is what the cancel asked for, not a
    failure (``classify`` reads ``canceled`` as a failed payment)."""
    value = answer.value or {}
    if (
        intent.operation != "cancel"
        or answer.kind is not OutcomeClass.DEFINITE
        or value.get("object") != "payment_intent"
        or value.get("status") != "canceled"
    ):
        return answer
    kept = {name: item for name, item in value.items() if name != "code"}
    return GatewayAnswer(OutcomeClass.SUCCESS, value=kept, replayed=answer.replayed)


def lookup_answer(obj: stripe.StripeObject) -> GatewayAnswer:
    """A listed or retrieved object, classified as a lookup's answer (never ``replayed``)."""
    result = _object(obj)
    # A lookup reads; nothing was replayed by Stripe's idempotency layer.
    return GatewayAnswer(result.kind, value=result.value, code=result.code)


def unreachable(exc: stripe.StripeError) -> GatewayAnswer:
    """A lookup Stripe failed to answer: UNKNOWN, whatever ``classify`` says of the error."""
    result = classify(exc)
    return GatewayAnswer(OutcomeClass.UNKNOWN, code=result.code, retry_after=result.retry_after)

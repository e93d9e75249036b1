"""The Stripe adapter (L4): ``StripeGateway`` and ``AsyncStripeGateway`` on the official SDK.

Needs the ``stripe`` extra (``pip install 'payonce[stripe]'``; the async twin uses the SDK's httpx
client). Both twins share everything but the I/O:

- ``stripe_call`` turns an Intent into the one Stripe request that makes its movement (the only
  place where intents meet provider parameters);
- ``classify`` turns every answer of the SDK, object or exception, into a ``GatewayAnswer``
  (DESIGN §6; the only place where Stripe's errors are read);
- every request carries payonce's provider key as ``Idempotency-Key`` (so the SDK never invents
  one) and ``max_network_retries=0`` (payonce retries, with the same key, and must see every
  failure), whatever the ``StripeClient`` was configured with.

Secrets: payonce never logs, stores or returns request parameters, response bodies, error
messages or the client; outcomes keep only ids, status, amounts, currency and codes. The SDK's own
``stripe`` logger prints full request parameters and response bodies at DEBUG (never the API key,
which travels only in the ``Authorization`` header). Keep it quiet in production with
``logging.getLogger("stripe").setLevel(logging.WARNING)`` and leave ``stripe.log`` and the
``STRIPE_LOG`` environment variable unset (they copy the SDK's log lines to stderr).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

from payonce._errors import ConfigurationError
from payonce._intent import Intent
from payonce._model import GatewayAnswer, OutcomeClass

try:
    import stripe
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "StripeGateway needs the Stripe SDK, which is not installed: pip install 'payonce[stripe]'",
        option="gateway",
    ) from exc

__all__ = ["AsyncStripeGateway", "StripeCall", "StripeGateway", "classify", "stripe_call"]

_log = logging.getLogger("payonce.gateways.stripe")

#: Stripe keeps an idempotency key for at least 24 hours; after that a resend may move money again.
DEFAULT_WINDOW: Final = timedelta(hours=24)
#: Suffix of ``GatewayAnswer.code`` when Stripe answered ``Stripe-Should-Retry: false``: resending
#: the same request would only replay this answer, so only ``lookup`` can tell more.
NO_RETRY: Final = ":no_retry"
_PAGE: Final = 100  # Stripe's largest list page
_CREATED_SLACK: Final = timedelta(minutes=10)  # clock skew between us and Stripe's ``created``

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


class _UnmappableError(ValueError):
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
    raise _UnmappableError(f"operation {op!r} has no Stripe request")  # pragma: no cover


def _merge(
    core: dict[str, Any], extra: dict[str, Any], customer: str | None = None
) -> dict[str, Any]:
    if customer is not None:
        core["customer"] = customer
    clash = sorted(set(core) & set(extra))
    if clash:
        raise _UnmappableError(f"params.{clash[0]} would override a parameter payonce sets itself")
    return {**core, **extra}


def _target(intent: Intent) -> str:
    target = intent.target
    if target is None or not target.startswith(("ch_", "py_", "pi_")):
        raise _UnmappableError(
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
        raise _UnmappableError(
            "a subscription needs params.price, or params.product and params.interval"
        )
    core = {"items": [item], "metadata": metadata}
    return _merge(core, extra, intent.customer)


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


def _get(obj: object, name: str) -> Any:
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
    fields = _KEEP.get(str(_get(obj, "object")), _DEFAULT_KEEP)
    return {name: _get(obj, name) for name in fields if _get(obj, name) is not None}


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
            found = _get(detail, name)
            if isinstance(found, str):
                value[name] = found
    value = {name: item for name, item in value.items() if item is not None}
    return GatewayAnswer(OutcomeClass.DEFINITE, value=value, code=code, **common)


def _object(obj: stripe.StripeObject) -> GatewayAnswer:
    response = obj.last_response
    replayed = response is not None and _header(response.headers, "idempotent-replayed") == "true"
    value = _keep(obj)
    kind = str(_get(obj, "object"))
    if _get(obj, "status") in _FAILED.get(kind, ()):
        failure = _get(obj, "failure_code") or _get(obj, "failure_reason")
        error = _get(obj, "last_payment_error")
        if failure is None and error is not None:
            failure = _get(error, "decline_code") or _get(error, "code")
            if _get(error, "decline_code"):
                value["decline_code"] = _get(error, "decline_code")
        code = str(failure or _get(obj, "status"))
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


def _options(provider_key: str | None) -> dict[str, Any]:
    # Per request, so that a client configured with retries still never retries under payonce.
    options: dict[str, Any] = {"max_network_retries": 0}
    if provider_key is not None:
        options["idempotency_key"] = provider_key
    return options


@dataclass(frozen=True, slots=True)
class _Query:
    """How ``lookup`` finds an object: a list with filters, or a retrieve of the target."""

    service: str
    params: dict[str, Any]
    retrieve: str | None = None


def _query(intent: Intent, since: datetime | None) -> _Query:
    op = intent.operation
    filters: dict[str, Any] = {}
    if op == "capture" or (op == "cancel" and (intent.target or "").startswith("pi_")):
        target = _target(intent)
        service = "payment_intents" if target.startswith("pi_") else "charges"
        return _Query(service, {}, retrieve=target)
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
        filters["created"] = {"gte": int((since - _CREATED_SLACK).timestamp())}
    return _Query(service, {**filters, "limit": _PAGE})


def _captured(obj: stripe.StripeObject) -> bool:
    if _get(obj, "object") == "payment_intent":
        return _get(obj, "status") in ("succeeded", "processing")
    return bool(_get(obj, "captured"))


def _retrieved(intent: Intent, obj: stripe.StripeObject) -> GatewayAnswer | None:
    """What a retrieved target says of a capture or a PaymentIntent cancel: done, or None."""
    if intent.operation == "cancel":
        return _cancelled(intent, _found(obj)) if _get(obj, "status") == "canceled" else None
    return _found(obj) if _captured(obj) else None


def _cancelled(intent: Intent, result: GatewayAnswer) -> GatewayAnswer:
    """A cancel's answer: a PaymentIntent now ``canceled`` is what the cancel asked for, not a
    failure (``classify`` reads ``canceled`` as a failed payment)."""
    value = result.value or {}
    if (
        intent.operation != "cancel"
        or result.kind is not OutcomeClass.DEFINITE
        or value.get("object") != "payment_intent"
        or value.get("status") != "canceled"
    ):
        return result
    kept = {name: item for name, item in value.items() if name != "code"}
    return GatewayAnswer(OutcomeClass.SUCCESS, value=kept, replayed=result.replayed)


def _found(obj: stripe.StripeObject) -> GatewayAnswer:
    result = _object(obj)
    # A lookup reads; nothing was replayed by Stripe's idempotency layer.
    return GatewayAnswer(result.kind, value=result.value, code=result.code)


def _unreachable(exc: stripe.StripeError) -> GatewayAnswer:
    result = classify(exc)
    return GatewayAnswer(OutcomeClass.UNKNOWN, code=result.code, retry_after=result.retry_after)


class _StripeBase:
    """What both twins share: configuration, mapping, logging."""

    idempotency_window: timedelta | None

    def __init__(
        self,
        client: stripe.StripeClient,
        *,
        idempotency_window: timedelta = DEFAULT_WINDOW,
        max_lookup_pages: int = 10,
    ) -> None:
        if not isinstance(client, stripe.StripeClient):
            raise ConfigurationError(
                f"{type(self).__name__} needs a stripe.StripeClient; got "
                f"{type(client).__name__}. Build one with stripe.StripeClient(api_key).",
                option="client",
            )
        if not isinstance(idempotency_window, timedelta) or idempotency_window <= timedelta(0):
            raise ConfigurationError(
                "idempotency_window must be a positive timedelta (Stripe keeps keys 24 hours)",
                option="idempotency_window",
            )
        if isinstance(max_lookup_pages, bool) or not isinstance(max_lookup_pages, int):
            raise ConfigurationError("max_lookup_pages must be an int", option="max_lookup_pages")
        if max_lookup_pages < 1:
            raise ConfigurationError(
                "max_lookup_pages must be at least 1", option="max_lookup_pages"
            )
        self._client = client
        self.idempotency_window = idempotency_window
        self._max_pages = max_lookup_pages

    def __repr__(self) -> str:
        # Never the client: its requestor holds the API key.
        return f"{type(self).__name__}(idempotency_window={self.idempotency_window!r})"

    def _method(self, service: str, method: str) -> Any:
        return getattr(getattr(self._client.v1, service), method)

    @staticmethod
    def _plan(intent: Intent, key: str) -> StripeCall | GatewayAnswer:
        try:
            return stripe_call(intent, key=key)
        except _UnmappableError as exc:
            # Nothing was sent, and the same intent will never map: a definite failure.
            value = {"type": "payonce_error", "code": "unsupported_intent", "reason": str(exc)}
            return GatewayAnswer(OutcomeClass.DEFINITE, value=value, code="unsupported_intent")

    @staticmethod
    def _report(intent: Intent, key: str, result: GatewayAnswer, what: str) -> GatewayAnswer:
        # Digests and classes only: no parameters, ids, messages or bodies (I8).
        _log.debug(
            "stripe %s %s key=%s: %s code=%s replayed=%s",
            intent.operation,
            what,
            key,
            result.kind.value,
            result.code,
            result.replayed,
        )
        return result

    def _scan(self, page: Any, key: str) -> tuple[GatewayAnswer | None, str | None]:
        """The object of ``page`` stamped with ``key`` (or None) and the cursor of the next
        page (None at the end)."""
        data = cast(list[stripe.StripeObject], page.data)
        for obj in data:
            if _get(_get(obj, "metadata"), "payonce_key") == key:
                return _found(obj), None
        if page.has_more and data:
            return None, str(data[-1]["id"])
        return None, None


class StripeGateway(_StripeBase):
    """``Gateway`` on Stripe through the official SDK's ``StripeClient``.

    Args:
        client: the ``stripe.StripeClient`` to call through (its HTTP client sets the timeouts).
            Its ``max_network_retries`` does not matter: every request forces 0.
        idempotency_window: how long Stripe deduplicates a provider key (24 hours).
        max_lookup_pages: how many list pages of 100 ``lookup`` reads before it gives up and
            answers UNKNOWN (``lookup_incomplete``).

    Raises:
        ConfigurationError: a client that is not a ``StripeClient``, or a bad option.
    """

    def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """Send the request for ``intent`` with ``provider_key`` as its idempotency key.

        Never raises for an answer of Stripe or a transport failure; see ``classify``.
        """
        plan = self._plan(intent, key)
        if isinstance(plan, GatewayAnswer):
            return self._report(intent, key, plan, "refused")
        method = self._method(plan.service, plan.method)
        args = () if plan.target is None else (plan.target,)
        try:
            answer = method(*args, params=plan.params, options=_options(provider_key))
        except stripe.StripeError as exc:
            return self._report(intent, key, classify(exc), "execute")
        return self._report(intent, key, _cancelled(intent, classify(answer)), "execute")

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """Find the object payonce made for ``key``; it only reads.

        Stripe offers no read by idempotency key, and its Search API lags and does not cover refunds
        or payouts, so lookup pages through the list endpoint of the operation's object, narrowed by
        what the intent knows, newest first, and matches ``metadata["payonce_key"] == key``:

        - charge with ``tok_``/``src_``/``card_`` or a customer: ``GET /v1/charges`` (``customer``);
          with ``pm_``: ``GET /v1/payment_intents`` (``customer``);
        - refund: ``GET /v1/refunds`` (``charge`` or ``payment_intent`` = target);
        - payout: ``GET /v1/payouts`` (``destination``); transfer: ``GET /v1/transfers``
          (``destination``); subscription: ``GET /v1/subscriptions`` (``customer``, all statuses);
        - capture: ``GET`` of the target itself: captured (a charge with ``captured``, a
          PaymentIntent ``succeeded``/``processing``) is SUCCESS, otherwise None. Charge captures
          carry no metadata, so a capture made outside payonce is not told apart.
        - cancel: of a PaymentIntent, ``GET`` of it: ``canceled`` is SUCCESS, otherwise None; of
          a charge, ``GET /v1/refunds`` (``charge`` = target), as for a refund.

        ``since`` (the record's creation time, optional) narrows the list to ``created >= since``
        less 10 minutes of clock skew; without it the whole history is paged. At most
        ``max_lookup_pages`` pages of 100 are read; past that the answer is UNKNOWN
        (``lookup_incomplete``), never a false "absent". Not covered: objects made with another
        Stripe account or API key, objects whose metadata was edited afterwards, and charges of a
        customer-less PaymentIntent on accounts with more than ``max_lookup_pages`` times 100 newer
        objects.

        Inside ``idempotency_window`` the cheaper and exact lookup is a resend: ``execute`` with the
        same provider key and intent replays Stripe's stored answer (``replayed=True``) or, if the
        first request never arrived, makes it now, once. After the window only this lookup may
        decide, since a resend could move money a second time.

        Returns:
            the classified object (SUCCESS, or DEFINITE for a failed one), None when Stripe has no
            such object, or UNKNOWN when Stripe could not be asked (its code says why).

        """
        try:
            query = _query(intent, since)
        except _UnmappableError:
            return None
        try:
            if query.retrieve is not None:
                obj = self._method(query.service, "retrieve")(
                    query.retrieve, options=_options(None)
                )
                found = _retrieved(intent, obj)
                return self._report(intent, key, found, "lookup") if found else None
            params = dict(query.params)
            for _ in range(self._max_pages):
                page = self._method(query.service, "list")(params=params, options=_options(None))
                result, after = self._scan(page, key)
                if result is not None:
                    return self._report(intent, key, result, "lookup")
                if after is None:
                    return None
                params["starting_after"] = after
        except stripe.StripeError as exc:
            if query.retrieve is not None and exc.http_status == 404:
                return None  # no such target: nothing was captured
            return self._report(intent, key, _unreachable(exc), "lookup")
        incomplete = GatewayAnswer(OutcomeClass.UNKNOWN, code="lookup_incomplete")
        return self._report(intent, key, incomplete, "lookup")


class AsyncStripeGateway(_StripeBase):
    """``AsyncGateway`` on Stripe: the twin of ``StripeGateway`` on the SDK's ``*_async``
    methods (its default async HTTP client is httpx: install ``stripe[async]``).

    Raises:
        ConfigurationError: a client that is not a ``StripeClient``, or a bad option.
    """

    async def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """See ``StripeGateway.execute``."""
        plan = self._plan(intent, key)
        if isinstance(plan, GatewayAnswer):
            return self._report(intent, key, plan, "refused")
        method = self._method(plan.service, plan.method + "_async")
        args = () if plan.target is None else (plan.target,)
        try:
            answer = await method(*args, params=plan.params, options=_options(provider_key))
        except stripe.StripeError as exc:
            return self._report(intent, key, classify(exc), "execute")
        return self._report(intent, key, _cancelled(intent, classify(answer)), "execute")

    async def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """See ``StripeGateway.lookup``."""
        try:
            query = _query(intent, since)
        except _UnmappableError:
            return None
        try:
            if query.retrieve is not None:
                obj = await self._method(query.service, "retrieve_async")(
                    query.retrieve, options=_options(None)
                )
                found = _retrieved(intent, obj)
                return self._report(intent, key, found, "lookup") if found else None
            params = dict(query.params)
            for _ in range(self._max_pages):
                list_async = self._method(query.service, "list_async")
                page = await list_async(params=params, options=_options(None))
                result, after = self._scan(page, key)
                if result is not None:
                    return self._report(intent, key, result, "lookup")
                if after is None:
                    return None
                params["starting_after"] = after
        except stripe.StripeError as exc:
            if query.retrieve is not None and exc.http_status == 404:
                return None  # no such target: nothing was captured
            return self._report(intent, key, _unreachable(exc), "lookup")
        incomplete = GatewayAnswer(OutcomeClass.UNKNOWN, code="lookup_incomplete")
        return self._report(intent, key, incomplete, "lookup")

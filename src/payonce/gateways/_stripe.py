"""The Stripe adapter (L4): ``StripeGateway`` and ``AsyncStripeGateway`` on the official SDK.

Needs the ``stripe`` extra (``pip install 'payonce[stripe]'``; the async twin uses the SDK's httpx
client). Both twins share everything but the I/O:

- ``stripe_call`` (in ``_stripe_calls``) turns an Intent into the one Stripe request that makes
  its movement (the only place where intents meet provider parameters);
- ``classify`` (in ``_stripe_answers``) turns every answer of the SDK, object or exception, into
  a ``GatewayAnswer`` (DESIGN §6; the only place where Stripe's errors are read);
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
from datetime import datetime, timedelta
from typing import Any, Final, cast

from payonce._errors import ConfigurationError
from payonce._intent import Intent
from payonce._model import GatewayAnswer, OutcomeClass
from payonce.gateways._stripe_calls import StripeCall, UnmappableError, lookup_query, stripe_call

try:
    import stripe
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "StripeGateway needs the Stripe SDK, which is not installed: pip install 'payonce[stripe]'",
        option="gateway",
    ) from exc

from payonce.gateways._stripe_answers import (
    cancelled,
    classify,
    get_field,
    lookup_answer,
    retrieved,
    unreachable,
)

__all__ = ["AsyncStripeGateway", "StripeCall", "StripeGateway", "classify", "stripe_call"]

_log = logging.getLogger("payonce.gateways.stripe")

#: Stripe keeps an idempotency key for at least 24 hours; after that a resend may move money again.
DEFAULT_WINDOW: Final = timedelta(hours=24)


def _options(provider_key: str | None) -> dict[str, Any]:
    # Per request, so that a client configured with retries still never retries under payonce.
    options: dict[str, Any] = {"max_network_retries": 0}
    if provider_key is not None:
        options["idempotency_key"] = provider_key
    return options


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
        except UnmappableError as exc:
            # Nothing was sent, and the same intent will never map: a definite failure.
            value = {"type": "payonce_error", "code": "unsupported_intent", "reason": str(exc)}
            return GatewayAnswer(OutcomeClass.DEFINITE, value=value, code="unsupported_intent")

    @staticmethod
    def _report(intent: Intent, key: str, answer: GatewayAnswer, what: str) -> GatewayAnswer:
        # Digests and classes only: no parameters, ids, messages or bodies (I8).
        _log.debug(
            "stripe %s %s key=%s: %s code=%s replayed=%s",
            intent.operation,
            what,
            key,
            answer.kind.value,
            answer.code,
            answer.replayed,
        )
        return answer

    def _scan(self, page: Any, key: str) -> tuple[GatewayAnswer | None, str | None]:
        """The object of ``page`` stamped with ``key`` (or None) and the cursor of the next
        page (None at the end)."""
        data = cast(list[stripe.StripeObject], page.data)
        for obj in data:
            if get_field(get_field(obj, "metadata"), "payonce_key") == key:
                return lookup_answer(obj), None
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
        return self._report(intent, key, cancelled(intent, classify(answer)), "execute")

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
            query = lookup_query(intent, since)
        except UnmappableError:
            return None
        try:
            if query.retrieve is not None:
                obj = self._method(query.service, "retrieve")(
                    query.retrieve, options=_options(None)
                )
                found = retrieved(intent, obj)
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
            return self._report(intent, key, unreachable(exc), "lookup")
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
        return self._report(intent, key, cancelled(intent, classify(answer)), "execute")

    async def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """See ``StripeGateway.lookup``."""
        try:
            query = lookup_query(intent, since)
        except UnmappableError:
            return None
        try:
            if query.retrieve is not None:
                obj = await self._method(query.service, "retrieve_async")(
                    query.retrieve, options=_options(None)
                )
                found = retrieved(intent, obj)
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
            return self._report(intent, key, unreachable(exc), "lookup")
        incomplete = GatewayAnswer(OutcomeClass.UNKNOWN, code="lookup_incomplete")
        return self._report(intent, key, incomplete, "lookup")

"""StripeGateway and AsyncStripeGateway through the real SDK.

Most tests run against stripe-stateful-mock (a Stripe-compatible server, started once per session
on loopback), some through the loopback fault proxy so that the SDK meets real socket errors.
What the mock cannot do (PaymentIntents, 409 ``idempotency_key_in_use``, ``Stripe-Should-Retry``,
``Retry-After``, connect timeouts) runs through the real SDK and its real ``RequestsClient`` over
a recorded ``requests`` session that answers with Stripe's shapes and records what was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import stripe
from requests.structures import CaseInsensitiveDict

from payonce import Intent
from payonce._errors import ConfigurationError
from payonce._keys import Keys
from payonce._model import GatewayAnswer, OutcomeClass
from payonce._protocols import AsyncGateway, Gateway
from payonce.gateways import AsyncStripeGateway, StripeGateway
from payonce.gateways._stripe import stripe_call
from tests.conftest import SCOPE, SECRET
from tests.fault_proxy import FaultProxy, Mode
from tests.stripe_server import StripeMock, stripe_mock

API_KEY = "sk_test_payonceGatewaySecret4f9a2c7e1b"  # a test key the secret scan looks for
KEYS = Keys(SECRET)
# What an outcome may keep (S7): ids, status, amounts, currency, codes.
ALLOWED = {
    "id", "object", "status", "amount", "currency", "amount_refunded", "captured",
    "amount_received", "charge", "payment_intent", "amount_reversed", "type", "code",
    "decline_code", "param",
}  # fmt: skip


def keys_for(intent: Intent) -> tuple[str, str]:
    """The record key and provider key the guard would use for ``intent``."""
    key = KEYS.material(SCOPE, intent).key
    assert key is not None
    return key, KEYS.provider_key(SCOPE, key)


def charge(amount: int = 1000, pm: str = "tok_visa", **fields: Any) -> Intent:
    return Intent(
        "charge", amount, "usd", payment_method=pm, reference=f"order-{uuid.uuid4().hex}",
        **fields,
    )  # fmt: skip


def run(gateway: StripeGateway, intent: Intent) -> tuple[GatewayAnswer, str, str]:
    key, provider_key = keys_for(intent)
    return gateway.execute(intent, provider_key, key=key), key, provider_key


@pytest.fixture(scope="session")
def mock() -> Iterator[StripeMock]:
    with stripe_mock() as server:
        yield server


def make_client(url: str, *, timeout: float = 10.0, retries: int | None = None) -> Any:
    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": url},
        http_client=stripe.RequestsClient(timeout=timeout),
        max_network_retries=retries,
    )


@pytest.fixture
def client(mock: StripeMock) -> Any:
    return make_client(mock.url)


@pytest.fixture
def gateway(client: Any) -> StripeGateway:
    return StripeGateway(client)


def charges_with(client: Any, key: str) -> list[Any]:
    """Every charge on the server stamped with ``key`` (the mock lists all without a limit)."""
    listed = client.v1.charges.list()
    return [c for c in listed.data if c["metadata"].to_dict().get("payonce_key") == key]


# --- against the Stripe-compatible server ---


def test_charge_succeeds_and_carries_payonce_key(gateway: StripeGateway, client: Any) -> None:
    result, key, _ = run(gateway, charge(1234))
    assert result.kind is OutcomeClass.SUCCESS
    assert result.replayed is False
    assert result.value is not None
    assert result.value["id"].startswith("ch_")
    assert (result.value["amount"], result.value["currency"]) == (1234, "usd")
    assert result.value["status"] == "succeeded"
    assert set(result.value) <= ALLOWED  # no card, billing or source data
    [stored] = charges_with(client, key)
    assert stored["id"] == result.value["id"]


def test_same_provider_key_replays_one_charge(gateway: StripeGateway, client: Any) -> None:
    intent = charge()
    first, key, provider_key = run(gateway, intent)
    again = gateway.execute(intent, provider_key, key=key)
    assert again.kind is OutcomeClass.SUCCESS
    assert again.replayed is True
    assert again.value == first.value
    assert len(charges_with(client, key)) == 1


def test_same_key_other_parameters_is_a_definite_idempotency_error(
    gateway: StripeGateway, client: Any
) -> None:
    intent = charge(1000)
    first, key, provider_key = run(gateway, intent)
    assert first.kind is OutcomeClass.SUCCESS
    changed = Intent("charge", 2000, "usd", payment_method="tok_visa", reference=intent.reference)
    result = gateway.execute(changed, provider_key, key=key)
    assert result.kind is OutcomeClass.DEFINITE
    assert result.code == "idempotency_error"
    assert len(charges_with(client, key)) == 1


@pytest.mark.parametrize(
    ("pm", "decline_code"),
    [
        ("tok_chargeDeclined", "generic_decline"),
        ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
def test_decline_is_definite_with_its_decline_code(
    gateway: StripeGateway, pm: str, decline_code: str
) -> None:
    intent = charge(pm=pm)
    result, key, provider_key = run(gateway, intent)
    assert result.kind is OutcomeClass.DEFINITE
    assert result.code == "card_declined"
    assert result.value is not None
    assert result.value["decline_code"] == decline_code
    assert result.value["type"] == "card_error"
    assert set(result.value) <= ALLOWED
    # Stripe stored the 402 under the key: a resend replays the same decline.
    again = gateway.execute(intent, provider_key, key=key)
    assert (again.kind, again.value, again.replayed) == (result.kind, result.value, True)


def test_server_error_is_unknown_and_replayed(gateway: StripeGateway, client: Any) -> None:
    intent = charge(pm="tok_500")
    result, key, provider_key = run(gateway, intent)
    assert result.kind is OutcomeClass.UNKNOWN
    assert result.code == "api_error"
    again = gateway.execute(intent, provider_key, key=key)
    assert (again.kind, again.replayed) == (OutcomeClass.UNKNOWN, True)
    assert charges_with(client, key) == []


def test_rate_limit_is_not_executed(gateway: StripeGateway, client: Any) -> None:
    result, key, _ = run(gateway, charge(pm="tok_429"))
    assert result.kind is OutcomeClass.NOT_EXECUTED
    assert result.code == "rate_limit"
    assert charges_with(client, key) == []


def test_invalid_api_key_is_not_executed(mock: StripeMock) -> None:
    live = stripe.StripeClient("sk_live_notAcceptedByTheMock", base_addresses={"api": mock.url})
    result, _, _ = run(StripeGateway(live), charge())
    assert result.kind is OutcomeClass.NOT_EXECUTED
    assert result.code == "authentication_error"


def test_refused_connection_is_not_executed() -> None:
    # A bound socket that never listens: every connect to it is refused, and the port stays ours.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        result, _, _ = run(StripeGateway(make_client(f"http://127.0.0.1:{port}")), charge())
    assert result.kind is OutcomeClass.NOT_EXECUTED
    assert result.code == "connection_failed"


def test_partial_refund_then_over_refund_is_definite(gateway: StripeGateway, client: Any) -> None:
    charged, _, _ = run(gateway, charge(1000))
    assert charged.value is not None
    target = charged.value["id"]
    reference = f"refund-{uuid.uuid4().hex}"
    partial = Intent("refund", 400, "usd", target=target, reference=reference)
    refunded, refund_key, _ = run(gateway, partial)
    assert refunded.kind is OutcomeClass.SUCCESS
    assert refunded.value is not None
    assert (refunded.value["object"], refunded.value["amount"]) == ("refund", 400)
    assert refunded.value["charge"] == target
    too_much = Intent("refund", 700, "usd", target=target, reference=reference, sequence=1)
    over, _, _ = run(gateway, too_much)
    assert over.kind is OutcomeClass.DEFINITE
    assert over.value is not None
    assert (over.value["type"], over.value.get("param")) == ("invalid_request_error", "amount")
    assert client.v1.charges.retrieve(target)["amount_refunded"] == 400
    found = gateway.lookup(partial, "unused", key=refund_key)
    assert found is not None
    assert found.value == refunded.value


def test_capture_of_an_uncaptured_charge(gateway: StripeGateway) -> None:
    authorised, _, _ = run(gateway, charge(1500, params={"capture": False}))
    assert authorised.value is not None
    assert authorised.value["captured"] is False
    capture = Intent("capture", 1500, "usd", target=authorised.value["id"], reference="cap-1")
    assert gateway.lookup(capture, "unused", key="k1_none") is None  # not captured yet
    captured, key, _ = run(gateway, capture)
    assert captured.kind is OutcomeClass.SUCCESS
    assert captured.value is not None
    assert captured.value["captured"] is True
    found = gateway.lookup(capture, "unused", key=key)
    assert found is not None
    assert found.value == captured.value


def test_cancel_of_an_uncaptured_charge_releases_it_whole(
    gateway: StripeGateway, client: Any
) -> None:
    authorised, _, _ = run(gateway, charge(1500, params={"capture": False}))
    assert authorised.value is not None
    target = authorised.value["id"]
    reference = f"void-{uuid.uuid4().hex}"
    part = Intent("cancel", 500, "usd", target=target, reference=reference + "-part")
    refused, _, _ = run(gateway, part)  # a hold is released whole, never in part
    assert refused.kind is OutcomeClass.DEFINITE
    cancel = Intent("cancel", 1500, "usd", target=target, reference=reference)
    key, provider_key = keys_for(cancel)
    assert gateway.lookup(cancel, provider_key, key=key) is None  # nothing released yet
    released = gateway.execute(cancel, provider_key, key=key)
    assert released.kind is OutcomeClass.SUCCESS
    assert released.value is not None
    # Stripe voids an authorisation by a refund of all of it: no money had moved.
    assert (released.value["object"], released.value["amount"]) == ("refund", 1500)
    assert released.value["charge"] == target
    stored = client.v1.charges.retrieve(target)
    assert (stored["captured"], stored["amount_refunded"]) == (False, 1500)
    again = gateway.execute(cancel, provider_key, key=key)
    assert (again.kind, again.replayed, again.value) == (
        OutcomeClass.SUCCESS,
        True,
        released.value,
    )
    found = gateway.lookup(cancel, provider_key, key=key)
    assert found is not None
    assert (found.kind, found.value) == (OutcomeClass.SUCCESS, released.value)


def test_lookup_finds_a_charge_by_payonce_key(gateway: StripeGateway) -> None:
    # The mock stores charges with ``customer: null``, so its customer filter never matches: the
    # customer-filtered list is covered by the recorded session below.
    intent = charge(2500)
    made, key, provider_key = run(gateway, intent)
    assert made.kind is OutcomeClass.SUCCESS
    found = gateway.lookup(intent, provider_key, key=key, since=datetime.now(UTC))
    assert found is not None
    assert (found.kind, found.value, found.replayed) == (OutcomeClass.SUCCESS, made.value, False)
    assert gateway.lookup(intent, provider_key, key="k1_" + "0" * 64) is None


def test_declined_charge_is_found_as_definite(gateway: StripeGateway) -> None:
    intent = charge(pm="tok_chargeDeclinedExpiredCard")
    declined, key, provider_key = run(gateway, intent)
    assert declined.kind is OutcomeClass.DEFINITE
    assert declined.value is not None
    assert declined.code == "expired_card"
    # Stripe keeps the failed charge object; lookup reads it as the same definite failure.
    found = gateway.lookup(intent, provider_key, key=key)
    assert found is not None
    assert (found.kind, found.code) == (OutcomeClass.DEFINITE, "expired_card")
    assert found.value is not None
    assert (found.value["id"], found.value["status"]) == (declined.value["charge"], "failed")


# --- through the fault proxy ---


@pytest.fixture
def proxy(mock: StripeMock) -> Iterator[FaultProxy]:
    with FaultProxy((mock.host, mock.port), lifetime=60.0) as running:
        yield running


def test_pass_through_proxy_sends_payonce_provider_key(proxy: FaultProxy) -> None:
    result, _, provider_key = run(StripeGateway(make_client(proxy.url)), charge())
    assert result.kind is OutcomeClass.SUCCESS
    [connection] = proxy.log
    assert [r.idempotency_key for r in connection.requests] == [provider_key]
    assert connection.requests[0].line.startswith("POST /v1/charges ")


def test_dropped_answer_is_unknown_and_the_charge_exists(
    proxy: FaultProxy, gateway: StripeGateway, client: Any
) -> None:
    proxy.plan(Mode.DROP_RESPONSE)
    intent = charge()
    result, key, provider_key = run(StripeGateway(make_client(proxy.url)), intent)
    assert result.kind is OutcomeClass.UNKNOWN
    assert result.code == "connection_lost"
    [connection] = proxy.log
    assert (connection.forwarded, connection.answered) == (True, False)
    assert len(charges_with(client, key)) == 1
    # Inside the window the resend with the same provider key resolves it: a replay, one charge.
    again = gateway.execute(intent, provider_key, key=key)
    assert (again.kind, again.replayed) == (OutcomeClass.SUCCESS, True)
    assert len(charges_with(client, key)) == 1


def test_reset_before_forwarding_is_unknown_and_nothing_was_charged(
    proxy: FaultProxy, gateway: StripeGateway, client: Any
) -> None:
    proxy.plan(Mode.RESET)
    intent = charge()
    result, key, provider_key = run(StripeGateway(make_client(proxy.url)), intent)
    # The client wrote the request before the reset: it cannot know the server never saw it.
    assert result.kind is OutcomeClass.UNKNOWN
    [connection] = proxy.log
    assert connection.forwarded is False
    assert [r.idempotency_key for r in connection.requests] == [provider_key]
    assert charges_with(client, key) == []
    assert gateway.lookup(intent, provider_key, key=key) is None


def test_blackholed_answer_times_out_as_unknown(proxy: FaultProxy, client: Any) -> None:
    proxy.plan(Mode.BLACKHOLE)
    result, key, _ = run(StripeGateway(make_client(proxy.url, timeout=1.0)), charge())
    assert result.kind is OutcomeClass.UNKNOWN
    assert result.code == "timeout"
    assert len(charges_with(client, key)) == 1


def test_delayed_answer_still_succeeds(mock: StripeMock) -> None:
    with FaultProxy((mock.host, mock.port), default=Mode.DELAY, delay=0.2) as slow:
        result, _, _ = run(StripeGateway(make_client(slow.url)), charge())
        assert result.kind is OutcomeClass.SUCCESS
        assert [c.mode for c in slow.log] == [Mode.DELAY]


# --- the async twin ---


# stripe 16.1's HTTPXClient passes the form body as ``data=str``, which httpx 0.28 deprecates;
# under warnings-as-errors that warning would abort every async request before it is sent.
@pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw:DeprecationWarning")
def test_async_gateway_charges_replays_declines_and_looks_up(mock: StripeMock) -> None:
    async def main() -> list[GatewayAnswer | None]:
        http = stripe.HTTPXClient(timeout=10.0)
        client = stripe.StripeClient(API_KEY, base_addresses={"api": mock.url}, http_client=http)
        gateway = AsyncStripeGateway(client)
        try:
            intent = charge()
            key, provider_key = keys_for(intent)
            declined = charge(pm="tok_chargeDeclined")
            d_key, d_provider_key = keys_for(declined)
            return [
                await gateway.execute(intent, provider_key, key=key),
                await gateway.execute(intent, provider_key, key=key),
                await gateway.lookup(intent, provider_key, key=key),
                await gateway.execute(declined, d_provider_key, key=d_key),
            ]
        finally:
            await http.close_async()

    first, again, found, declined = asyncio.run(main())
    assert first is not None
    assert again is not None
    assert found is not None
    assert declined is not None
    assert (first.kind, first.replayed) == (OutcomeClass.SUCCESS, False)
    assert (again.value, again.replayed) == (first.value, True)
    assert found.value == first.value
    assert declined.kind is OutcomeClass.DEFINITE
    assert declined.value is not None
    assert declined.value["decline_code"] == "generic_decline"


# --- recorded Stripe answers through the real SDK ---

PAYMENT_INTENT = {
    "id": "pi_3RecordedIntent0001",
    "object": "payment_intent",
    "amount": 4200,
    "amount_capturable": 0,
    "amount_received": 4200,
    "capture_method": "automatic",
    "client_secret": "pi_3RecordedIntent0001_secret_recorded",
    "confirmation_method": "automatic",
    "created": 1795443441,
    "currency": "usd",
    "customer": "cus_Recorded01",
    "latest_charge": "ch_3RecordedCharge0001",
    "livemode": False,
    "metadata": {"payonce_key": "set-per-test"},
    "payment_method": "pm_card_visa",
    "payment_method_types": ["card"],
    "status": "succeeded",
}
PI_DECLINED = {
    "error": {
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
        "payment_intent": {**PAYMENT_INTENT, "status": "requires_payment_method"},
        "type": "card_error",
    }
}
IN_USE = {
    "error": {
        "code": "idempotency_key_in_use",
        "message": "There is currently another in-progress request using this Idempotent Key.",
        "type": "invalid_request_error",
    }
}
API_ERROR = {"error": {"message": "An unknown error occurred", "type": "api_error"}}


class Recorded:
    """A ``requests`` session for ``stripe.RequestsClient`` that answers from a script and
    records every request (method, path, query or form fields, headers)."""

    def __init__(self, *answers: tuple[int, Any, dict[str, str]] | BaseException) -> None:
        self._answers = list(answers)
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        parts = urlsplit(url)
        body = kwargs.get("data") or ""
        self.sent.append({
            "method": method.upper(),
            "path": parts.path,
            "fields": dict(parse_qsl(parts.query or body)),
            "headers": dict(kwargs.get("headers") or {}),
        })  # fmt: skip
        answer = self._answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        status, payload, headers = answer
        response = requests.Response()
        response.status_code = status
        response._content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response.headers = CaseInsensitiveDict({"request-id": "req_recorded", **headers})
        return response


def recorded(
    *answers: tuple[int, Any, dict[str, str]] | BaseException, retries: int | None = 3, **opts: Any
) -> tuple[StripeGateway, Recorded]:
    session = Recorded(*answers)
    # The client asks for 3 network retries: the gateway must still send every request once.
    client = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": "http://127.0.0.1:9"},
        http_client=stripe.RequestsClient(session=session),
        max_network_retries=retries,
    )
    return StripeGateway(client, **opts), session


def pm_charge(**fields: Any) -> Intent:
    return Intent("charge", 4200, "usd", payment_method="pm_card_visa", reference="pi-1", **fields)


def test_pm_charge_creates_and_confirms_one_payment_intent() -> None:
    intent = pm_charge(customer="cus_Recorded01", metadata={"cart": "c-9"})
    key, provider_key = keys_for(intent)
    gateway, session = recorded((200, {**PAYMENT_INTENT, "metadata": {"payonce_key": key}}, {}))
    result = gateway.execute(intent, provider_key, key=key)
    [sent] = session.sent
    assert (sent["method"], sent["path"]) == ("POST", "/v1/payment_intents")
    assert sent["headers"]["Idempotency-Key"] == provider_key
    assert sent["fields"] == {
        "amount": "4200",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "customer": "cus_Recorded01",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[payonce_key]": key,
        "metadata[cart]": "c-9",
    }
    assert result.kind is OutcomeClass.SUCCESS
    assert result.value == {
        "id": "pi_3RecordedIntent0001",
        "object": "payment_intent",
        "status": "succeeded",
        "amount": 4200,
        "currency": "usd",
        "amount_received": 4200,
    }  # never client_secret, payment_method or customer


def test_pm_charge_decline_is_definite() -> None:
    gateway, _ = recorded((402, PI_DECLINED, {}))
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert result.kind is OutcomeClass.DEFINITE
    assert result.value == {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
    }


def test_in_use_is_in_flight_and_sent_once_despite_client_retries() -> None:
    gateway, session = recorded((409, IN_USE, {"Stripe-Should-Retry": "true"}))
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert (result.kind, result.code) == (OutcomeClass.IN_FLIGHT, "idempotency_key_in_use")
    assert len(session.sent) == 1


@pytest.mark.parametrize(("status", "body"), [(409, IN_USE), (500, API_ERROR), (503, API_ERROR)])
def test_should_retry_false_is_unknown_no_retry(status: int, body: Any) -> None:
    gateway, session = recorded((status, body, {"Stripe-Should-Retry": "false"}))
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert result.kind is OutcomeClass.UNKNOWN
    assert result.code is not None
    assert result.code.endswith(":no_retry")
    assert len(session.sent) == 1


def test_server_error_is_sent_once_despite_client_retries() -> None:
    gateway, session = recorded((500, API_ERROR, {}), retries=5)
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert (result.kind, result.code) == (OutcomeClass.UNKNOWN, "api_error")
    assert len(session.sent) == 1


def test_rate_limit_reads_retry_after() -> None:
    body = {"error": {"type": "rate_limit_error", "code": "rate_limit", "message": "slow down"}}
    gateway, _ = recorded((429, body, {"Retry-After": "7"}))
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert result.kind is OutcomeClass.NOT_EXECUTED
    assert result.retry_after == timedelta(seconds=7)


def test_unreadable_success_is_unknown() -> None:
    gateway, _ = recorded((200, b"<html>proxy page</html>", {}))
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert (result.kind, result.value) == (OutcomeClass.UNKNOWN, None)


def test_replayed_header_is_read_on_objects_and_errors() -> None:
    gateway, _ = recorded(
        (200, PAYMENT_INTENT, {"Idempotent-Replayed": "true"}),
        (402, PI_DECLINED, {"Idempotent-Replayed": "true"}),
    )
    assert gateway.execute(pm_charge(), "po1_x", key="k1_x").replayed is True
    assert gateway.execute(pm_charge(), "po1_y", key="k1_y").replayed is True


@pytest.mark.parametrize(
    ("raised", "kind", "code"),
    [
        (
            requests.exceptions.ConnectTimeout("connect timed out"),
            OutcomeClass.NOT_EXECUTED,
            "connect_timeout",
        ),
        (requests.exceptions.ReadTimeout("read timed out"), OutcomeClass.UNKNOWN, "timeout"),
        (
            requests.exceptions.ConnectionError(ConnectionResetError(104, "Connection reset")),
            OutcomeClass.UNKNOWN,
            "connection_lost",
        ),
        (
            requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused")),
            OutcomeClass.NOT_EXECUTED,
            "connection_failed",
        ),
    ],
)
def test_transport_failures_before_and_after_send(
    raised: BaseException, kind: OutcomeClass, code: str
) -> None:
    gateway, session = recorded(raised)
    result = gateway.execute(pm_charge(), "po1_x", key="k1_x")
    assert (result.kind, result.code) == (kind, code)
    assert len(session.sent) == 1  # the SDK's own retry loop never ran


def test_payment_intent_capture_and_refund_parameters() -> None:
    key = "k1_" + "a" * 64
    capture = Intent("capture", 4200, "usd", target="pi_3RecordedIntent0001", reference="c")
    refund = Intent("refund", 1000, "usd", target="pi_3RecordedIntent0001", reference="r")
    captured = stripe_call(capture, key=key)
    assert (captured.service, captured.method, captured.target) == (
        "payment_intents", "capture", "pi_3RecordedIntent0001",
    )  # fmt: skip
    assert captured.params == {"amount_to_capture": 4200, "metadata": {"payonce_key": key}}
    refunded = stripe_call(refund, key=key)
    assert (refunded.service, refunded.method) == ("refunds", "create")
    assert refunded.params == {
        "payment_intent": "pi_3RecordedIntent0001",
        "amount": 1000,
        "metadata": {"payonce_key": key},
    }
    gateway, session = recorded((200, {**PAYMENT_INTENT, "status": "succeeded"}, {}))
    assert gateway.execute(capture, "po1_c", key=key).kind is OutcomeClass.SUCCESS
    assert session.sent[0]["path"] == "/v1/payment_intents/pi_3RecordedIntent0001/capture"
    assert session.sent[0]["fields"]["amount_to_capture"] == "4200"


def test_payment_intent_cancel_is_a_success_and_found_by_its_status() -> None:
    key = "k1_" + "c" * 64
    cancel = Intent("cancel", 4200, "usd", target="pi_3RecordedIntent0001", reference="x")
    call = stripe_call(cancel, key=key)
    assert (call.service, call.method, call.target, call.params) == (
        "payment_intents", "cancel", "pi_3RecordedIntent0001", {},
    )  # fmt: skip
    canceled = {**PAYMENT_INTENT, "status": "canceled", "amount_received": 0}
    held = {**PAYMENT_INTENT, "status": "requires_capture", "amount_received": 0}
    gateway, session = recorded(
        (200, canceled, {}),
        (200, canceled, {"Idempotent-Replayed": "true"}),
        (200, canceled, {}),
        (200, held, {}),
        (400, {"error": {"code": "payment_intent_unexpected_state",
                         "type": "invalid_request_error"}}, {}),
    )  # fmt: skip
    done = gateway.execute(cancel, "po1_x", key=key)
    # "canceled" is what a cancel asks for: a success, not the failed payment classify reads.
    assert (done.kind, done.code) == (OutcomeClass.SUCCESS, None)
    assert done.value is not None
    assert (done.value["status"], "code" in done.value) == ("canceled", False)
    assert session.sent[0]["path"] == "/v1/payment_intents/pi_3RecordedIntent0001/cancel"
    assert session.sent[0]["headers"]["Idempotency-Key"] == "po1_x"
    replayed = gateway.execute(cancel, "po1_x", key=key)
    assert (replayed.kind, replayed.replayed) == (OutcomeClass.SUCCESS, True)
    found = gateway.lookup(cancel, "po1_x", key=key)
    assert found is not None
    assert (found.kind, found.value) == (OutcomeClass.SUCCESS, done.value)
    assert session.sent[2]["method"] == "GET"
    assert gateway.lookup(cancel, "po1_x", key=key) is None  # still held: not cancelled
    captured = gateway.execute(cancel, "po1_y", key=key)  # captured meanwhile: refused
    assert (captured.kind, captured.code) == (
        OutcomeClass.DEFINITE,
        "payment_intent_unexpected_state",
    )


def test_payout_transfer_and_subscription_parameters() -> None:
    key = "k1_" + "b" * 64
    meta = {"payonce_key": key}
    payout = Intent("payout", 5000, "eur", destination="ba_123", reference="batch-1")
    transfer = Intent(
        "transfer", 700, "usd", destination="acct_123", reference="t-1",
        params={"transfer_group": "order-7"},
    )  # fmt: skip
    subscription = Intent(
        "subscription", 900, "usd", customer="cus_1", reference="p-1",
        params={"product": "prod_1", "interval": "month", "trial_period_days": 7},
    )  # fmt: skip
    assert stripe_call(payout, key=key).params == {
        "amount": 5000, "currency": "eur", "metadata": meta, "destination": "ba_123",
    }  # fmt: skip
    assert stripe_call(transfer, key=key).params == {
        "amount": 700, "currency": "usd", "metadata": meta, "destination": "acct_123",
        "transfer_group": "order-7",
    }  # fmt: skip
    sub = stripe_call(subscription, key=key)
    assert (sub.service, sub.method) == ("subscriptions", "create")
    assert sub.params == {
        "customer": "cus_1",
        "items": [{"price_data": {
            "currency": "usd", "unit_amount": 900, "product": "prod_1",
            "recurring": {"interval": "month"},
        }}],
        "metadata": meta,
        "trial_period_days": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    "intent",
    [
        Intent("subscription", 900, "usd", customer="cus_1", reference="no-price"),
        Intent("charge", 900, "usd", customer="cus_1", reference="x", params={"amount": 9}),
        Intent("refund", 900, "usd", target="sub_123", reference="refund-a-subscription"),
    ],
)  # fmt: skip
def test_unmappable_intent_is_definite_and_sends_nothing(intent: Intent) -> None:
    gateway, session = recorded()
    result = gateway.execute(intent, "po1_x", key="k1_x")
    assert (result.kind, result.code) == (OutcomeClass.DEFINITE, "unsupported_intent")
    assert session.sent == []


def test_lookup_pages_with_filters_and_matches_metadata() -> None:
    key = "k1_" + "c" * 64
    other = {**PAYMENT_INTENT, "id": "pi_other", "metadata": {"payonce_key": "k1_other"}}
    mine = {**PAYMENT_INTENT, "metadata": {"payonce_key": key}}
    page = {"object": "list", "url": "/v1/payment_intents", "has_more": True, "data": [other]}
    last = {**page, "has_more": False, "data": [mine]}
    gateway, session = recorded((200, page, {}), (200, last, {}))
    since = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    found = gateway.lookup(pm_charge(customer="cus_Recorded01"), "po1_x", key=key, since=since)
    assert found is not None
    assert (found.kind, found.value and found.value["id"]) == (
        OutcomeClass.SUCCESS, "pi_3RecordedIntent0001",
    )  # fmt: skip
    first, second = session.sent
    assert (first["method"], first["path"]) == ("GET", "/v1/payment_intents")
    assert "Idempotency-Key" not in first["headers"]
    assert first["fields"] == {
        "customer": "cus_Recorded01",
        "limit": "100",
        "created[gte]": str(int((since - timedelta(minutes=10)).timestamp())),
    }
    assert second["fields"]["starting_after"] == "pi_other"


def test_lookup_that_runs_out_of_pages_is_unknown_not_absent() -> None:
    page = {"object": "list", "url": "/v1/charges", "has_more": True, "data": [
        {"id": "ch_1", "object": "charge", "status": "succeeded", "metadata": {}},
    ]}  # fmt: skip
    gateway, _ = recorded((200, page, {}), max_lookup_pages=1)
    result = gateway.lookup(charge(), "po1_x", key="k1_x")
    assert result is not None
    assert (result.kind, result.code) == (OutcomeClass.UNKNOWN, "lookup_incomplete")


def test_lookup_that_cannot_ask_is_unknown() -> None:
    gateway, _ = recorded((500, API_ERROR, {}))
    result = gateway.lookup(charge(), "po1_x", key="k1_x")
    assert result is not None
    assert result.kind is OutcomeClass.UNKNOWN


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"stripe\.StripeClient"):
        StripeGateway(object())  # type: ignore[arg-type]
    client = stripe.StripeClient(API_KEY)
    with pytest.raises(ConfigurationError, match="idempotency_window"):
        StripeGateway(client, idempotency_window=timedelta(0))
    assert StripeGateway(client).idempotency_window == timedelta(hours=24)
    assert API_KEY not in repr(StripeGateway(client))
    assert isinstance(StripeGateway(client), Gateway)
    assert isinstance(AsyncStripeGateway(client), AsyncGateway)


# --- no secrets (S6, S7) ---


def test_nothing_payonce_logs_or_returns_contains_the_api_key(
    mock: StripeMock,
    proxy: FaultProxy,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stripe, "log", "debug")  # the SDK also prints its lines to stderr
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="stripe")
    gateway = StripeGateway(make_client(mock.url))
    customer = make_client(mock.url).v1.customers.create(params={"source": "tok_visa"})
    customer_id = customer["id"]
    results: list[GatewayAnswer | None] = []
    for intent in (
        Intent("charge", 1000, "usd", customer=customer_id, reference="secret-scan-order"),
        charge(pm="tok_chargeDeclined"),
        charge(pm="tok_500"),
        charge(pm="tok_429"),
    ):
        result, key, provider_key = run(gateway, intent)
        results += [result, gateway.lookup(intent, provider_key, key=key)]
    proxy.plan(Mode.DROP_RESPONSE)
    results.append(run(StripeGateway(make_client(proxy.url)), charge())[0])
    stripe_lines = [r for r in caplog.records if r.name.startswith("stripe")]
    assert stripe_lines, "the stripe logger must have been captured at DEBUG"
    captured = "\n".join([caplog.text, *capsys.readouterr(), repr(results), repr(gateway)])
    assert API_KEY not in captured
    assert not re.search(r"sk_(test|live)_[A-Za-z0-9]+", captured)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("payonce")]
    assert ours, "payonce must have logged its classifications"
    for line in ours:
        assert customer_id not in line
        assert "secret-scan-order" not in line
    for result in results:
        if result is not None and result.value is not None:
            assert set(result.value) <= ALLOWED
            assert customer_id not in json.dumps(result.value)

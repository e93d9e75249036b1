"""Intent validation (SCENARIOS S5): every bad input is an IntentError naming the field.

An Intent is validated on construction, so nothing invalid ever reaches a key, a store or a
gateway: each rejection below therefore also means "nothing stored, key not consumed".
"""

from __future__ import annotations

import dataclasses
import json
import math
import unicodedata
from typing import Any

import pytest

from payonce import Intent, IntentError, format_amount
from payonce._keys import canonical_json

_UNSET = object()  # marks a BASE field the case leaves out
BASE: dict[str, Any] = {
    "operation": "charge",
    "amount": 5000,
    "currency": "usd",
    "customer": "cus_123",
    "reference": "order-42",
}


def build(**changes: Any) -> Intent:
    fields = {**BASE, **changes}
    return Intent(**{k: v for k, v in fields.items() if v is not _UNSET})


def rejects(field: str, **changes: Any) -> IntentError:
    with pytest.raises(IntentError) as info:
        build(**changes)
    assert info.value.field == field, info.value.message
    assert info.value.http_status == 400
    return info.value


# --- amount ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [0, -1, True, False, 1.5, "1000", 1e3, math.nan, math.inf, -math.inf, 2**63, 100_000_000, None],
    ids=[
        "zero",
        "negative",
        "True",
        "False",
        "1.5",
        "str",
        "1e3",
        "nan",
        "inf",
        "-inf",
        "2**63",
        "above-max",
        "None",
    ],
)
def test_amount_rejected(amount: object) -> None:
    err = rejects("amount", amount=amount)
    assert err.message.startswith("amount: ")


@pytest.mark.parametrize("amount", [True, 1.5, "1000", 1e3])
def test_amount_message_tells_the_agent_how_to_fix_it(amount: object) -> None:
    err = rejects("amount", amount=amount)
    assert "must be an integer in minor units, e.g. 1000 for $10.00" in err.message


def test_amount_at_the_maximum_is_accepted() -> None:
    assert build(amount=99_999_999).amount == 99_999_999


@pytest.mark.parametrize(
    ("currency", "amount", "shown"), [("usd", 49, "0.49 USD"), ("jpy", 49, "49 JPY")]
)
@pytest.mark.parametrize("operation", ["charge", "subscription"])
def test_amount_below_the_stripe_minimum_for_money_in(
    currency: str, amount: int, shown: str, operation: str
) -> None:
    err = rejects("amount", operation=operation, currency=currency, amount=amount)
    assert shown in err.message


@pytest.mark.parametrize(
    ("operation", "extra"),
    [("refund", {"target": "ch_1"}), ("capture", {"target": "pi_1"}), ("payout", {})],
)
def test_small_amounts_allowed_when_money_does_not_come_in(
    operation: str, extra: dict[str, Any]
) -> None:
    intent = build(operation=operation, amount=1, **extra)
    assert intent.amount == 1


@pytest.mark.parametrize(("currency", "amount"), [("usd", 50), ("jpy", 50), ("kwd", 1)])
def test_the_minimum_itself_is_accepted(currency: str, amount: int) -> None:
    assert build(currency=currency, amount=amount).amount == amount


@pytest.mark.parametrize("amount", [1, 1000, 1234, 99_999_999])
def test_kwd_amounts_are_in_fils(amount: int) -> None:
    intent = build(currency="kwd", amount=amount)
    assert intent.amount == amount
    assert format_amount(amount, "kwd").endswith(" KWD")


# --- currency -------------------------------------------------------------------------------


def test_uppercase_currency_suggests_the_lowercase_code() -> None:
    err = rejects("currency", currency="USD")
    assert "'usd'" in err.message


@pytest.mark.parametrize(
    "currency",
    [
        "USD ",
        "us d",
        " usd",
        "\uff35\uff33\uff24",
        "us\u0501",
        "xyz",
        "",
        "usdx",
        "US",
        None,
        840,
        b"usd",
    ],
    ids=[
        "trailing-space",
        "inner-space",
        "leading-space",
        "full-width",
        "cyrillic-lookalike",
        "unknown",
        "empty",
        "four-letters",
        "two-letters",
        "None",
        "numeric-code",
        "bytes",
    ],
)
def test_currency_rejected(currency: object) -> None:
    err = rejects("currency", currency=currency)
    assert "ISO 4217" in err.message


def test_look_alike_currency_is_not_folded_to_usd() -> None:
    # The Cyrillic komi de (U+0501) and full-width letters must not be "helpfully" mapped to usd.
    for text in ("us\u0501", "\uff35\uff33\uff24"):
        err = rejects("currency", currency=text)
        assert "use 'usd'" not in err.message


# --- reference ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    ["", "r" * 256, "\x00", "a\x00b", "a\r\nb", "a\nb", "a\tb", "a\u202eb", "\u200fx", " order",
     "order ", "café", "order\u20131", "\uff4f\uff52\uff44\uff45\uff52", "a\x7fb", 42, b"order-1"],
    ids=["empty", "256-chars", "nul", "inner-nul", "crlf", "lf", "tab", "bidi-rlo", "rlm",
         "leading-space", "trailing-space", "non-ascii", "en-dash", "full-width", "del", "int",
         "bytes"],
)  # fmt: skip
def test_reference_rejected(reference: object) -> None:
    rejects("reference", reference=reference)


@pytest.mark.parametrize("reference", ["r", "r" * 255, "order 42/A-b_c.d:e#f", "1' OR '1'='1"])
def test_reference_accepted(reference: str) -> None:
    assert build(reference=reference).reference == reference


# --- counterparty ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer", "cust_1"),
        ("customer", ""),
        ("customer", "cus_"),
        ("customer", "cus_1 "),
        ("customer", "cus_a\nb"),
        ("customer", 123),
        ("payment_method", "xx_1"),
        ("payment_method", "pm_"),
        ("destination", "cus_1"),
        ("target", "cus_1"),
    ],
)
def test_ids_must_match_their_prefix_pattern(field: str, value: object) -> None:
    err = rejects(field, **{field: value})
    assert "must be a" in err.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payment_method", "pm_1A2b"),
        ("payment_method", "tok_visa"),
        ("payment_method", "tok_500|tok_visa|n1"),
        ("destination", "acct_1"),
        ("target", "ch_1"),
    ],
)
def test_ids_accepted(field: str, value: str) -> None:
    assert getattr(build(**{field: value}), field) == value


def test_id_error_does_not_echo_the_raw_value() -> None:
    err = rejects("customer", customer="cust_SECRET_RAW_ID")
    assert "SECRET_RAW_ID" not in err.message
    assert "SECRET_RAW_ID" not in str(err.to_dict())


# --- metadata -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({f"k{i}": "v" for i in range(51)}, "metadata"),
        ({"k" * 41: "v"}, "metadata"),
        ({"k": "v" * 501}, "metadata.k"),
        ({"k": "a\x00b"}, "metadata.k"),
        ({"k": "a\r\nb"}, "metadata.k"),
        ({"k": "\u202e"}, "metadata.k"),
        ({"k[0]": "v"}, "metadata"),
        ({"k]": "v"}, "metadata"),
        ({"payonce_key": "k1_forged"}, "metadata"),
        ({"": "v"}, "metadata"),
        ({"k\x00": "v"}, "metadata"),
        ({"k": 1}, "metadata.k"),
        ({1: "v"}, "metadata"),
        ({f"k{i}": "v" for i in range(10**4)}, "metadata"),
        (["k", "v"], "metadata"),
        ("k=v", "metadata"),
    ],
    ids=[
        "51-keys",
        "41-char-key",
        "501-char-value",
        "nul-in-value",
        "crlf-in-value",
        "bidi-in-value",
        "bracket-in-key",
        "closing-bracket",
        "reserved-payonce_key",
        "empty-key",
        "nul-in-key",
        "int-value",
        "int-key",
        "10**4-entries",
        "list",
        "str",
    ],
)
def test_metadata_rejected(metadata: object, field: str) -> None:
    rejects(field, metadata=metadata)


def test_metadata_at_the_limits_is_accepted() -> None:
    metadata = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(50)}
    intent = build(metadata=metadata)
    assert dict(intent.metadata) == metadata


# --- params ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"x": 1.5}, "params.x"),
        ({"x": math.nan}, "params.x"),
        ({"x": {"nested": "dict"}}, "params.x"),
        ({"x": ["a"]}, "params.x"),
        ({"x": None}, "params.x"),
        ({"x": "a\x00b"}, "params.x"),
        ({"x": 2**63}, "params.x"),
        ({"Bad-Name": "v"}, "params"),
        ({"1st": "v"}, "params"),
        ({"": "v"}, "params"),
        ({"n" * 41: "v"}, "params"),
        ({f"p{i}": 1 for i in range(51)}, "params"),
        ("description=x", "params"),
    ],
    ids=[
        "float",
        "nan",
        "nested-dict",
        "list",
        "None",
        "nul",
        "huge-int",
        "bad-name",
        "digit-first",
        "empty-name",
        "long-name",
        "51-entries",
        "not-a-mapping",
    ],
)
def test_params_rejected(params: object, field: str) -> None:
    rejects(field, params=params)


def test_params_accept_strings_integers_and_booleans() -> None:
    params = {"description": "Order #42", "capture": False, "statement_units": 3}
    assert dict(build(params=params).params) == params


# --- sequence and operation -----------------------------------------------------------------


@pytest.mark.parametrize("sequence", [-1, True, 2**31, 1.0, "1", None])
def test_sequence_rejected(sequence: object) -> None:
    rejects("sequence", sequence=sequence)


@pytest.mark.parametrize("sequence", [0, 1, 2**31 - 1])
def test_sequence_accepted(sequence: int) -> None:
    assert build(sequence=sequence).sequence == sequence


@pytest.mark.parametrize("operation", ["steal", "", "CHARGE", "charge ", None, 1])
def test_operation_rejected(operation: object) -> None:
    err = rejects("operation", operation=operation)
    assert "charge" in err.message


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"operation": "refund", "customer": _UNSET}, "target"),
        ({"operation": "capture"}, "target"),
        ({"operation": "transfer"}, "destination"),
        ({"operation": "subscription", "customer": _UNSET}, "customer"),
        ({"operation": "charge", "customer": _UNSET}, "customer"),
        ({"operation": "payout", "customer": _UNSET, "reference": _UNSET}, "reference"),
    ],
    ids=[
        "refund-without-target",
        "capture-without-target",
        "transfer-without-destination",
        "subscription-without-customer",
        "charge-without-customer-or-payment-method",
        "reference-less-without-counterparty",
    ],
)
def test_shape_rejected(changes: dict[str, Any], field: str) -> None:
    rejects(field, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"customer": _UNSET, "payment_method": "pm_1"},
        {"reference": _UNSET},
        {"operation": "refund", "target": "ch_1", "customer": _UNSET},
        {"operation": "transfer", "destination": "acct_1", "customer": _UNSET},
        {"operation": "payout", "customer": _UNSET},
    ],
)
def test_shape_accepted(changes: dict[str, Any]) -> None:
    intent = build(**changes)
    assert intent.reference is not None or intent.counterparty is not None


# --- from_dict ------------------------------------------------------------------------------


def test_from_dict_round_trips() -> None:
    intent = build(metadata={"a": "1"}, params={"capture": True}, sequence=2)
    again = Intent.from_dict(json.loads(canonical_json(intent.canonical())))
    assert again == intent
    assert canonical_json(again.canonical()) == canonical_json(intent.canonical())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**BASE, "amout": 5000}, "amout"),
        ({**BASE, "payonce_key": "k1_x"}, "payonce_key"),
        ({k: v for k, v in BASE.items() if k != "operation"}, "operation"),
        ({k: v for k, v in BASE.items() if k != "amount"}, "amount"),
        ({k: v for k, v in BASE.items() if k != "currency"}, "currency"),
        ([("operation", "charge")], "intent"),
        ('{"operation": "charge"}', "intent"),
        (None, "intent"),
    ],
    ids=[
        "typo-field",
        "unknown-field",
        "missing-operation",
        "missing-amount",
        "missing-currency",
        "list",
        "json-text",
        "None",
    ],
)
def test_from_dict_rejected(data: Any, field: str) -> None:
    with pytest.raises(IntentError) as info:
        Intent.from_dict(data)
    assert info.value.field == field


def test_from_dict_validates_values() -> None:
    with pytest.raises(IntentError) as info:
        Intent.from_dict({**BASE, "amount": "5000"})
    assert info.value.field == "amount"


# --- values stored literally ----------------------------------------------------------------


INJECTIONS = [
    "'; DROP TABLE records; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM ledger;--",
    "EVAL \"redis.call('FLUSHALL')\" 0",
    "{scope:key}*",
    "%s%s%n",
    "$(rm -rf /)",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_stored_literally(text: str) -> None:
    intent = build(reference=text, metadata={"note": text}, params={"description": text})
    assert intent.reference == text
    canonical = intent.canonical()
    assert canonical["reference"] == text
    assert canonical["metadata"] == {"note": text}
    again = Intent.from_dict(json.loads(canonical_json(canonical)))
    assert again.reference == text
    assert again.metadata["note"] == text
    assert again.params["description"] == text


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_unicode_description_round_trips_unchanged(form: str) -> None:
    text = unicodedata.normalize(form, "Café für Zoë — 東京 🍣")
    intent = build(metadata={"description": text}, params={"description": text})
    again = Intent.from_dict(json.loads(canonical_json(intent.canonical())))
    assert again.metadata["description"] == text
    assert again.params["description"] == text
    assert canonical_json(again.canonical()).encode() == canonical_json(intent.canonical()).encode()
    assert unicodedata.is_normalized(form, again.metadata["description"])


def test_nfc_and_nfd_are_different_intents() -> None:
    nfc = build(metadata={"d": unicodedata.normalize("NFC", "é")})
    nfd = build(metadata={"d": unicodedata.normalize("NFD", "é")})
    assert nfc != nfd
    assert nfc.canonical() != nfd.canonical()


# --- repr, format, immutability -------------------------------------------------------------


def test_repr_hides_counterparties_and_reference() -> None:
    intent = Intent(
        "charge",
        5000,
        "usd",
        customer="cus_RAWCUSTOMER",
        payment_method="pm_RAWCARD",
        reference="order-RAWREF",
        sequence=3,
    )
    text = repr(intent)
    for raw in ("RAWCUSTOMER", "RAWCARD", "RAWREF"):
        assert raw not in text
    assert "'charge'" in text
    assert "5000" in text
    assert "sequence=3" in text
    assert str(intent) == text


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (1050, "usd", "10.50 USD"),
        (5, "usd", "0.05 USD"),
        (99_999_999, "usd", "999999.99 USD"),
        (1000, "jpy", "1000 JPY"),
        (50, "jpy", "50 JPY"),
        (1234, "kwd", "1.234 KWD"),
        (5, "kwd", "0.005 KWD"),
        (1000, "kwd", "1.000 KWD"),
    ],
)
def test_format_amount(amount: int, currency: str, shown: str) -> None:
    assert format_amount(amount, currency) == shown


def test_intent_is_frozen() -> None:
    intent = build()
    with pytest.raises(dataclasses.FrozenInstanceError):
        intent.amount = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        intent.reference = "other"  # type: ignore[misc]
    assert intent.amount == 5000


def test_params_and_metadata_are_read_only_copies() -> None:
    metadata = {"a": "1"}
    params = {"description": "x"}
    intent = build(metadata=metadata, params=params)
    with pytest.raises(TypeError):
        intent.metadata["b"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        intent.params["description"] = "y"  # type: ignore[index]
    metadata["a"] = "changed"
    params["description"] = "changed"
    assert intent.metadata["a"] == "1"
    assert intent.params["description"] == "x"
    assert dict(build().metadata) == {}
    assert dict(build().params) == {}


def test_intent_is_equal_by_value() -> None:
    assert build() == build()
    assert build(sequence=1) != build()

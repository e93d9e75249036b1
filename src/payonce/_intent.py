"""The Intent and the rules that make one valid (L1: pure, no I/O, no clock).

``Intent`` is constructed validated: an invalid one raises ``IntentError`` naming the field, so no
invalid intent can reach a key derivation, a store or a gateway. It lives at L1 rather than L0
because its validation needs the currency table.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from payonce._currencies import EXPONENTS, MAX_AMOUNT, MIN_CHARGE
from payonce._errors import IntentError

__all__ = ["OPERATIONS", "Intent", "format_amount"]

#: Operations payonce knows how to guard. ``charge`` and ``subscription`` move money from a
#: customer; ``capture`` and ``refund`` act on an earlier charge (``target``); ``cancel`` releases
#: an authorisation that was never captured (``target``, its whole amount); ``payout`` and
#: ``transfer`` move money out.
OPERATIONS: Final = frozenset(
    {"charge", "capture", "refund", "cancel", "payout", "transfer", "subscription"}
)

# Ids look like the provider's: a known prefix, then the characters Stripe uses. A payment method
# may also be a test token chain such as ``tok_500|tok_visa|n1`` (stripe-stateful-mock).
_ID_PATTERNS: Final = {
    "customer": re.compile(r"cus_[A-Za-z0-9_]{1,250}"),
    "payment_method": re.compile(r"(pm|tok|src|card)_[A-Za-z0-9_|.-]{1,250}"),
    "destination": re.compile(r"(acct|ba|card)_[A-Za-z0-9_]{1,250}"),
    "target": re.compile(r"(ch|pi|py|tr|sub|re)_[A-Za-z0-9_]{1,250}"),
}
_ID_EXAMPLES: Final = {
    "customer": "'cus_123'",
    "payment_method": "'pm_…', 'tok_visa', 'src_…' or 'card_…'",
    "destination": "'acct_…', 'ba_…' or 'card_…'",
    "target": "'ch_…' or 'pi_…' (the charge or PaymentIntent to act on)",
}
_PRINTABLE_ASCII: Final = re.compile(r"[\x20-\x7e]+")
_PARAM_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,39}")
_BIDI_CONTROLS: Final = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_MAX_REFERENCE: Final = 255
_MAX_SEQUENCE: Final = 2**31 - 1
_MAX_PARAM_VALUE: Final = 5000
_MAX_PARAMS: Final = 50
# Stripe's metadata limits: 50 keys, key names up to 40 characters, values up to 500 characters,
# no square brackets in key names.
_META_MAX_KEYS: Final = 50
_META_MAX_KEY: Final = 40
_META_MAX_VALUE: Final = 500
_RESERVED_METADATA: Final = frozenset({"payonce_key"})

Scalar = str | int | bool


def _fail(field_name: str, message: str) -> IntentError:
    return IntentError(f"{field_name}: {message}", field=field_name)


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


def _check_text(value: object, field_name: str, *, max_len: int) -> str:
    """Unicode text: no control characters, no bidi overrides, valid UTF-8, bounded."""
    if not isinstance(value, str):
        raise _fail(field_name, f"must be a string; got {type(value).__name__}")
    if len(value) > max_len:
        raise _fail(field_name, f"must be at most {max_len} characters; got {len(value)}")
    for ch in value:
        if ch in _BIDI_CONTROLS:
            raise _fail(field_name, f"must not contain bidi control U+{ord(ch):04X}; remove it")
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise _fail(
                field_name,
                f"must not contain control character U+{ord(ch):04X} (NUL, CR, LF and other "
                "controls are refused); remove it",
            )
    return value


def _check_ascii_token(value: object, field_name: str, *, max_len: int) -> str:
    if not isinstance(value, str):
        raise _fail(field_name, f"must be a string; got {type(value).__name__}")
    if not value:
        raise _fail(field_name, "must not be empty")
    if len(value) > max_len:
        raise _fail(field_name, f"must be at most {max_len} characters; got {len(value)}")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise _fail(
            field_name,
            "must be printable ASCII (letters, digits, punctuation, spaces); no control, "
            "non-ASCII or invisible characters",
        )
    if value != value.strip():
        raise _fail(field_name, "must not start or end with a space; strip it")
    return value


def _check_id(value: object, field_name: str) -> str:
    if not isinstance(value, str):
        raise _fail(field_name, f"must be a string id; got {type(value).__name__}")
    if not _ID_PATTERNS[field_name].fullmatch(value):
        raise _fail(
            field_name,
            f"must be a provider id such as {_ID_EXAMPLES[field_name]}; got a value of "
            f"{len(value)} characters that does not match",
        )
    return value


def _check_amount(value: object, operation: str, currency: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = ""
        if isinstance(value, float) and math.isfinite(value):
            hint = " (convert to minor units yourself, without rounding errors)"
        raise _fail(
            "amount",
            "must be an integer in minor units, e.g. 1000 for $10.00; "
            f"got {_describe(value)}{hint}",
        )
    if value <= 0:
        raise _fail("amount", f"must be positive (minor units, e.g. 1000 for $10.00); got {value}")
    if value > MAX_AMOUNT:
        raise _fail(
            "amount", f"must be at most {MAX_AMOUNT} minor units (eight digits); got {value}"
        )
    minimum = MIN_CHARGE.get(currency, 1)
    if operation in ("charge", "subscription") and value < minimum:
        raise _fail(
            "amount",
            f"must be at least {format_amount(minimum, currency)} for a {operation} in "
            f"{currency}; got {format_amount(value, currency)}",
        )
    return value


def _check_currency(value: object) -> str:
    if not isinstance(value, str):
        raise _fail(
            "currency", f"must be a lowercase ISO 4217 code such as 'usd'; got {_describe(value)}"
        )
    if value in EXPONENTS:
        return value
    if value.isascii() and value.lower() in EXPONENTS:
        raise _fail("currency", f"must be lowercase: use {value.lower()!r}")
    raise _fail(
        "currency",
        "must be a lowercase ISO 4217 code such as 'usd', 'eur' or 'jpy' (exactly three ASCII "
        "letters, no spaces)",
    )


def _check_scalar(value: object, field_name: str) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Provider parameters are 64-bit at most; refuse what no provider would accept.
        if abs(value) >= 2**63:
            raise _fail(field_name, "integer is out of range (it must fit in 64 bits)")
        return value
    if isinstance(value, str):
        return _check_text(value, field_name, max_len=_MAX_PARAM_VALUE)
    raise _fail(
        field_name,
        f"must be a string, an integer or a boolean (no floats, lists or objects); "
        f"got {type(value).__name__}",
    )


def _check_params(value: object) -> Mapping[str, Scalar]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise _fail("params", f"must be a mapping of names to values; got {type(value).__name__}")
    if len(value) > _MAX_PARAMS:
        raise _fail("params", f"must have at most {_MAX_PARAMS} entries; got {len(value)}")
    out: dict[str, Scalar] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise _fail(
                "params",
                "names must be lowercase identifiers of 1 to 40 characters, e.g. 'description'",
            )
        out[name] = _check_scalar(item, f"params.{name}")
    return MappingProxyType(out)


def _check_metadata(value: object) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise _fail("metadata", f"must be a mapping of strings; got {type(value).__name__}")
    if len(value) > _META_MAX_KEYS:
        raise _fail(
            "metadata",
            f"must have at most {_META_MAX_KEYS} keys (Stripe's limit); got {len(value)}",
        )
    out: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise _fail("metadata", "keys must be non-empty strings")
        _check_text(name, "metadata", max_len=_META_MAX_KEY)
        if "[" in name or "]" in name:
            raise _fail("metadata", "keys must not contain square brackets (Stripe refuses them)")
        if name in _RESERVED_METADATA:
            raise _fail("metadata", f"key {name!r} is reserved: payonce sets it itself")
        out[name] = _check_text(item, f"metadata.{name}", max_len=_META_MAX_VALUE)
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Intent:
    """An immutable, validated description of one money movement.

    Args:
        operation: one of ``charge``, ``capture``, ``refund``, ``cancel``, ``payout``,
            ``transfer``, ``subscription``.
        amount: a positive ``int`` in the currency's minor units (1000 is $10.00, 1000 is ¥1000).
        currency: a lowercase ISO 4217 code.
        customer: the provider's customer id (``cus_…``).
        payment_method: ``pm_…`` (PaymentIntents) or ``tok_…``/``src_…``/``card_…`` (Charges).
        destination: where a payout or transfer goes (``acct_…``, ``ba_…``, ``card_…``).
        target: the charge or PaymentIntent a capture, refund or cancel acts on (``ch_…``,
            ``pi_…``).
        reference: the business id (order, invoice, period, batch): 1 to 255 printable ASCII
            characters. It is key material; amount and currency are not, so a retry that changed
            the amount collides and fails instead of charging twice.
        sequence: 0 by default; 1, 2, … for further, legitimate movements of the same reference.
        params: further provider parameters (strings, integers, booleans).
        metadata: provider metadata (Stripe's limits: 50 keys, 40-character names, 500-character
            values).

    Raises:
        IntentError: naming the field and what to do about it.
    """

    operation: str
    amount: int
    currency: str
    customer: str | None = None
    payment_method: str | None = None
    destination: str | None = None
    target: str | None = None
    reference: str | None = None
    sequence: int = 0
    params: Mapping[str, Scalar] = field(default_factory=lambda: MappingProxyType({}))
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.operation, str) or self.operation not in OPERATIONS:
            raise _fail("operation", f"must be one of {', '.join(sorted(OPERATIONS))}")
        currency = _check_currency(self.currency)
        _check_amount(self.amount, self.operation, currency)
        for name in ("customer", "payment_method", "destination", "target"):
            value = getattr(self, name)
            if value is not None:
                _check_id(value, name)
        if self.reference is not None:
            _check_ascii_token(self.reference, "reference", max_len=_MAX_REFERENCE)
        if (
            isinstance(self.sequence, bool)
            or not isinstance(self.sequence, int)
            or not 0 <= self.sequence <= _MAX_SEQUENCE
        ):
            raise _fail(
                "sequence",
                f"must be an integer from 0 to {_MAX_SEQUENCE}; got {_describe(self.sequence)}",
            )
        object.__setattr__(self, "params", _check_params(self.params))
        object.__setattr__(self, "metadata", _check_metadata(self.metadata))
        self._check_shape()

    def _check_shape(self) -> None:
        op = self.operation
        if op in ("capture", "refund", "cancel") and self.target is None:
            raise _fail("target", f"a {op} needs target: the 'ch_…' or 'pi_…' it acts on")
        if op == "transfer" and self.destination is None:
            raise _fail("destination", "a transfer needs destination: the 'acct_…' to pay")
        if op == "subscription" and self.customer is None:
            raise _fail("customer", "a subscription needs customer: the 'cus_…' to bill")
        if op == "charge" and self.customer is None and self.payment_method is None:
            raise _fail("customer", "a charge needs a customer ('cus_…') or a payment_method")
        if self.reference is None and self.counterparty is None:
            raise _fail(
                "reference",
                "give a reference (order, invoice or batch id), or a counterparty (customer, "
                "payment_method, destination or target) so that retries can be recognised",
            )

    @property
    def counterparty(self) -> str | None:
        """Who the money moves with; key material for reference-less intents."""
        for value in (self.customer, self.payment_method, self.destination, self.target):
            if value is not None:
                return value
        return None

    def canonical(self) -> dict[str, Any]:
        """The intent as a plain dict for canonical JSON.

        Unset optional fields are left out, so that adding an optional field in a later version
        does not change the fingerprint of intents recorded before it.
        """
        out: dict[str, Any] = {
            "operation": self.operation,
            "amount": self.amount,
            "currency": self.currency,
            "sequence": self.sequence,
        }
        for name in ("customer", "payment_method", "destination", "target", "reference"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.params:
            out["params"] = dict(self.params)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out

    def __hash__(self) -> int:
        # The mappings are read-only proxies, which do not hash; the canonical form does.
        return hash(json.dumps(self.canonical(), sort_keys=True))

    def __repr__(self) -> str:
        # Raw customer ids and client references stay out of logs and tracebacks (I8).
        hidden = [
            f"{name}=<{len(value)} chars>"
            for name in ("customer", "payment_method", "destination", "target", "reference")
            if (value := getattr(self, name)) is not None
        ]
        shown = ", ".join(
            [f"{self.operation!r}", str(self.amount), repr(self.currency), *hidden]
            + ([f"sequence={self.sequence}"] if self.sequence else [])
        )
        return f"Intent({shown})"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Intent:
        """Build an intent from a plain mapping (a tool call, a JSON body, a stored record).

        Raises:
            IntentError: for unknown or missing fields, and for every invalid value.
        """
        if not isinstance(data, Mapping):
            raise _fail("intent", f"must be an object; got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise _fail(
                unknown[0], f"is not an intent field; the fields are {', '.join(sorted(known))}"
            )
        for required in ("operation", "amount", "currency"):
            if required not in data:
                raise _fail(required, "is required")
        return cls(**data)


def format_amount(amount: int, currency: str) -> str:
    """Render minor units for people: ``format_amount(1050, "usd") == "10.50 USD"``."""
    exponent = EXPONENTS[currency]
    if exponent == 0:
        return f"{amount} {currency.upper()}"
    whole, frac = divmod(amount, 10**exponent)
    return f"{whole}.{frac:0{exponent}d} {currency.upper()}"

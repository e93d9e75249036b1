"""The error tree (DESIGN §9): shape, pickling, messages that say what to do next, HTTP status."""

from __future__ import annotations

import copy
import json
import pickle
from datetime import timedelta
from typing import Any

import pytest

import payonce
import payonce.stores
import payonce.testing
from payonce import (
    ConfigurationError,
    ConflictError,
    GatewayError,
    GatewayRejectedError,
    GatewayUnavailableError,
    InProgressError,
    IntentError,
    KeyReuseError,
    LeaseLostError,
    LedgerCorruptedError,
    LedgerError,
    OutcomeUnknownError,
    PaymentDeclinedError,
    PayonceError,
    PolicyDeniedError,
    StoreClosedError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from payonce._keys import Keys

KEY = "k1_" + "ab" * 32

# class -> its parent in the tree of DESIGN §9
PARENT: dict[type[PayonceError], type[Exception]] = {
    PayonceError: Exception,
    ConfigurationError: PayonceError,
    StoreMissingError: ConfigurationError,
    IntentError: PayonceError,
    KeyReuseError: IntentError,
    PolicyDeniedError: PayonceError,
    ConflictError: PayonceError,
    InProgressError: ConflictError,
    LeaseLostError: ConflictError,
    StoreError: PayonceError,
    StoreUnavailableError: StoreError,
    StoreClosedError: StoreUnavailableError,
    GatewayError: PayonceError,
    PaymentDeclinedError: GatewayError,
    GatewayRejectedError: GatewayError,
    GatewayUnavailableError: GatewayError,
    OutcomeUnknownError: PayonceError,
    LedgerError: PayonceError,
    LedgerCorruptedError: LedgerError,
}

HTTP_STATUS: dict[type[PayonceError], int] = {
    PayonceError: 500,
    ConfigurationError: 500,
    StoreMissingError: 500,
    IntentError: 400,
    KeyReuseError: 422,
    PolicyDeniedError: 403,
    ConflictError: 409,
    InProgressError: 409,
    LeaseLostError: 409,
    StoreError: 503,
    StoreUnavailableError: 503,
    StoreClosedError: 503,
    GatewayError: 502,
    PaymentDeclinedError: 402,
    GatewayRejectedError: 422,
    GatewayUnavailableError: 503,
    OutcomeUnknownError: 202,
    LedgerError: 500,
    LedgerCorruptedError: 500,
}

# One instance of every class, with its structured fields, and the fields to compare.
EXAMPLES: dict[type[PayonceError], tuple[PayonceError, dict[str, Any]]] = {
    PayonceError: (PayonceError("something failed; retry", detail="x"), {"detail": "x"}),
    ConfigurationError: (
        ConfigurationError("secret must be bytes; pass secrets.token_bytes(32)"),
        {},
    ),
    StoreMissingError: (
        StoreMissingError("there are no payonce keys under the prefix; check it", option="prefix"),
        {"option": "prefix"},
    ),
    IntentError: (
        IntentError("amount: must be an integer", field="amount"),
        {"field": "amount"},
    ),
    KeyReuseError: (
        KeyReuseError(key=KEY, fields=("amount", "currency")),
        {"key": KEY, "fields": ("amount", "currency"), "field": "amount"},
    ),
    PolicyDeniedError: (
        PolicyDeniedError("over the daily limit; ask a person to approve", policy="daily"),
        {"policy": "daily"},
    ),
    ConflictError: (ConflictError("held elsewhere; retry", key=KEY), {"key": KEY}),
    InProgressError: (
        InProgressError(key=KEY, retry_after=timedelta(seconds=2.5)),
        {"key": KEY, "retry_after": timedelta(seconds=2.5)},
    ),
    LeaseLostError: (LeaseLostError(key=KEY, token=9), {"key": KEY, "token": 9}),
    StoreError: (StoreError("disk I/O error", operation="claim"), {"operation": "claim"}),
    StoreUnavailableError: (
        StoreUnavailableError("database is locked", operation="claim", attempts=3),
        {"operation": "claim", "attempts": 3},
    ),
    StoreClosedError: (
        StoreClosedError(store="PostgresStore", operation="complete"),
        {"store": "PostgresStore", "operation": "complete"},
    ),
    GatewayError: (
        GatewayError("gateway said no", key=KEY, code="x", replayed=False),
        {"key": KEY, "code": "x", "replayed": False},
    ),
    PaymentDeclinedError: (
        PaymentDeclinedError(key=KEY, code="card_declined", replayed=True),
        {"key": KEY, "code": "card_declined", "replayed": True},
    ),
    GatewayRejectedError: (
        GatewayRejectedError(key=KEY, code=None),
        {"key": KEY, "code": None, "replayed": False},
    ),
    GatewayUnavailableError: (
        GatewayUnavailableError(key=KEY, code="rate_limited", retry_after=timedelta(seconds=1.5)),
        {
            "key": KEY,
            "code": "rate_limited",
            "retry_after": timedelta(seconds=1.5),
            "replayed": False,
        },
    ),
    OutcomeUnknownError: (
        OutcomeUnknownError(key=KEY, reason="timeout after send"),
        {"key": KEY, "reason": "timeout after send"},
    ),
    LedgerError: (LedgerError("cannot read the ledger", operation="read"), {"operation": "read"}),
    LedgerCorruptedError: (
        LedgerCorruptedError(seq=12, key=KEY, reason="hash mismatch"),
        {"seq": 12, "key": KEY, "reason": "hash mismatch"},
    ),
}

ALL = list(EXAMPLES)
IDS = [cls.__name__ for cls in ALL]


def _tree(root: type[PayonceError]) -> set[type[PayonceError]]:
    out = {root}
    for sub in root.__subclasses__():
        out |= _tree(sub)
    return out


def test_examples_cover_the_whole_tree() -> None:
    # payonce, its stores and its testing package are imported: any error class defined anywhere
    # in them must be placed in the tree (PARENT), given a status and an example here.
    assert payonce.stores is not None
    assert payonce.testing is not None
    tree = _tree(PayonceError)
    assert tree == set(PARENT) == set(HTTP_STATUS) == set(EXAMPLES)


def test_every_error_is_exported() -> None:
    for cls in ALL:
        assert getattr(payonce, cls.__name__) is cls
        assert cls.__name__ in payonce.__all__


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_hierarchy(cls: type[PayonceError]) -> None:
    parent = PARENT[cls]
    assert issubclass(cls, parent)
    bases = [b for b in cls.__bases__ if issubclass(b, Exception)]
    assert bases[0] is parent


def test_notable_relations() -> None:
    assert issubclass(KeyReuseError, IntentError)
    assert issubclass(InProgressError, ConflictError)
    assert issubclass(LeaseLostError, ConflictError)
    assert issubclass(StoreUnavailableError, StoreError)
    assert issubclass(LedgerCorruptedError, LedgerError)
    # An unknown outcome is never a kind of failure a caller might read as "not charged".
    assert not issubclass(OutcomeUnknownError, GatewayError | IntentError | ConflictError)
    # Bad input is also a ValueError, for callers that catch the stdlib type.
    assert issubclass(IntentError, ValueError)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_http_status(cls: type[PayonceError]) -> None:
    assert cls.http_status == HTTP_STATUS[cls]
    assert EXAMPLES[cls][0].http_status == HTTP_STATUS[cls]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_pickles_with_attributes_and_message(cls: type[PayonceError], protocol: int) -> None:
    err, fields = EXAMPLES[cls]
    again = pickle.loads(pickle.dumps(err, protocol=protocol))  # noqa: S301 - our own bytes
    assert type(again) is cls
    assert str(again) == str(err)
    assert again.message == err.message
    assert again.args == err.args
    for name, value in fields.items():
        assert getattr(again, name) == value
        assert getattr(err, name) == value
    assert again.to_dict() == err.to_dict()
    assert again.http_status == cls.http_status


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_copies_keep_attributes(cls: type[PayonceError]) -> None:
    err, fields = EXAMPLES[cls]
    for again in (copy.copy(err), copy.deepcopy(err)):
        assert type(again) is cls
        assert again.message == err.message
        for name, value in fields.items():
            assert getattr(again, name) == value


def test_pickled_error_can_be_raised_and_caught_by_its_parent() -> None:
    err = pickle.loads(pickle.dumps(InProgressError(key=KEY, retry_after=timedelta(seconds=1))))  # noqa: S301
    with pytest.raises(ConflictError) as info:
        raise err
    assert info.value.retry_after == timedelta(seconds=1)


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_to_dict_is_json(cls: type[PayonceError]) -> None:
    err, _ = EXAMPLES[cls]
    data = err.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["error"] == cls.__name__
    assert data["message"] == err.message


def test_to_dict_converts_structured_values() -> None:
    assert InProgressError(key=KEY, retry_after=timedelta(seconds=2.5)).to_dict() == {
        "error": "InProgressError",
        "message": EXAMPLES[InProgressError][0].message,
        "key": KEY,
        "retry_after": 2.5,
    }
    data = KeyReuseError(key=KEY, fields=("amount", "currency")).to_dict()
    assert data["fields"] == ["amount", "currency"]
    assert data["field"] == "amount"
    assert GatewayUnavailableError(key=KEY, code=None).to_dict()["retry_after"] is None


# Phrases of the next step each message must name (DESIGN §9: "tells the caller what to do next").
NEXT_STEP: dict[type[PayonceError], tuple[str, ...]] = {
    KeyReuseError: ("exactly the recorded intent", "new reference", "next sequence"),
    InProgressError: ("retry this same intent in 2.5 s", "Do not send a new payment"),
    LeaseLostError: ("Retry the same intent", "do not send a new payment"),
    StoreUnavailableError: (
        "retry the same intent",
        "store is reachable",
        "run the same operation again if this was not a payment call",
    ),
    StoreClosedError: (
        "this PostgresStore was closed",
        "Open a new store",
        "retry the same intent",
        "run the same operation again if this was not a payment call",
    ),
    PaymentDeclinedError: ("replays this decline", "another payment method", "new intent"),
    GatewayRejectedError: ("replays this failure", "Fix the cause", "new intent"),
    GatewayUnavailableError: ("Retry the same intent in 1.5 s", "no money moved"),
    OutcomeUnknownError: ("money may have moved", "same intent, never with a new one"),
    LedgerCorruptedError: ("stop writing to this store", "investigate"),
}


@pytest.mark.parametrize("cls", list(NEXT_STEP), ids=[c.__name__ for c in NEXT_STEP])
def test_message_tells_what_to_do_next(cls: type[PayonceError]) -> None:
    err, fields = EXAMPLES[cls]
    for phrase in NEXT_STEP[cls]:
        assert phrase in err.message
    if "key" in fields:
        assert KEY in err.message  # the digest, so the caller can correlate it


def test_messages_of_free_form_classes_at_their_raise_sites() -> None:
    # ConfigurationError and IntentError carry the raise site's message; the pure layers' ones
    # say how to fix the input.
    with pytest.raises(ConfigurationError) as config:
        Keys(b"too short")
    assert "secrets.token_bytes(32)" in config.value.message
    with pytest.raises(IntentError) as intent:
        payonce.Intent("charge", 10.0, "usd", customer="cus_1")  # type: ignore[arg-type]
    assert "e.g. 1000 for $10.00" in intent.value.message


def test_gateway_unavailable_without_a_hint_says_later() -> None:
    message = GatewayUnavailableError(key=KEY, code=None).message
    assert "Retry the same intent later" in message
    assert "not executed" in message


def test_in_progress_never_shows_a_negative_wait() -> None:
    err = InProgressError(key=KEY, retry_after=timedelta(seconds=-3))
    assert "in 0.0 s" in err.message


def test_ledger_corrupted_without_location() -> None:
    err = LedgerCorruptedError(seq=None, key=None, reason="checkpoint missing")
    assert "at the ledger: checkpoint missing" in err.message
    assert pickle.loads(pickle.dumps(err)).seq is None  # noqa: S301

"""The pure transition functions as full tables (DESIGN §5, §6, §10).

``decide`` maps (record or none, fingerprint, now, resumable) to the guard's next action, and
``settle`` maps (outcome class, attempts left, resumable) to the write that records a call. Every
row of both tables is listed here, so a change of any decision shows up as one failing row.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from payonce import Record, Status
from payonce._decide import (
    Claim,
    Complete,
    MarkUnknown,
    OutcomeClass,
    Reject,
    Release,
    Replay,
    Retry,
    TakeOver,
    Unresolved,
    Wait,
    decide,
    differing_fields,
    settle,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FP = "a" * 64
OTHER_FP = "b" * 64
TOKEN = 7
LIVE = NOW + timedelta(seconds=30)
RECORDED_INTENT: dict[str, Any] = {
    "operation": "charge",
    "amount": 5000,
    "currency": "usd",
    "customer": "cus_123",
    "reference": "order-42",
    "sequence": 0,
}


def make_record(
    status: Status,
    *,
    fingerprint: str = FP,
    lease_expires_at: datetime | None = None,
    reason: str | None = None,
    outcome: str | None = None,
) -> Record:
    return Record(
        scope="tenant-a",
        key="k1_" + "0" * 64,
        status=status,
        fingerprint=fingerprint,
        intent='{"amount":5000}',
        provider_key="po1_" + "1" * 64,
        operation="charge",
        amount=5000,
        currency="usd",
        token=TOKEN,
        attempt=1,
        lease_expires_at=lease_expires_at,
        outcome=outcome,
        reason=reason,
        ledger_head="c" * 64,
        created_at=NOW - timedelta(minutes=1),
        updated_at=NOW - timedelta(seconds=10),
    )


# --- decide ---------------------------------------------------------------------------------

ALL_STATUSES = list(Status)
BOTH = [True, False]


@pytest.mark.parametrize("resumable", BOTH)
def test_no_record_claims(resumable: bool) -> None:
    assert decide(None, FP, NOW, resumable=resumable) == Claim()


_REJECT_ROWS = [
    # (given intent changes, expected differing fields)
    ({"amount": 5001}, ("amount",)),
    ({"currency": "eur"}, ("currency",)),
    ({"amount": 100, "currency": "gbp"}, ("amount", "currency")),
    ({"customer": "cus_999"}, ("customer",)),
    ({"metadata": {"note": "x"}}, ("metadata",)),
]


@pytest.mark.parametrize("status", ALL_STATUSES)
@pytest.mark.parametrize("resumable", BOTH)
@pytest.mark.parametrize(("changes", "expected"), _REJECT_ROWS)
def test_other_fingerprint_rejects_naming_the_fields(
    status: Status, resumable: bool, changes: dict[str, Any], expected: tuple[str, ...]
) -> None:
    record = make_record(
        status,
        fingerprint=OTHER_FP,
        lease_expires_at=LIVE if status is Status.CLAIMED else None,
        reason="timeout" if status is Status.UNKNOWN else None,
    )
    given = {**RECORDED_INTENT, **changes}
    action = decide(
        record, FP, NOW, resumable=resumable, recorded_intent=RECORDED_INTENT, intent=given
    )
    assert action == Reject(expected)


@pytest.mark.parametrize("status", ALL_STATUSES)
def test_other_fingerprint_without_intents_names_the_whole_intent(status: Status) -> None:
    record = make_record(status, fingerprint=OTHER_FP, lease_expires_at=LIVE)
    assert decide(record, FP, NOW, resumable=False) == Reject(("intent",))
    # Equal dicts but another fingerprint (e.g. a version change): still a reuse, never a replay.
    same = dict(RECORDED_INTENT)
    action = decide(record, FP, NOW, resumable=True, recorded_intent=RECORDED_INTENT, intent=same)
    assert action == Reject(("intent",))


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED])
@pytest.mark.parametrize("resumable", BOTH)
@pytest.mark.parametrize("lease_expires_at", [None, LIVE, NOW - timedelta(hours=1)])
def test_terminal_record_replays(
    status: Status, resumable: bool, lease_expires_at: datetime | None
) -> None:
    record = make_record(status, lease_expires_at=lease_expires_at, outcome='{"value":1}')
    assert decide(record, FP, NOW, resumable=resumable) == Replay(record)


@pytest.mark.parametrize(
    ("resumable", "reason", "expected"),
    [
        (True, "timeout", TakeOver(TOKEN, resend=True)),
        (True, None, TakeOver(TOKEN, resend=True)),
        (False, "timeout", Unresolved("timeout")),
        (False, None, Unresolved("the previous attempt's answer was lost")),
    ],
)
def test_unknown_record(resumable: bool, reason: str | None, expected: object) -> None:
    record = make_record(Status.UNKNOWN, reason=reason)
    assert decide(record, FP, NOW, resumable=resumable) == expected


@pytest.mark.parametrize("resumable", BOTH)
@pytest.mark.parametrize(
    "expires_at",
    [NOW + timedelta(microseconds=1), LIVE, NOW + timedelta(days=1)],
    ids=["1us-left", "30s-left", "1d-left"],
)
def test_claimed_live_lease_waits(resumable: bool, expires_at: datetime) -> None:
    record = make_record(Status.CLAIMED, lease_expires_at=expires_at)
    assert decide(record, FP, NOW, resumable=resumable) == Wait(until=expires_at)


@pytest.mark.parametrize("resumable", BOTH)
@pytest.mark.parametrize(
    "expires_at",
    [NOW, NOW - timedelta(microseconds=1), NOW - timedelta(days=1), None],
    ids=["exactly-now", "1us-ago", "1d-ago", "no-lease"],
)
def test_claimed_expired_lease_takes_over(resumable: bool, expires_at: datetime | None) -> None:
    record = make_record(Status.CLAIMED, lease_expires_at=expires_at)
    assert decide(record, FP, NOW, resumable=resumable) == TakeOver(TOKEN, resend=resumable)


def test_takeover_carries_the_records_token() -> None:
    record = replace(make_record(Status.CLAIMED, lease_expires_at=NOW), token=41)
    action = decide(record, FP, NOW, resumable=False)
    assert action == TakeOver(41, resend=False)


# --- differing_fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "given", "expected"),
    [
        ({}, {}, ()),
        (RECORDED_INTENT, dict(RECORDED_INTENT), ()),
        ({"a": 1, "b": 2}, {"a": 1, "b": 3}, ("b",)),
        ({"z": 1, "a": 1}, {"z": 2, "a": 2}, ("a", "z")),  # sorted
        ({"a": 1}, {"a": 1, "params": {"x": 1}}, ("params",)),  # added field
        ({"a": 1, "target": "ch_1"}, {"a": 1}, ("target",)),  # removed field
        ({"m": {"k": "v"}}, {"m": {"k": "w"}}, ("m",)),  # nested values compared whole
        ({"m": {"a": "1", "b": "2"}}, {"m": {"b": "2", "a": "1"}}, ()),  # order is no change
        ({"a": None}, {}, ()),  # an explicit None reads as absent
    ],
)
def test_differing_fields(
    recorded: dict[str, Any], given: dict[str, Any], expected: tuple[str, ...]
) -> None:
    assert differing_fields(recorded, given) == expected


# --- settle ---------------------------------------------------------------------------------

S = OutcomeClass
_RETRY = "retry"  # expands to Retry(retry_after) for whichever retry_after the row runs with

# Every OutcomeClass x attempts_left x resumable, written out.
_SETTLE_TABLE: list[tuple[OutcomeClass, bool, bool, object]] = [
    (S.SUCCESS, True, True, Complete(Status.SUCCEEDED)),
    (S.SUCCESS, True, False, Complete(Status.SUCCEEDED)),
    (S.SUCCESS, False, True, Complete(Status.SUCCEEDED)),
    (S.SUCCESS, False, False, Complete(Status.SUCCEEDED)),
    (S.DEFINITE, True, True, Complete(Status.FAILED)),
    (S.DEFINITE, True, False, Complete(Status.FAILED)),
    (S.DEFINITE, False, True, Complete(Status.FAILED)),
    (S.DEFINITE, False, False, Complete(Status.FAILED)),
    (S.NOT_EXECUTED, True, True, _RETRY),
    (S.NOT_EXECUTED, True, False, _RETRY),
    (S.NOT_EXECUTED, False, True, Release()),
    (S.NOT_EXECUTED, False, False, Release()),
    (S.IN_FLIGHT, True, True, _RETRY),
    (S.IN_FLIGHT, True, False, _RETRY),
    (S.IN_FLIGHT, False, True, MarkUnknown()),
    (S.IN_FLIGHT, False, False, MarkUnknown()),
    (S.UNKNOWN, True, True, _RETRY),
    (S.UNKNOWN, True, False, MarkUnknown()),
    (S.UNKNOWN, False, True, MarkUnknown()),
    (S.UNKNOWN, False, False, MarkUnknown()),
]


def test_settle_table_is_complete() -> None:
    rows = {(kind, left, res) for kind, left, res, _ in _SETTLE_TABLE}
    assert rows == {(k, a, r) for k in OutcomeClass for a in BOTH for r in BOTH}
    assert len(_SETTLE_TABLE) == len(rows)


@pytest.mark.parametrize(
    "retry_after", [None, timedelta(seconds=3)], ids=["no-hint", "retry-after-3s"]
)
@pytest.mark.parametrize(
    ("kind", "attempts_left", "resumable", "expected"),
    _SETTLE_TABLE,
    ids=[f"{k.value}-left={a}-resumable={r}" for k, a, r, _ in _SETTLE_TABLE],
)
def test_settle(
    kind: OutcomeClass,
    attempts_left: bool,
    resumable: bool,
    expected: object,
    retry_after: timedelta | None,
) -> None:
    if expected == _RETRY:
        expected = Retry(retry_after)
    action = settle(kind, attempts_left=attempts_left, resumable=resumable, retry_after=retry_after)
    assert action == expected


@pytest.mark.parametrize("kind", [S.NOT_EXECUTED, S.IN_FLIGHT, S.UNKNOWN])
def test_settle_passes_retry_after_through(kind: OutcomeClass) -> None:
    hint = timedelta(milliseconds=1500)
    action = settle(kind, attempts_left=True, resumable=True, retry_after=hint)
    assert isinstance(action, Retry)
    assert action.delay is hint


@pytest.mark.parametrize("attempts_left", BOTH)
@pytest.mark.parametrize("resumable", BOTH)
def test_an_unknown_result_is_never_released(attempts_left: bool, resumable: bool) -> None:
    # A call that may have moved money is never reported as "not charged" (I3, I4).
    for kind in (S.UNKNOWN, S.IN_FLIGHT):
        action = settle(kind, attempts_left=attempts_left, resumable=resumable)
        assert not isinstance(action, Release | Complete)


@pytest.mark.parametrize("resumable", BOTH)
def test_not_executed_after_a_takeover_is_never_released(resumable: bool) -> None:
    # Attempt 2+ not being sent says nothing about attempt 1, which may have moved money.
    action = settle(S.NOT_EXECUTED, attempts_left=False, resumable=resumable, earlier_attempts=True)
    assert action == MarkUnknown()
    retry = settle(S.NOT_EXECUTED, attempts_left=True, resumable=resumable, earlier_attempts=True)
    assert isinstance(retry, Retry)

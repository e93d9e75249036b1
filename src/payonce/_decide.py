"""The pure transition function (L1; DESIGN §5, §6, §10).

``decide`` maps what the store holds for a key to the guard's next action; ``settle`` maps the
class of a call's result to the write that records it. Both are pure: the twin guards (sync and
async) do the I/O around them, so the decisions are written, and tested, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from payonce._model import OutcomeClass, Record, Status

__all__ = [
    "Action",
    "Claim",
    "Complete",
    "MarkUnknown",
    "OutcomeClass",
    "Reject",
    "Release",
    "Replay",
    "Retry",
    "Settle",
    "TakeOver",
    "Unresolved",
    "Wait",
    "decide",
    "differing_fields",
    "settle",
]


@dataclass(frozen=True, slots=True)
class Claim:
    """No record: claim the key."""


@dataclass(frozen=True, slots=True)
class Replay:
    """A terminal record with the same fingerprint: return its outcome, call nothing."""

    record: Record


@dataclass(frozen=True, slots=True)
class Reject:
    """The key holds another intent: raise KeyReuseError naming ``fields``."""

    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """A live lease elsewhere: wait (bounded) until ``until``, then look again."""

    until: datetime


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Take the record over from ``token``.

    ``resend`` is True when the call may be made again with the same provider key (the caller
    declared it resumable, or the provider deduplicates on the key inside its window);
    otherwise the takeover looks the call up at the provider if it can, and records UNKNOWN if
    that does not settle it.
    """

    token: int
    resend: bool


@dataclass(frozen=True, slots=True)
class Unresolved:
    """UNKNOWN and not resumable: raise OutcomeUnknownError; the Reconciler resolves it."""

    reason: str


Action = Claim | Replay | Reject | Wait | TakeOver | Unresolved


def decide(
    record: Record | None,
    fingerprint: str,
    now: datetime,
    *,
    resumable: bool,
    recorded_intent: dict[str, Any] | None = None,
    intent: dict[str, Any] | None = None,
    can_look_up: bool = False,
) -> Action:
    """The guard's next action for a key, given what the store holds (DESIGN §5).

    Args:
        record: the stored record, or None.
        fingerprint: the fingerprint of the intent being run.
        now: the injected clock's time.
        resumable: whether a call may be made again with the same provider key after a
            takeover (a provider that deduplicates on it, inside its window).
        recorded_intent / intent: the canonical intents, to name the differing fields of a
            reuse; optional (without them the reuse names the whole intent).
        can_look_up: whether the guard can ask the provider what became of a lost call (a
            gateway's ``lookup``): then an UNKNOWN record that may not be resent is taken over
            to look it up, instead of being reported unresolved at once.
    """
    if record is None:
        return Claim()
    if record.fingerprint != fingerprint:
        fields = differing_fields(recorded_intent or {}, intent or {})
        return Reject(fields or ("intent",))
    if record.status.terminal:
        return Replay(record)
    if record.status is Status.UNKNOWN:
        if resumable or can_look_up:
            return TakeOver(record.token, resend=resumable)
        return Unresolved(record.reason or "the previous attempt's answer was lost")
    # CLAIMED
    expires_at = record.lease_expires_at
    if expires_at is not None and now < expires_at:
        return Wait(expires_at)
    return TakeOver(record.token, resend=resumable)


def differing_fields(recorded: dict[str, Any], given: dict[str, Any]) -> tuple[str, ...]:
    """Names of the fields whose values differ between two canonical intents."""
    names = sorted(set(recorded) | set(given))
    return tuple(name for name in names if recorded.get(name) != given.get(name))


@dataclass(frozen=True, slots=True)
class Complete:
    """Record a terminal outcome."""

    status: Status


@dataclass(frozen=True, slots=True)
class Retry:
    """Call again with the same provider key after ``delay`` (a hint; the guard adds jitter)."""

    delay: timedelta | None


@dataclass(frozen=True, slots=True)
class Release:
    """Provably not executed and out of attempts: delete the claim; the key is free again."""


@dataclass(frozen=True, slots=True)
class MarkUnknown:
    """Money may have moved: record UNKNOWN; never report "not charged"."""


Settle = Complete | Retry | Release | MarkUnknown


def settle(
    kind: OutcomeClass,
    *,
    attempts_left: bool,
    resumable: bool,
    retry_after: timedelta | None = None,
    earlier_attempts: bool = False,
) -> Settle:
    """The write that records a call's result (DESIGN §6).

    Args:
        kind: the class of the result.
        attempts_left: whether the retry budget (attempts and deadline) allows another call.
        resumable: whether an unknown result may be resolved by calling again with the same
            provider key (the provider deduplicates on it).
        retry_after: the provider's hint, if it gave one.
        earlier_attempts: whether an earlier attempt of this record may have been sent (the
            record was taken over). Then "this attempt was not sent" says nothing about the
            earlier one, so the record must not be released.
    """
    if kind is OutcomeClass.SUCCESS:
        return Complete(Status.SUCCEEDED)
    if kind is OutcomeClass.DEFINITE:
        return Complete(Status.FAILED)
    if kind is OutcomeClass.NOT_EXECUTED:
        if attempts_left:
            return Retry(retry_after)
        return MarkUnknown() if earlier_attempts else Release()
    if kind is OutcomeClass.IN_FLIGHT:
        # The provider is still executing this very key: retrying is safe, giving up is not
        # "not charged".
        return Retry(retry_after) if attempts_left else MarkUnknown()
    if resumable and attempts_left:
        return Retry(retry_after)
    return MarkUnknown()

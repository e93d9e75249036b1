"""Record transitions as pure functions (L1), shared by every store.

A store reads the current record inside its transaction (or script), asks one of these for the
next record and its ledger entry, and writes both in that same transaction. The rules of DESIGN §5
(fencing, takeover eligibility, what each entry says) live here once, not once per backend.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Final

from payonce._bodies import storable_text
from payonce._chain import GENESIS, make_entry
from payonce._errors import LeaseLostError
from payonce._keys import canonical_flat
from payonce._model import Entry, Event, NewRecord, Record, Status

__all__ = [
    "ORIGINAL_METADATA",
    "claim_transition",
    "compensation_reference",
    "complete_transition",
    "fence",
    "purge_transition",
    "release_transition",
    "takeover_eligible",
    "takeover_transition",
    "unknown_transition",
]

_COMPLETE_EVENTS = {Status.SUCCEEDED: Event.SUCCEEDED, Status.FAILED: Event.FAILED}
# The metadata name by which guard.compensate links a compensation to the payment it undoes,
# and the same name as it appears in an intent's canonical JSON.
ORIGINAL_METADATA: Final = "payonce_original"
_ORIGINAL_QUOTED: Final = f'"{ORIGINAL_METADATA}"'
_COMPENSATIONS: Final = frozenset({"refund", "cancel"})  # what guard.compensate makes


def compensation_reference(key: str) -> str:
    """The reference of the intents that compensate the payment recorded at ``key``."""
    return f"compensate:{key}"


def _link(intent_json: str, detail: dict[str, object]) -> dict[str, object]:
    """``detail`` plus ``{"compensates": <original key>}`` for a compensation's intent, so that
    every entry of a compensation links it to the payment it undoes in the ledger itself (the
    record does, through its intent).

    Only an intent shaped as ``guard.compensate`` builds it gets the link: a refund or cancel
    whose reference names the same key as its metadata. The metadata alone is anyone's to
    write, and would otherwise let any intent claim in the ledger to undo any payment.
    """
    # The substring test keeps the JSON parse off every other claim's path.
    if _ORIGINAL_QUOTED not in intent_json:
        return detail
    intent = json.loads(intent_json)
    original = intent.get("metadata", {}).get(ORIGINAL_METADATA)
    if (
        not isinstance(original, str)
        or intent.get("operation") not in _COMPENSATIONS
        or intent.get("reference") != compensation_reference(original)
    ):
        return detail
    return {**detail, "compensates": original}


def _entry(
    record: Record | NewRecord,
    *,
    seq: int,
    now: datetime,
    event: Event,
    status_from: Status | None,
    status_to: Status | None,
    token: int,
    attempt: int,
    detail: dict[str, object],
    prev_hash: str,
) -> Entry:
    return make_entry(
        seq=seq,
        at=now,
        scope=record.scope,
        key=record.key,
        event=event,
        status_from=status_from,
        status_to=status_to,
        token=token,
        attempt=attempt,
        amount=record.amount,
        currency=record.currency,
        detail=canonical_flat(detail),
        prev_hash=prev_hash,
    )


def claim_transition(
    new: NewRecord,
    *,
    now: datetime,
    lease_for: timedelta,
    seq: int,
    prev_hash: str | None,
    prev_token: int = 0,
) -> tuple[Record, Entry]:
    """The CLAIMED record a winning claim writes, and its ``claimed`` entry.

    ``prev_hash`` and ``prev_token`` come from the key's newest ledger entry (a key released or
    purged earlier keeps its chain), or None and 0 for a key never seen. The token continues
    from the previous life of the key, so a zombie of that life still holds a stale token and
    its late write is refused: fencing tokens only ever grow per key.
    """
    token = prev_token + 1
    entry = _entry(
        new,
        seq=seq,
        now=now,
        event=Event.CLAIMED,
        status_from=None,
        status_to=Status.CLAIMED,
        token=token,
        attempt=1,
        detail=_link(
            new.intent,
            {
                "fingerprint": new.fingerprint,
                "operation": new.operation,
                "provider_key": new.provider_key,
            },
        ),
        prev_hash=prev_hash or GENESIS,
    )
    record = Record(
        scope=new.scope,
        key=new.key,
        status=Status.CLAIMED,
        fingerprint=new.fingerprint,
        intent=new.intent,
        provider_key=new.provider_key,
        operation=new.operation,
        amount=new.amount,
        currency=new.currency,
        token=token,
        attempt=1,
        lease_expires_at=now + lease_for,
        outcome=None,
        reason=None,
        ledger_head=entry.hash,
        created_at=now,
        updated_at=now,
        family=new.family,
        generation=new.generation,
    )
    return record, entry


def fence(record: Record | None, *, key: str, token: int) -> Record:
    """The record, if it is CLAIMED under ``token``; otherwise ``LeaseLostError``."""
    if record is None or record.token != token or record.status is not Status.CLAIMED:
        raise LeaseLostError(key=key, token=token)
    return record


def takeover_eligible(record: Record, *, token: int, now: datetime) -> bool:
    """True when ``record`` still carries ``token`` and is UNKNOWN or CLAIMED past its lease."""
    if record.token != token:
        return False
    if record.status is Status.UNKNOWN:
        return True
    return (
        record.status is Status.CLAIMED
        and record.lease_expires_at is not None
        and record.lease_expires_at <= now
    )


def takeover_transition(
    record: Record, *, now: datetime, lease_for: timedelta, seq: int, at_least: int = 0
) -> tuple[Record, Entry]:
    """The record after a takeover (token + 1, attempt + 1, new lease) and its entry.

    The caller has checked ``takeover_eligible``. ``at_least`` raises the new token further: a
    store that knows of a lease in flight whose record it lost (Redis after a failover) must
    not hand that lease's token out again.
    """
    token, attempt = max(record.token + 1, at_least), record.attempt + 1
    entry = _entry(
        record,
        seq=seq,
        now=now,
        event=Event.TAKEN_OVER,
        status_from=record.status,
        status_to=Status.CLAIMED,
        token=token,
        attempt=attempt,
        detail=_link(record.intent, {"previous_token": record.token}),
        prev_hash=record.ledger_head,
    )
    updated = replace(
        record,
        status=Status.CLAIMED,
        token=token,
        attempt=attempt,
        lease_expires_at=now + lease_for,
        reason=None,  # the ledger keeps why it was UNKNOWN; the record says why it is now
        updated_at=now,
        ledger_head=entry.hash,
    )
    return updated, entry


def complete_transition(
    record: Record | None,
    *,
    key: str,
    token: int,
    status: Status,
    outcome: str,
    now: datetime,
    seq: int,
) -> tuple[Record, Entry]:
    """CLAIMED → SUCCEEDED/FAILED, fenced on ``token``."""
    current = fence(record, key=key, token=token)
    if status not in _COMPLETE_EVENTS:
        raise ValueError(f"complete() records SUCCEEDED or FAILED, not {status}")

    entry = _entry(
        current,
        seq=seq,
        now=now,
        event=_COMPLETE_EVENTS[status],
        status_from=Status.CLAIMED,
        status_to=status,
        token=token,
        attempt=current.attempt,
        detail=_link(
            current.intent,
            {"outcome_sha256": hashlib.sha256(outcome.encode("utf-8")).hexdigest()},
        ),
        prev_hash=current.ledger_head,
    )
    # Built field by field rather than with ``dataclasses.replace``: this is every payment's
    # path, and replace() costs twice a plain construction.
    updated = Record(
        scope=current.scope,
        key=current.key,
        status=status,
        fingerprint=current.fingerprint,
        intent=current.intent,
        provider_key=current.provider_key,
        operation=current.operation,
        amount=current.amount,
        currency=current.currency,
        token=current.token,
        attempt=current.attempt,
        lease_expires_at=None,
        outcome=outcome,
        reason=current.reason,
        ledger_head=entry.hash,
        created_at=current.created_at,
        updated_at=now,
        family=current.family,
        generation=current.generation,
    )
    return updated, entry


def unknown_transition(
    record: Record | None, *, key: str, token: int, reason: str, now: datetime, seq: int
) -> tuple[Record, Entry]:
    """CLAIMED → UNKNOWN, fenced on ``token``."""
    current = fence(record, key=key, token=token)
    reason = storable_text(reason)
    entry = _entry(
        current,
        seq=seq,
        now=now,
        event=Event.MARKED_UNKNOWN,
        status_from=Status.CLAIMED,
        status_to=Status.UNKNOWN,
        token=token,
        attempt=current.attempt,
        detail=_link(current.intent, {"reason": reason}),
        prev_hash=current.ledger_head,
    )
    updated = replace(
        current,
        status=Status.UNKNOWN,
        reason=reason,
        lease_expires_at=None,
        updated_at=now,
        ledger_head=entry.hash,
    )
    return updated, entry


def release_transition(
    record: Record | None, *, key: str, token: int, reason: str, now: datetime, seq: int
) -> Entry:
    """CLAIMED → (none), fenced on ``token``: the entry the release appends."""
    current = fence(record, key=key, token=token)
    reason = storable_text(reason)
    return _entry(
        current,
        seq=seq,
        now=now,
        event=Event.RELEASED,
        status_from=Status.CLAIMED,
        status_to=None,
        token=token,
        attempt=current.attempt,
        detail=_link(current.intent, {"reason": reason}),
        prev_hash=current.ledger_head,
    )


def purge_transition(record: Record, *, now: datetime, seq: int) -> Entry:
    """SUCCEEDED/FAILED → (none) past retention: the entry the purge appends."""
    if not record.status.terminal:
        raise ValueError("only SUCCEEDED and FAILED records are purged")
    return _entry(
        record,
        seq=seq,
        now=now,
        event=Event.PURGED,
        status_from=record.status,
        status_to=None,
        token=record.token,
        attempt=record.attempt,
        detail=_link(record.intent, {}),
        prev_hash=record.ledger_head,
    )

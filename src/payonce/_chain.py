"""Ledger hashing (L1: pure). Stores build entries with these; ``verify_ledger`` recomputes them.

Each entry's hash is SHA-256 over the canonical JSON of all its fields, including its sequence
number and the hash of the previous entry of the same (scope, key). Chains are per key, so
concurrent writers never serialise on one global head; sealed checkpoints over sequence ranges
catch the deletion of whole chains and the truncation of the tail.

The hashes are unkeyed on purpose: an auditor can verify a ledger without the deployment secret.
An attacker who can rewrite the whole file can also recompute every hash, which is why the newest
checkpoint hash can be anchored outside the store (``verify_ledger(store, anchor=…)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Final

from payonce._keys import canonical_json
from payonce._model import Checkpoint, Entry, Event, Status

__all__ = [
    "GENESIS",
    "checkpoint_digest",
    "checkpoint_hash",
    "entry_hash",
    "from_micros",
    "make_checkpoint",
    "make_entry",
    "to_micros",
]

GENESIS: Final = "0" * 64
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(at: datetime) -> int:
    """Microseconds since the epoch: the one time encoding inside hashes and SQL columns."""
    if at.tzinfo is None:
        raise ValueError("timestamps must be aware UTC datetimes")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The inverse of ``to_micros``."""
    return _EPOCH + timedelta(microseconds=value)


def entry_hash(
    *,
    seq: int,
    at: datetime,
    scope: str,
    key: str,
    event: Event,
    status_from: Status | None,
    status_to: Status | None,
    token: int,
    attempt: int,
    amount: int,
    currency: str,
    detail: str,
    prev_hash: str,
) -> str:
    """SHA-256 of an entry's fields and its predecessor's hash."""
    material = [
        "payonce/ledger/v1",
        seq,
        to_micros(at),
        scope,
        key,
        str(event),
        None if status_from is None else str(status_from),
        None if status_to is None else str(status_to),
        token,
        attempt,
        amount,
        currency,
        detail,
        prev_hash,
    ]
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()


def make_entry(
    *,
    seq: int,
    at: datetime,
    scope: str,
    key: str,
    event: Event,
    status_from: Status | None,
    status_to: Status | None,
    token: int,
    attempt: int,
    amount: int,
    currency: str,
    detail: str,
    prev_hash: str,
) -> Entry:
    """Build an entry with its hash; stores call this inside the transition's transaction."""
    digest = entry_hash(
        seq=seq,
        at=at,
        scope=scope,
        key=key,
        event=event,
        status_from=status_from,
        status_to=status_to,
        token=token,
        attempt=attempt,
        amount=amount,
        currency=currency,
        detail=detail,
        prev_hash=prev_hash,
    )
    return Entry(
        seq=seq,
        at=at,
        scope=scope,
        key=key,
        event=event,
        status_from=status_from,
        status_to=status_to,
        token=token,
        attempt=attempt,
        amount=amount,
        currency=currency,
        detail=detail,
        prev_hash=prev_hash,
        hash=digest,
    )


def checkpoint_digest(hashes: Iterable[str]) -> str:
    """SHA-256 over entry hashes in sequence order."""
    h = hashlib.sha256()
    for item in hashes:
        h.update(item.encode("ascii"))
    return h.hexdigest()


def checkpoint_hash(
    *,
    number: int,
    at: datetime,
    first_seq: int,
    last_seq: int,
    count: int,
    digest: str,
    prev_hash: str,
) -> str:
    """SHA-256 of a checkpoint's fields and its predecessor's hash."""
    material = [
        "payonce/checkpoint/v1",
        number,
        to_micros(at),
        first_seq,
        last_seq,
        count,
        digest,
        prev_hash,
    ]
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()


def make_checkpoint(
    *,
    number: int,
    at: datetime,
    first_seq: int,
    last_seq: int,
    count: int,
    digest: str,
    prev_hash: str,
) -> Checkpoint:
    """Build a sealed checkpoint with its hash."""
    return Checkpoint(
        number=number,
        at=at,
        first_seq=first_seq,
        last_seq=last_seq,
        count=count,
        digest=digest,
        prev_hash=prev_hash,
        hash=checkpoint_hash(
            number=number,
            at=at,
            first_seq=first_seq,
            last_seq=last_seq,
            count=count,
            digest=digest,
            prev_hash=prev_hash,
        ),
    )

"""Ledger hashing (L1: pure). Stores build entries with these; ``verify_ledger`` recomputes them.

Each entry's hash is SHA-256 over the canonical JSON of its fields and the hash of the previous
entry of the same (scope, key). Chains are per key, so concurrent writers never serialise on one
global head: an edited, deleted, inserted or reordered entry of a key breaks that key's chain.
The global sequence number is storage order only and is not hashed, so a store without one
atomic global counter (Redis Cluster) still computes hashes before it writes; sealed checkpoints
over sequence ranges fix the order and count of everything they cover, which catches whole
chains deleted and a truncated tail.

The hashes are unkeyed on purpose: an auditor can verify a ledger without the deployment secret.
An attacker who can rewrite the whole file can also recompute every hash, which is why the newest
checkpoint hash can be anchored outside the store (``verify_ledger(store, anchor=…)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Final

from payonce._keys import canonical_flat
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


def entry_hash(entry: Entry) -> str:
    """SHA-256 of an entry's fields and its predecessor's hash; ``seq`` and ``hash`` excluded."""
    material = [
        "payonce/ledger/v1",
        to_micros(entry.at),
        entry.scope,
        entry.key,
        str(entry.event),
        None if entry.status_from is None else str(entry.status_from),
        None if entry.status_to is None else str(entry.status_to),
        entry.token,
        entry.attempt,
        entry.amount,
        entry.currency,
        entry.detail,
        entry.prev_hash,
    ]
    return hashlib.sha256(canonical_flat(material).encode("utf-8")).hexdigest()


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
    unsealed = Entry(
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
        hash="",
    )
    # Sealing the instance just built, before anything else can see it, is the one write to a
    # frozen value payonce allows itself: it spares a second 14-field construction per entry.
    object.__setattr__(unsealed, "hash", entry_hash(unsealed))
    return unsealed


def checkpoint_digest(hashes: Iterable[str]) -> str:
    """SHA-256 over entry hashes in sequence order."""
    h = hashlib.sha256()
    for item in hashes:
        h.update(item.encode("ascii"))
    return h.hexdigest()


def checkpoint_hash(checkpoint: Checkpoint) -> str:
    """SHA-256 of a checkpoint's fields and its predecessor's hash (its own ``hash`` excluded)."""
    material = [
        "payonce/checkpoint/v1",
        checkpoint.number,
        to_micros(checkpoint.at),
        checkpoint.first_seq,
        checkpoint.last_seq,
        checkpoint.count,
        checkpoint.digest,
        checkpoint.prev_hash,
    ]
    return hashlib.sha256(canonical_flat(material).encode("utf-8")).hexdigest()


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
    unsealed = Checkpoint(
        number=number,
        at=at,
        first_seq=first_seq,
        last_seq=last_seq,
        count=count,
        digest=digest,
        prev_hash=prev_hash,
        hash="",
    )
    return replace(unsealed, hash=checkpoint_hash(unsealed))

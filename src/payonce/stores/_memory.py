"""The in-memory store (L4): the reference semantics of the store contract.

One process, one lock. Every other backend must behave as this one does under
``payonce.testing.StoreContract``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from payonce._errors import ConflictError, LeaseLostError
from payonce._model import Checkpoint, Claimed, Entry, NewRecord, Record, ReplayView, Status
from payonce._transitions import (
    claim_transition,
    complete_transition,
    purge_transition,
    release_transition,
    takeover_eligible,
    takeover_transition,
    unknown_transition,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Records and ledger in a dict and a list; for tests and single-process tools.

    Nothing survives the process. Thread-safe.
    """

    gapless_ledger = True  # seq is the list position + 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], Record] = {}
        self._ledger: list[Entry] = []
        # The newest entry of every key ever seen; outlives released and purged records.
        self._chain_heads: dict[tuple[str, str], Entry] = {}
        self._checkpoints: list[Checkpoint] = []

    def __repr__(self) -> str:
        return f"MemoryStore(records={len(self._records)}, entries={len(self._ledger)})"

    def _append(self, entry: Entry) -> None:
        self._ledger.append(entry)
        self._chain_heads[(entry.scope, entry.key)] = entry

    def _seq(self) -> int:
        return len(self._ledger) + 1

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        ident = (new.scope, new.key)
        with self._lock:
            existing = self._records.get(ident)
            if existing is not None:
                return Claimed(existing, None)
            head = self._chain_heads.get(ident)
            record, entry = claim_transition(
                new,
                now=now,
                lease_for=lease_for,
                seq=self._seq(),
                prev_hash=head.hash if head else None,
                prev_token=head.token if head else 0,
            )
            self._append(entry)
            self._records[ident] = record
            return Claimed(record, record.lease)

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        with self._lock:
            current = self._records.get((scope, key))
            if current is None:
                raise LeaseLostError(key=key, token=token)
            if not takeover_eligible(current, token=token, now=now):
                return Claimed(current, None)
            record, entry = takeover_transition(
                current, now=now, lease_for=lease_for, seq=self._seq()
            )
            self._append(entry)
            self._records[(scope, key)] = record
            return Claimed(record, record.lease)

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        with self._lock:
            record, entry = complete_transition(
                self._records.get((scope, key)),
                key=key,
                token=token,
                status=status,
                outcome=outcome,
                now=now,
                seq=self._seq(),
            )
            self._append(entry)
            self._records[(scope, key)] = record
            return record

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        with self._lock:
            record, entry = unknown_transition(
                self._records.get((scope, key)),
                key=key,
                token=token,
                reason=reason,
                now=now,
                seq=self._seq(),
            )
            self._append(entry)
            self._records[(scope, key)] = record
            return record

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        with self._lock:
            entry = release_transition(
                self._records.get((scope, key)),
                key=key,
                token=token,
                reason=reason,
                now=now,
                seq=self._seq(),
            )
            self._append(entry)
            del self._records[(scope, key)]

    def get(self, scope: str, key: str) -> Record | None:
        with self._lock:
            return self._records.get((scope, key))

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        record = self.get(scope, key)
        if record is None:
            return None
        return ReplayView(
            key=record.key,
            status=record.status,
            fingerprint=record.fingerprint,
            outcome=record.outcome,
            attempt=record.attempt,
            provider_key=record.provider_key,
        )

    def newest(self, scope: str, family: str) -> Record | None:
        with self._lock:
            found = [r for r in self._records.values() if r.scope == scope and r.family == family]
        return max(found, key=lambda r: r.generation, default=None)

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        with self._lock:
            due = [r for r in self._records.values() if _needs_recovery(r, now)]
        due.sort(key=lambda r: (r.created_at, r.scope, r.key))
        return due[:limit]

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        cutoff = now - retention
        with self._lock:
            due = sorted(
                (r for r in self._records.values() if r.status.terminal and r.updated_at <= cutoff),
                key=lambda r: (r.updated_at, r.scope, r.key),
            )[:limit]
            for record in due:
                self._append(purge_transition(record, now=now, seq=self._seq()))
                del self._records[(record.scope, record.key)]
            return len(due)

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        with self._lock:
            return [e for e in self._ledger[max(after, 0) :] if e.seq > after][:limit]

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        with self._lock:
            idents = sorted(self._records)
            rows = [(s, k, self._records[(s, k)].ledger_head) for s, k in idents]
        if after is not None:
            rows = [row for row in rows if (row[0], row[1]) > after]
        return rows[:limit]

    def checkpoints(self) -> Sequence[Checkpoint]:
        with self._lock:
            return list(self._checkpoints)

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            if checkpoint.number != len(self._checkpoints) + 1:
                raise ConflictError(
                    f"checkpoint {checkpoint.number} was sealed concurrently by another worker; "
                    "read the checkpoints again and seal from the newest one.",
                    number=checkpoint.number,
                )
            self._checkpoints.append(checkpoint)

    def close(self) -> None:
        """Nothing to release."""

    # Test helper: lets tamper tests edit the ledger as an attacker with memory access would.
    def _replace_entry(self, index: int, entry: Entry | None) -> None:
        with self._lock:
            if entry is None:
                del self._ledger[index]
            else:
                self._ledger[index] = entry


def _needs_recovery(record: Record, now: datetime) -> bool:
    if record.status is Status.UNKNOWN:
        return True
    return (
        record.status is Status.CLAIMED
        and record.lease_expires_at is not None
        and record.lease_expires_at <= now
    )

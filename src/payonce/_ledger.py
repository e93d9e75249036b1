"""The ledger's read side (L3): verification and sealed checkpoints (DESIGN §8)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from payonce._chain import GENESIS, checkpoint_digest, checkpoint_hash, entry_hash, make_checkpoint
from payonce._errors import LedgerCorruptedError
from payonce._model import Checkpoint, Entry
from payonce._protocols import Store

__all__ = ["LedgerReport", "seal_checkpoint", "verify_ledger"]

_BATCH = 5000


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """What ``verify_ledger`` checked.

    Attributes:
        entries: how many entries verified.
        keys: how many distinct (scope, key) chains.
        records: how many live records had their newest entry checked.
        checkpoints: how many sealed checkpoints verified.
        last_checkpoint: the newest checkpoint, whose ``hash`` is worth anchoring outside.
        last_seq: the sequence number of the newest entry (0 for an empty ledger).
    """

    entries: int
    keys: int
    records: int
    checkpoints: int
    last_checkpoint: Checkpoint | None
    last_seq: int


def _verify_checkpoints(checkpoints: list[Checkpoint], anchor: str | None) -> None:
    prev_hash, next_first = GENESIS, 1
    for number, cp in enumerate(checkpoints, start=1):
        problem = None
        if cp.number != number:
            problem = f"checkpoint {cp.number} is out of order (expected {number})"
        elif cp.prev_hash != prev_hash:
            problem = f"checkpoint {number} does not chain to checkpoint {number - 1}"
        elif cp.first_seq != next_first or cp.last_seq < cp.first_seq:
            problem = f"checkpoint {number} covers a range that does not follow the previous one"
        elif cp.hash != checkpoint_hash(cp):
            problem = f"checkpoint {number}'s hash does not match its fields"
        if problem is not None:
            raise LedgerCorruptedError(seq=cp.last_seq, key=None, reason=problem)
        prev_hash, next_first = cp.hash, cp.last_seq + 1
    if anchor is not None and all(cp.hash != anchor for cp in checkpoints):
        raise LedgerCorruptedError(
            seq=None,
            key=None,
            reason="the anchored checkpoint hash is not in the store (the ledger was truncated "
            "or rewritten)",
        )


class _RangeCheck:
    """Accumulates entry hashes per checkpoint range and compares count and digest."""

    def __init__(self, checkpoints: list[Checkpoint]) -> None:
        self._pending = list(reversed(checkpoints))
        self._hashes: list[str] = []

    def add(self, entry: Entry) -> None:
        while self._pending and entry.seq > self._pending[-1].last_seq:
            self._close()
        if self._pending and entry.seq >= self._pending[-1].first_seq:
            self._hashes.append(entry.hash)

    def finish(self) -> None:
        while self._pending:
            self._close()

    def _close(self) -> None:
        cp = self._pending.pop()
        hashes, self._hashes = self._hashes, []
        if len(hashes) != cp.count or checkpoint_digest(hashes) != cp.digest:
            raise LedgerCorruptedError(
                seq=cp.last_seq,
                key=None,
                reason=f"the entries of checkpoint {cp.number} (seq {cp.first_seq}-{cp.last_seq}) "
                f"differ from what was sealed: {len(hashes)} present, {cp.count} sealed; entries "
                "were deleted, inserted or rewritten",
            )


def verify_ledger(store: Store, *, anchor: str | None = None) -> LedgerReport:
    """Verify every entry, chain, checkpoint and record head of ``store``'s ledger.

    Args:
        store: the store to verify.
        anchor: a checkpoint hash kept outside the store; verification fails if it is missing.

    Returns:
        A LedgerReport with what was checked.

    Raises:
        LedgerCorruptedError: naming the first bad entry (by ``seq`` and key) and what is wrong.
    """
    checkpoints = list(store.checkpoints())
    _verify_checkpoints(checkpoints, anchor)
    ranges = _RangeCheck(checkpoints)
    chain_heads: dict[tuple[str, str], str] = {}
    count, last_seq = 0, 0
    # Stores that hand out sequence numbers without gaps (under their write lock) let a gap
    # reveal a deleted entry even when no record or checkpoint points at it.
    gapless = bool(getattr(store, "gapless_ledger", False))
    while True:
        batch = store.entries(after=last_seq, limit=_BATCH)
        if not batch:
            break
        for entry in batch:
            ident = (entry.scope, entry.key)
            if gapless and entry.seq > last_seq + 1:
                raise LedgerCorruptedError(
                    seq=last_seq + 1,
                    key=None,
                    reason=f"the entry is missing (the next present entry is {entry.seq}); "
                    "entries were deleted",
                )
            problem = None
            if entry.seq <= last_seq:
                problem = "its sequence number is out of order"
            elif entry_hash(entry) != entry.hash:
                problem = "its hash does not match its fields (the entry was edited)"
            elif entry.prev_hash != chain_heads.get(ident, GENESIS):
                problem = (
                    "it does not chain to the previous entry of its key (an entry was deleted, "
                    "inserted or reordered)"
                )
            if problem is not None:
                raise LedgerCorruptedError(seq=entry.seq, key=entry.key, reason=problem)
            ranges.add(entry)
            chain_heads[ident] = entry.hash
            count, last_seq = count + 1, entry.seq
    ranges.finish()
    records = _verify_heads(store, chain_heads)
    return LedgerReport(
        entries=count,
        keys=len(chain_heads),
        records=records,
        checkpoints=len(checkpoints),
        last_checkpoint=checkpoints[-1] if checkpoints else None,
        last_seq=last_seq,
    )


def _verify_heads(store: Store, chain_heads: dict[tuple[str, str], str]) -> int:
    after: tuple[str, str] | None = None
    records = 0
    while True:
        rows = store.heads(after=after, limit=_BATCH)
        if not rows:
            return records
        for scope, key, head in rows:
            if chain_heads.get((scope, key)) != head:
                raise LedgerCorruptedError(
                    seq=None,
                    key=key,
                    reason="the record's newest ledger entry is missing or differs (the tail of "
                    "its chain was deleted or rewritten)",
                )
            records += 1
        after = (rows[-1][0], rows[-1][1])


def _horizon(store: Store) -> int | None:
    """The store's sealing horizon, or None for a store without one (see ``Store``)."""
    ledger_horizon = getattr(store, "ledger_horizon", None)
    return None if ledger_horizon is None else int(ledger_horizon())


def seal_checkpoint(store: Store, *, now: datetime) -> Checkpoint | None:
    """Seal the entries written since the newest checkpoint; None when there are none.

    Call it periodically (the Reconciler loop or a cron job) and keep the returned hash outside
    the store to anchor later verifications. It may run while transitions are being written:
    on a store with a ``ledger_horizon`` (PostgreSQL, whose sequence numbers are drawn before
    commit) it seals only the entries at or below the horizon, so a range never closes over an
    entry that is still to commit; the entries past it wait for the next seal.

    Raises:
        ConflictError: another worker sealed the same checkpoint number concurrently, or (on
            PostgreSQL) the ledger stayed busy with writers past the store's lock timeout;
            nothing was sealed: seal again later.
    """
    horizon = _horizon(store)
    existing = list(store.checkpoints())
    last = existing[-1] if existing else None
    first_seq = last.last_seq + 1 if last else 1
    hashes: list[str] = []
    after, last_seq = first_seq - 1, first_seq - 1
    while True:
        # Sequence numbers are distinct, so at most ``horizon - after`` entries lie at or below
        # the horizon: reading that many never reads far past it.
        limit = _BATCH if horizon is None else min(_BATCH, horizon - after)
        batch = store.entries(after=after, limit=limit) if limit > 0 else []
        if horizon is not None:
            batch = [e for e in batch if e.seq <= horizon]
        if not batch:
            break
        hashes.extend(e.hash for e in batch)
        after = last_seq = batch[-1].seq
    if not hashes:
        return None
    checkpoint = make_checkpoint(
        number=len(existing) + 1,
        at=now,
        first_seq=first_seq,
        last_seq=last_seq,
        count=len(hashes),
        digest=checkpoint_digest(hashes),
        prev_hash=last.hash if last else GENESIS,
    )
    store.append_checkpoint(checkpoint)
    return checkpoint

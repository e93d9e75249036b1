"""The ledger's read side (L3): verification and sealed checkpoints (DESIGN §8).

Verification and sealing are each written once, as a flow that yields the store calls it needs
(``_StoreCall``) and receives their answers; ``verify_ledger`` and ``seal_checkpoint`` drive a
flow on a ``Store``, ``averify_ledger`` and ``aseal_checkpoint`` await it on an ``AsyncStore``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

from payonce._chain import GENESIS, checkpoint_digest, checkpoint_hash, entry_hash, make_checkpoint
from payonce._errors import (
    ConfigurationError,
    LedgerCorruptedError,
    StoreError,
    StoreUnavailableError,
)
from payonce._model import Checkpoint, Entry
from payonce._protocols import AsyncStore, Store, has_ledger_horizon

__all__ = [
    "LedgerReport",
    "aseal_checkpoint",
    "averify_ledger",
    "seal_checkpoint",
    "verify_ledger",
]

_BATCH = 5000
_T = TypeVar("_T")
_log = logging.getLogger("payonce.ledger")
_NO_HORIZON = (
    "payonce was refused the ledger's horizon (the role may only read the ledger): verifying "
    "up to the newest entry instead, which is exact only while nothing writes to the ledger; "
    "verify as a role allowed the horizon for an exact verification beside writers"
)


@dataclass(frozen=True, slots=True)
class _StoreCall:
    """Effect: ``store.<name>(**kwargs)``; the driver sends back the answer."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_Flow: TypeAlias = Generator[_StoreCall, Any, _T]


def _drive(store: Store, flow: _Flow[_T]) -> _T:
    answer: Any = None
    error: StoreError | None = None
    while True:
        try:
            call = flow.send(answer) if error is None else flow.throw(error)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        answer, error = None, None
        try:
            answer = getattr(store, call.name)(**call.kwargs)
        except StoreError as exc:  # handed to the flow, which raises what it does not handle
            error = exc


async def _adrive(store: AsyncStore, flow: _Flow[_T]) -> _T:
    answer: Any = None
    error: StoreError | None = None
    while True:
        try:
            call = flow.send(answer) if error is None else flow.throw(error)
        except StopIteration as stop:
            result: _T = stop.value
            return result
        answer, error = None, None
        try:
            answer = await getattr(store, call.name)(**call.kwargs)
        except StoreError as exc:  # handed to the flow, which raises what it does not handle
            error = exc


def _sync_store(store: Store, function: str) -> Store:
    if inspect.iscoroutinefunction(getattr(store, "entries", None)):
        raise ConfigurationError(
            f"{function} takes a sync Store; for an AsyncStore await a{function}(store, ...)",
            option="store",
        )
    if not isinstance(store, Store):
        raise ConfigurationError(
            f"{function} needs a Store such as SQLiteStore; got {type(store).__name__}",
            option="store",
        )
    return store


def _async_store(store: AsyncStore | Store, function: str) -> AsyncStore:
    """An AsyncStore as given, or a sync Store run in a worker thread (as AsyncGuard does)."""
    from payonce.stores._threaded import ThreadedAsyncStore  # noqa: PLC0415 - L4 adapter

    if inspect.iscoroutinefunction(getattr(store, "entries", None)):
        return store  # type: ignore[return-value]
    if isinstance(store, Store):
        return ThreadedAsyncStore(store)
    raise ConfigurationError(
        f"{function} needs an AsyncStore or a Store; got {type(store).__name__}", option="store"
    )


def _gapless(store: AsyncStore | Store) -> bool:
    """Whether the store hands out seqs without gaps (under its write lock), so that a gap
    reveals a deleted entry even when no record or checkpoint points at it."""
    return bool(getattr(store, "gapless_ledger", False))


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


def _checked_anchor(anchor: object) -> str | None:
    """``anchor`` in the form checkpoint hashes take (lower-case hex), or a ConfigurationError: a
    mistyped anchor is a wrong argument, not a sign that the ledger was tampered with."""
    if anchor is None:
        return None
    if isinstance(anchor, str):
        digits = anchor.strip().lower()
        if len(digits) == 64 and all(c in "0123456789abcdef" for c in digits):
            return digits
    raise ConfigurationError(
        "the anchor is not a checkpoint hash (64 hexadecimal digits, as `payonce ledger seal` "
        "and LedgerReport.last_checkpoint.hash give it); nothing was verified. Pass the hash "
        "you kept outside the store, whole, or verify without an anchor.",
        option="anchor",
    )


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

    It may run while transitions are being written. On a store with a ``ledger_horizon``
    (PostgreSQL, Redis), whose sequence numbers can become visible out of order, it reads the
    entries at or below the horizon, so an entry still to commit is never taken for a deleted
    one. A record whose newest entry lies past what was read (written meanwhile) is checked
    against the ledger read on from there: its head must be an entry of its key read then (the
    newest, or one written while verification ran; the next verification reads that one in its
    first pass and holds the record to its key's newest entry). A role that may not take the
    horizon (an auditor that may only read) reads to the newest entry instead, with a logged
    warning: exact while nothing writes.

    Args:
        store: the store to verify.
        anchor: a checkpoint hash kept outside the store; verification fails if it is missing.

    Returns:
        A LedgerReport with what was checked.

    Raises:
        LedgerCorruptedError: naming the first bad entry (by ``seq`` and key) and what is wrong.
        ConflictError: (PostgreSQL) the ledger stayed busy with writers past the store's lock
            timeout while the horizon was read; verify again later.
        ConfigurationError: ``store`` is an AsyncStore (use ``averify_ledger``), or ``anchor``
            is not a checkpoint hash (64 hexadecimal digits).
    """
    anchor = _checked_anchor(anchor)
    target = _sync_store(store, "verify_ledger")
    flow = _verify_flow(anchor, gapless=_gapless(target), horizon=has_ledger_horizon(target))
    return _drive(target, flow)


async def averify_ledger(store: AsyncStore | Store, *, anchor: str | None = None) -> LedgerReport:
    """``verify_ledger`` for an ``AsyncStore`` (a sync ``Store`` runs in a worker thread).

    Raises:
        LedgerCorruptedError: naming the first bad entry (by ``seq`` and key) and what is wrong.
        ConflictError: as ``verify_ledger``; verify again later.
        ConfigurationError: ``store`` is not a store, or ``anchor`` is not a checkpoint hash.
    """
    anchor = _checked_anchor(anchor)
    target = _async_store(store, "averify_ledger")
    flow = _verify_flow(anchor, gapless=_gapless(target), horizon=has_ledger_horizon(target))
    return await _adrive(target, flow)


class _Walk:
    """The entries read so far, each checked as it comes (hash, chain, order, gaps)."""

    def __init__(self, checkpoints: list[Checkpoint], *, gapless: bool) -> None:
        self.ranges = _RangeCheck(checkpoints)
        self.gapless = gapless
        self.chain_heads: dict[tuple[str, str], str] = {}
        self.count, self.last_seq = 0, 0
        # Hashes of entries read after the records' heads were (catching up): a head among
        # its key's is a real entry the record has moved past since.
        self.later: dict[tuple[str, str], set[str]] = {}
        self.catching_up = False

    def read(self, top: int | None, *, refused: bool = False) -> _Flow[None]:
        """Read and check the entries after ``last_seq``, up to ``top`` (None: to the end).

        ``refused``: the store refused its horizon, so this reads to the end without judging
        gaps. A store with a horizon (a single Redis server) is read across buckets without one
        snapshot, so past the horizon a later entry may be read before an earlier one commits.
        """
        gaps = self.gapless and not refused
        while True:
            limit = _BATCH if top is None else min(_BATCH, top - self.last_seq)
            if limit <= 0:
                return
            batch = yield _StoreCall("entries", {"after": self.last_seq, "limit": limit})
            if top is not None:
                batch = [e for e in batch if e.seq <= top]
            if not batch:
                break
            for entry in batch:
                self._check(entry, gaps=gaps)
        if gaps and top is not None and self.last_seq < top:
            # Every seq up to the horizon was written, and none is ever taken back.
            raise LedgerCorruptedError(
                seq=self.last_seq + 1,
                key=None,
                reason=f"the entry is missing (the store has numbered entries up to {top}); "
                "entries were deleted",
            )

    def _check(self, entry: Entry, *, gaps: bool) -> None:
        ident = (entry.scope, entry.key)
        if gaps and entry.seq > self.last_seq + 1:
            raise LedgerCorruptedError(
                seq=self.last_seq + 1,
                key=None,
                reason=f"the entry is missing (the next present entry is {entry.seq}); "
                "entries were deleted",
            )
        problem = None
        if entry.seq <= self.last_seq:
            problem = "its sequence number is out of order"
        elif entry_hash(entry) != entry.hash:
            problem = "its hash does not match its fields (the entry was edited)"
        elif entry.prev_hash != self.chain_heads.get(ident, GENESIS):
            problem = (
                "it does not chain to the previous entry of its key (an entry was deleted, "
                "inserted or reordered)"
            )
        if problem is not None:
            raise LedgerCorruptedError(seq=entry.seq, key=entry.key, reason=problem)
        self.ranges.add(entry)
        self.chain_heads[ident] = entry.hash
        if self.catching_up:
            self.later.setdefault(ident, set()).add(entry.hash)
        self.count, self.last_seq = self.count + 1, entry.seq

    def explains(self, ident: tuple[str, str], head: str) -> bool:
        """Whether ``head`` is the newest entry read of its key, or one read since."""
        return self.chain_heads.get(ident) == head or head in self.later.get(ident, ())


def _top(horizon: bool, checkpoints: list[Checkpoint]) -> _Flow[tuple[int | None, bool]]:
    """Where reading stops: the store's horizon, None (the end) for a store without one or
    that refuses it; and whether it refused. A sealed range is final already, so never below
    its end."""
    if not horizon:
        return None, False
    try:
        # A store may answer None for "no horizon" (ThreadedAsyncStore around one without).
        answer = yield _StoreCall("ledger_horizon")
    except StoreUnavailableError:
        raise  # an outage or a timeout, perhaps behind busy writers: verify again later
    except StoreError:
        # Refused for good: the horizon takes a lock (PostgreSQL) or raises a watermark (Redis
        # Cluster), which a role that may only read (an auditor) may not do. It reads to the
        # end instead, exact on a ledger no one writes meanwhile.
        _log.warning(_NO_HORIZON)
        return None, True
    if answer is None:
        return None, False
    return max(int(answer), checkpoints[-1].last_seq if checkpoints else 0), False


def _verify_flow(anchor: str | None, *, gapless: bool, horizon: bool) -> _Flow[LedgerReport]:
    checkpoints = list((yield _StoreCall("checkpoints")))
    _verify_checkpoints(checkpoints, anchor)
    walk = _Walk(checkpoints, gapless=gapless)
    top, refused = yield from _top(horizon, checkpoints)
    yield from walk.read(top, refused=refused)
    walk.ranges.finish()
    records, moved = yield from _verify_heads(walk.chain_heads)
    if moved:
        # Records written while the ledger was read: their heads lie past it. Each head was
        # committed with its entry before the heads were read, so the ledger read on, up to a
        # horizon read now, holds it; a head it does not hold was deleted or rewritten.
        walk.catching_up = True
        top, refused = yield from _top(horizon, checkpoints)
        yield from walk.read(top, refused=refused)
        for ident, head in moved.items():
            if not walk.explains(ident, head):
                raise LedgerCorruptedError(
                    seq=None,
                    key=ident[1],
                    reason="the record's newest ledger entry is missing or differs (the tail "
                    "of its chain was deleted or rewritten)",
                )
    return LedgerReport(
        entries=walk.count,
        keys=len(walk.chain_heads),
        records=records,
        checkpoints=len(checkpoints),
        last_checkpoint=checkpoints[-1] if checkpoints else None,
        last_seq=walk.last_seq,
    )


def _verify_heads(
    chain_heads: dict[tuple[str, str], str],
) -> _Flow[tuple[int, dict[tuple[str, str], str]]]:
    """Every record's head against its chain: (records checked, {(scope, key): head} of the
    records whose head is not the newest entry read of their key)."""
    after: tuple[str, str] | None = None
    records = 0
    moved: dict[tuple[str, str], str] = {}
    while True:
        rows = yield _StoreCall("heads", {"after": after, "limit": _BATCH})
        if not rows:
            return records, moved
        for scope, key, head in rows:
            if chain_heads.get((scope, key)) != head:
                moved[(scope, key)] = head
            records += 1
        after = (rows[-1][0], rows[-1][1])


def seal_checkpoint(store: Store, *, now: datetime) -> Checkpoint | None:
    """Seal the entries written since the newest checkpoint; None when there are none.

    Call it periodically (from cron: ``payonce ledger seal``) and keep the returned hash outside
    the store to anchor later verifications. It may run while transitions are being written:
    on a store with a ``ledger_horizon`` (PostgreSQL, whose sequence numbers are drawn before
    commit) it seals only the entries at or below the horizon, so a range never closes over an
    entry that is still to commit; the entries past it wait for the next seal.

    Raises:
        ConflictError: another worker sealed the same checkpoint number concurrently, or (on
            PostgreSQL) the ledger stayed busy with writers past the store's lock timeout;
            nothing was sealed: seal again later.
        ConfigurationError: ``store`` is an AsyncStore (use ``aseal_checkpoint``).
    """
    target = _sync_store(store, "seal_checkpoint")
    return _drive(target, _seal_flow(now, horizon=has_ledger_horizon(target)))


async def aseal_checkpoint(store: AsyncStore | Store, *, now: datetime) -> Checkpoint | None:
    """``seal_checkpoint`` for an ``AsyncStore`` (a sync ``Store`` runs in a worker thread).

    Raises:
        ConflictError: as ``seal_checkpoint``; nothing was sealed: seal again later.
        ConfigurationError: ``store`` is not a store.
    """
    target = _async_store(store, "aseal_checkpoint")
    return await _adrive(target, _seal_flow(now, horizon=has_ledger_horizon(target)))


def _seal_flow(now: datetime, *, horizon: bool) -> _Flow[Checkpoint | None]:
    # A store may answer None for "no horizon" (ThreadedAsyncStore around a store without one).
    answer = (yield _StoreCall("ledger_horizon")) if horizon else None
    top = None if answer is None else int(answer)
    existing = list((yield _StoreCall("checkpoints")))
    last = existing[-1] if existing else None
    first_seq = last.last_seq + 1 if last else 1
    hashes: list[str] = []
    after, last_seq = first_seq - 1, first_seq - 1
    while True:
        # Sequence numbers are distinct, so at most ``top - after`` entries lie at or below
        # the horizon: reading that many never reads far past it.
        limit = _BATCH if top is None else min(_BATCH, top - after)
        batch = (yield _StoreCall("entries", {"after": after, "limit": limit})) if limit > 0 else []
        if top is not None:
            batch = [e for e in batch if e.seq <= top]
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
    yield _StoreCall("append_checkpoint", {"checkpoint": checkpoint})
    return checkpoint

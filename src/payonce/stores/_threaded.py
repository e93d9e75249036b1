"""Run a sync store behind the async contract (L4).

Only SQLite and the memory store go through a thread (DESIGN §10); the production stores have
native async twins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

from payonce._model import Checkpoint, Claimed, Entry, NewRecord, Record, ReplayView, Status
from payonce._protocols import Store

__all__ = ["ThreadedAsyncStore"]


class ThreadedAsyncStore:
    """An ``AsyncStore`` that runs each call of a sync ``Store`` in a worker thread."""

    __slots__ = ("store",)

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def read_before_claim(self) -> bool:
        """The wrapped store's order, asked per call (it may adapt to the workload)."""
        return bool(getattr(self.store, "read_before_claim", False))

    @property
    def gapless_ledger(self) -> bool:
        """The wrapped store's promise of seqs without gaps (``verify_ledger`` relies on it)."""
        return bool(getattr(self.store, "gapless_ledger", False))

    def __repr__(self) -> str:
        return f"ThreadedAsyncStore({self.store!r})"

    async def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        return await asyncio.to_thread(self.store.claim, new, now=now, lease_for=lease_for)

    async def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        return await asyncio.to_thread(
            self.store.takeover, scope, key, token=token, now=now, lease_for=lease_for
        )

    async def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        return await asyncio.to_thread(
            self.store.complete, scope, key, token=token, status=status, outcome=outcome, now=now
        )

    async def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        return await asyncio.to_thread(
            self.store.mark_unknown, scope, key, token=token, reason=reason, now=now
        )

    async def release(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> None:
        await asyncio.to_thread(self.store.release, scope, key, token=token, reason=reason, now=now)

    async def get(self, scope: str, key: str) -> Record | None:
        return await asyncio.to_thread(self.store.get, scope, key)

    async def replay_view(self, scope: str, key: str) -> ReplayView | None:
        return await asyncio.to_thread(self.store.replay_view, scope, key)

    async def newest(self, scope: str, family: str) -> Record | None:
        return await asyncio.to_thread(self.store.newest, scope, family)

    async def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        return await asyncio.to_thread(self.store.scan, now=now, limit=limit)

    async def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        return await asyncio.to_thread(self.store.purge, now=now, retention=retention, limit=limit)

    async def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        return await asyncio.to_thread(self.store.entries, after=after, limit=limit)

    async def heads(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> Sequence[tuple[str, str, str]]:
        return await asyncio.to_thread(self.store.heads, after=after, limit=limit)

    async def checkpoints(self) -> Sequence[Checkpoint]:
        return await asyncio.to_thread(self.store.checkpoints)

    async def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        await asyncio.to_thread(self.store.append_checkpoint, checkpoint)

    async def ledger_horizon(self) -> int | None:
        """The wrapped store's sealing horizon, or None when it has none (see ``Store``)."""
        horizon = getattr(self.store, "ledger_horizon", None)
        return None if horizon is None else int(await asyncio.to_thread(horizon))

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)

"""Test support that ships with payonce: a manual clock, crash points, the store contract.

``payonce.testing`` is not imported by ``import payonce``; it may import pytest lazily.
"""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from payonce.testing._contract import AsyncStoreContract, StoreContract

__all__ = ["AsyncStoreContract", "CrashAt", "ManualClock", "StoreContract"]


def __getattr__(name: str) -> object:
    # The contract imports pytest: load it on first use, so that a crash-test worker that only
    # needs CrashAt or ManualClock runs without pytest.
    if name in {"AsyncStoreContract", "StoreContract"}:
        from payonce.testing import _contract  # noqa: PLC0415

        return getattr(_contract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instead of blocking.

    Thread-safe, so racing threads in one test share one timeline.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            raise ValueError("start must be an aware UTC datetime")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, duration: timedelta) -> datetime:
        """Move time forward (or back, with a negative duration, to test skew)."""
        with self._lock:
            self._now += duration
            return self._now

    def sleep(self, duration: timedelta) -> None:
        self.advance(max(duration, timedelta(0)))

    async def asleep(self, duration: timedelta) -> None:
        self.advance(max(duration, timedelta(0)))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()})"


class CrashAt:
    """A fault injector that kills the process at one named fault point (DESIGN §11).

    Pass it as ``Guard(..., faults=CrashAt("after_claim"))`` in a worker subprocess; the process
    exits with status 137 there, as under SIGKILL, without running cleanup.
    """

    def __init__(self, point: str, *, exit_code: int = 137) -> None:
        self.point = point
        self.exit_code = exit_code

    def __call__(self, point: str) -> None:
        if point == self.point:
            os._exit(self.exit_code)

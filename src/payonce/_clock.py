"""The system clock (L2): the one place payonce reads the wall clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

__all__ = ["SystemClock"]


class SystemClock:
    """Wall-clock time in UTC; sleeping really sleeps."""

    __slots__ = ()

    def now(self) -> datetime:
        """The current time, aware UTC."""
        return datetime.now(UTC)

    def sleep(self, duration: timedelta) -> None:
        """Block for ``duration``."""
        time.sleep(max(duration.total_seconds(), 0.0))

    async def asleep(self, duration: timedelta) -> None:
        """Await for ``duration``."""
        await asyncio.sleep(max(duration.total_seconds(), 0.0))

    def __repr__(self) -> str:
        return "SystemClock()"

"""Retry policy for gateway calls (L1: pure; the guard sleeps on its injected clock).

Written by hand rather than with a retry library: the guard's calls run inside its effect
flow, which yields sleeps to a sync or async driver and decides from a classified result
(DESIGN §6), not from an exception around a function, which is what stamina and tenacity wrap.
What is left is one formula, below.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from payonce._errors import ConfigurationError


class Uniform(Protocol):
    """A source of uniform floats in [0, 1), such as ``random.Random``; the guard owns it."""

    def random(self) -> float:
        """The next draw."""
        ...


__all__ = ["RetryPolicy", "Uniform"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a call is made again with the same provider key.

    Only the classes that allow it are retried: not executed (refused connection, 429), in
    flight at the provider (409), and unknown when the provider deduplicates on the key.

    Attributes:
        max_attempts: calls in all, the first included (1: never retry).
        base_delay: the first backoff; it doubles per retry up to ``max_delay``.
        max_delay: the largest backoff before jitter.
        deadline: no retry starts after this much time has passed since the first call.
    """

    max_attempts: int = 3
    base_delay: timedelta = timedelta(milliseconds=100)
    max_delay: timedelta = timedelta(seconds=2)
    deadline: timedelta = timedelta(seconds=10)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError("RetryPolicy.max_attempts must be an integer of 1 or more")
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be 1 or more (1: no retry)")
        for name in ("base_delay", "max_delay", "deadline"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value < timedelta(0):
                raise ConfigurationError(f"RetryPolicy.{name} must be a timedelta of zero or more")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One call, no retry."""
        return cls(max_attempts=1)

    def allows(self, calls: int, elapsed: timedelta) -> bool:
        """Whether another call may follow ``calls`` calls made over ``elapsed``."""
        return calls < self.max_attempts and elapsed < self.deadline

    def delay(self, calls: int, retry_after: timedelta | None, rng: Uniform) -> timedelta:
        """The wait before call ``calls + 1``: full jitter over the exponential backoff, never
        shorter than the provider's ``Retry-After``."""
        ceiling: timedelta = min(self.max_delay, self.base_delay * (2 ** max(calls - 1, 0)))
        jittered: timedelta = ceiling * rng.random()  # full jitter spreads retrying callers
        if retry_after is not None:
            return max(jittered, retry_after)
        return jittered

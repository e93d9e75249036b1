"""Whether the guard reads a record before it claims: fixed, or adapted to the workload.

A shared store can answer a retry of a finished intent two ways. Reading first costs one small
read for a replay and that read plus the claim for a fresh call; claiming first costs only the
claim for a fresh call and a heavier claim round trip for a replay. Which is cheaper depends on
how often a call finds its intent already finished, so the adaptive order keeps a moving share
of the calls that did (about the last 16, weighted) and reads first while that share is at
least one half: a replay storm (an agent looping on a tool call) is served by reads, a steady
stream of new payments by claims. Only intents with a reference count: one without reads its
family first in every order. The order is an optimisation only: the claim, never the read,
decides who calls, so every order gives the same answers (tests/conformance/test_read_first.py).
"""

from __future__ import annotations

from typing import Final

from payonce._errors import ConfigurationError
from payonce._model import Claimed, ReplayView

__all__ = ["ReadFirst"]

# Weight of the newest call in the moving share: about the last 16 calls count. A switch of
# workload turns the order after about 11 calls.
_WEIGHT: Final = 1 / 16
_THRESHOLD: Final = 0.5


class ReadFirst:
    """The read-before-claim order of one store.

    Args:
        mode: True to always read first, False to always claim first, None to adapt.

    Races between threads updating the share are harmless: it is a heuristic, and a stale
    value only costs one round trip.
    """

    __slots__ = ("_mode", "_share")

    def __init__(self, mode: bool | None) -> None:
        if mode is not None and not isinstance(mode, bool):
            raise ConfigurationError(
                f"read_first={mode!r}: pass None to adapt to the workload (the default), True to "
                "always read before claiming, or False to always claim first.",
                option="read_first",
            )
        self._mode = mode
        self._share = 1.0  # start by reading: the cheap answer for the common retry storm

    @property
    def now(self) -> bool:
        """Whether the next call should read before it claims."""
        if self._mode is not None:
            return self._mode
        return self._share >= _THRESHOLD

    def saw(self, *, finished: bool) -> None:
        """Record whether a call found its record already finished (a read would have sufficed)."""
        if self._mode is None:
            self._share += ((1.0 if finished else 0.0) - self._share) * _WEIGHT

    def claimed(self, claimed: Claimed) -> None:
        """Record what a claim found, when the store is claiming first.

        While reading first, a claim follows a read that missed, and that read was counted. The
        order is judged from the share as it is now, not as the call began: at a switch one
        call may count twice, which only nudges the heuristic.

        An intent without a reference (its record has a family) is not counted: it reads its
        family's newest record before it claims whatever the order, so it says nothing about
        which order is cheaper, and its read cannot tell a retry from a new generation (a
        finished newest record past the window starts one).
        """
        if claimed.record.family is None and self._share < _THRESHOLD:
            self.saw(finished=claimed.lease is None and claimed.record.status.terminal)

    def viewed(self, view: ReplayView | None) -> None:
        """Record what a read before a claim found."""
        self.saw(finished=view is not None and view.status.terminal)

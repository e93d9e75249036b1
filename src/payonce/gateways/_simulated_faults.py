"""Fault injection of the simulated provider (L4): the fault kinds, and which one a call gets.

``SimulatedGateway`` keeps the scripted queues (``script`` fills them) and its lock; this module
says what each fault kind is (DESIGN §11), which queued fault a call takes (``next_fault``), and
how a fault is drawn from the configured rates when none is queued (``FaultDraw``). Where each
fault acts in a call is told in ``SimulatedGateway``'s docstring. Stdlib only.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from payonce._errors import ConfigurationError

__all__ = ["FAULTS", "Fault", "FaultDraw", "check_rates", "next_fault"]

#: Every fault kind. ``lookup`` applies to ``lookup`` calls, every other kind to ``execute``.
FAULTS: Final = frozenset(
    {
        "before_send",
        "after_send",
        "status_500",
        "status_429",
        "in_progress_409",
        "decline",
        "slow",
        "lookup",
    }
)

_RANDOM_DECLINES: Final = ("card_declined", "insufficient_funds")


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault; ``kind`` is one of ``FAULTS``. See ``SimulatedGateway`` for effects.

    Attributes:
        kind: the fault.
        code: for ``decline``, the decline code (default ``card_declined``).
        duration: for ``slow``, how long the call takes on the gateway's sleep.
        retry_after: for ``status_429`` and ``in_progress_409``, the provider's hint.
        moved: for ``status_500``, whether the provider moved the money before failing
            (None: the gateway's ``movement_on_500``).
    """

    kind: str
    code: str | None = None
    duration: timedelta = timedelta(seconds=30)
    retry_after: timedelta = timedelta(seconds=1)
    moved: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise ConfigurationError(
                f"unknown fault {self.kind!r}; use one of {', '.join(sorted(FAULTS))}"
            )


def check_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """``rates`` validated and sorted by fault kind.

    Raises:
        ConfigurationError: an unknown fault kind, a rate outside [0, 1], or execute fault
            rates adding up to more than 1.
    """
    for kind, rate in rates.items():
        if kind not in FAULTS:
            raise ConfigurationError(f"unknown fault {kind!r} in rates")
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"rate of {kind!r} must be between 0 and 1")
    if sum(rate for kind, rate in rates.items() if kind != "lookup") > 1.0:
        raise ConfigurationError("the execute fault rates must add up to at most 1")
    return dict(sorted(rates.items()))  # sorted: the draw must not depend on dict order


def next_fault(
    queue: deque[Fault | None], by_key: dict[str, deque[Fault | None]], pk: str
) -> tuple[bool, Fault | None]:
    """Take the next scripted fault for provider key ``pk``: (whether one was queued, it).

    The queue of ``pk`` comes first, then the general ``queue``; a queued ``None`` is a call
    without a fault, still scripted (so nothing is drawn for it).
    """
    mine = by_key.get(pk)
    if mine:
        fault = mine.popleft()
        if not mine:
            del by_key[pk]
        return True, fault
    if queue:
        return True, queue.popleft()
    return False, None


class FaultDraw:
    """Faults drawn at random from per-kind rates, for calls that have no scripted fault.

    Seeded, not secure: the same seed and the same calls draw the same faults. Not thread-safe:
    the gateway draws under its lock.

    Raises:
        ConfigurationError: bad ``rates`` (see ``check_rates``).
    """

    def __init__(self, rates: Mapping[str, float], *, seed: int | None) -> None:
        self._rates = check_rates(rates)
        self._rng = random.Random(seed)  # noqa: S311 - reproducible fault draws

    def draw(self, *, lookup: bool) -> Fault | None:
        """A fault for one ``lookup`` call (``lookup=True``) or one ``execute`` call, or None."""
        rates = {k: r for k, r in self._rates.items() if (k == "lookup") == lookup}
        if not rates:
            return None
        point = self._rng.random()
        for kind, rate in rates.items():
            if point < rate:
                code = self._rng.choice(_RANDOM_DECLINES) if kind == "decline" else None
                return Fault(kind, code=code)
            point -= rate
        return None

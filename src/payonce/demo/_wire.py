"""The network between the agents and the provider, the same for both runs of the demo.

``Wire`` is a payonce Gateway in front of ``SimulatedGateway`` (its idempotency off): it draws
each call's fault from one seeded generator (the n-th call of either run gets the same draw),
carries the call to the provider in a thread of its own with a network delay, and gives up on
it after the agent runtime's timeout while the provider goes on working, the way a real HTTP
client does. It also keeps the timeline of calls the report draws.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from payonce import GatewayAnswer, Intent, OutcomeClass
from payonce.demo._scheduler import Reply, Simulation
from payonce.gateways.simulated import SimulatedGateway

__all__ = ["FAULT_RATES", "TIMEOUT", "Mark", "Timeline", "Wire"]

#: Probability per provider call of each fault: a bad day at the provider, so that a run of a
#: few hundred calls shows every kind a few times. ``status_500`` comes after the provider moved
#: the money (its worst kind); ``slow`` takes longer than the agent runtime's timeout and the
#: guard's lease (it takes the provider 30 s, ``Fault``'s default).
FAULT_RATES: Final = {
    "after_send": 0.06,
    "status_500": 0.03,
    "status_429": 0.05,
    "before_send": 0.02,
    "slow": 0.03,
    "decline": 0.03,
}
#: How long the agent runtime waits for a provider call before it calls it a timeout.
TIMEOUT: Final = timedelta(seconds=25)


@dataclass(frozen=True, slots=True)
class Mark:
    """One event on the timeline.

    Attributes:
        at: seconds of simulated time since the run started.
        kind: ``first`` (a tool call's first provider call), ``retry`` (the runtime or the
            guard calling again after a failure), ``repeat`` (a looping agent's repeated tool
            call that reached the provider), ``replay`` (a repeated tool call answered by
            payonce without a provider call), ``lookup`` (payonce asking the provider what
            became of a call) or ``crash`` (a worker died).
        flow: the flow of the task.
        fault: the injected fault, if any.
        answer: what the caller got (an outcome class, ``timeout``, or the replayed status).
    """

    at: float
    kind: str
    flow: str
    fault: str | None
    answer: str


class Timeline:
    """The marks of one run, in the order they happened."""

    def __init__(self, sim: Simulation, start: datetime) -> None:
        self._sim = sim
        self._start = start
        self._marks: list[Mark] = []
        self._lock = threading.Lock()

    def add(self, kind: str, flow: str, *, fault: str | None = None, answer: str = "") -> None:
        """Mark an event now."""
        at = (self._sim.now() - self._start).total_seconds()
        with self._lock:
            self._marks.append(Mark(round(at, 3), kind, flow, fault, answer))

    def marks(self) -> list[Mark]:
        """Every mark so far."""
        with self._lock:
            return list(self._marks)


class _Context(threading.local):
    """What the calling agent is doing, so that the wire can label its calls."""

    flow: str = ""
    kind: str = "first"
    calls: int = 0
    wire_time: float = 0.0  # real seconds this thread spent inside the wire


class Wire:
    """A Gateway that carries calls to a ``SimulatedGateway`` with faults, delay and a timeout.

    Args:
        sim: the simulation whose clock and threads it uses.
        provider: the provider (its own idempotency off).
        seed: the fault draws' seed; both runs use the same one.
        timeline: where calls are marked.
    """

    #: The provider does not deduplicate on the provider key: only a lookup may settle a call.
    idempotency_window: timedelta | None = None

    def __init__(
        self, sim: Simulation, provider: SimulatedGateway, *, seed: int, timeline: Timeline
    ) -> None:
        self._sim = sim
        self.provider = provider
        self.timeline = timeline
        # Two generators: the n-th provider call of either run draws the same fault, however many
        # lookups (which draw only a delay) came before it.
        self._faults = random.Random(f"payonce-demo-faults:{seed}")
        self._delays = random.Random(f"payonce-demo-delays:{seed}")
        self._context = _Context()
        self.timeouts = 0

    def begin(self, flow: str, kind: str) -> None:
        """Label the calling thread's next calls: one tool call of ``flow``, of ``kind``."""
        self._context.flow, self._context.kind, self._context.calls = flow, kind, 0

    def wire_time(self) -> float:
        """Real seconds the calling thread has spent inside the wire (not payonce's own)."""
        return self._context.wire_time

    def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """Carry one call to the provider; a timeout answers UNKNOWN ``timeout``."""
        entered = self._sim.running_time()
        fault = self._draw()
        delay = timedelta(milliseconds=self._delays.randint(120, 900))
        context = self._context
        kind = context.kind if context.calls == 0 else "retry"
        context.calls += 1
        reply = Reply()

        def send() -> None:
            self._sim.sleep(delay / 2)
            if fault is not None:
                self.provider.script([fault], provider_key=provider_key)
            answer = self.provider.execute(intent, provider_key, key=key)
            self._sim.sleep(delay / 2)
            self._sim.deliver(reply, answer)

        self._sim.spawn(send)
        context.wire_time += self._sim.running_time() - entered
        done = self._sim.wait(reply, TIMEOUT)
        entered = self._sim.running_time()
        if done:
            assert isinstance(reply.value, GatewayAnswer)
            answer: GatewayAnswer = reply.value
            shown = answer.kind.value
        else:
            self.timeouts += 1
            answer = GatewayAnswer(OutcomeClass.UNKNOWN, code="timeout")
            shown = "timeout"
        self.timeline.add(kind, context.flow, fault=fault, answer=shown)
        context.wire_time += self._sim.running_time() - entered
        return answer

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """Ask the provider for the object of ``key`` (a list call: no faults drawn)."""
        entered = self._sim.running_time()
        self._sim.sleep(timedelta(milliseconds=self._delays.randint(80, 400)))
        found = self.provider.lookup(intent, provider_key, key=key, since=since)
        shown = "not found" if found is None else found.kind.value
        self.timeline.add("lookup", self._context.flow or "reconciler", answer=shown)
        self._context.wire_time += self._sim.running_time() - entered
        return found

    def _draw(self) -> str | None:
        point = self._faults.random()
        for kind, rate in FAULT_RATES.items():
            if point < rate:
                return kind
            point -= rate
        return None

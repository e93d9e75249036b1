"""The demo's agents: one runtime, two ways to reach the provider.

Both runs use the same agent behaviour: an agent takes its tasks up one after another, makes
each step's tool call, tries again after a failure (up to four tries, pausing as the plan says,
or as the provider's ``Retry-After`` says), repeats some tool calls because it loops, and a
worker may die right after the provider answered. What differs is the call itself:

- ``DirectAgents`` call the provider the way SDKs do by default: a fresh random idempotency key
  per call (which a provider without deduplication ignores anyway);
- ``GuardedAgents`` call ``guard.execute(intent)``: the same intent gets the same key, a repeated
  tool call is replayed, a lost answer is looked up at the provider.
"""

from __future__ import annotations

import enum
import random
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from payonce import (
    GatewayAnswer,
    GatewayRejectedError,
    GatewayUnavailableError,
    Guard,
    InProgressError,
    Intent,
    KeyReuseError,
    LeaseLostError,
    OutcomeClass,
    OutcomeUnknownError,
    PaymentDeclinedError,
)
from payonce.demo._scheduler import Simulation
from payonce.demo._wire import Wire
from payonce.demo._workload import CURRENCY, Step, Task

__all__ = [
    "Answer",
    "CrashSwitch",
    "DirectAgents",
    "GuardedAgents",
    "Journal",
    "ToolAnswer",
    "WorkerCrash",
]

_TRIES: Final = 4
_MIN_PAUSE: Final = timedelta(milliseconds=500)


class Answer(enum.Enum):
    """What an agent made of one tool call."""

    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    NOT_EXECUTED = "not_executed"
    IN_PROGRESS = "in_progress"

    @property
    def settled(self) -> bool:
        """Whether the agent knows what happened (and stops trying)."""
        return self in (Answer.SUCCEEDED, Answer.DECLINED, Answer.REJECTED)


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    """One tool call's answer as the agent sees it."""

    answer: Answer
    object_id: str | None = None
    replayed: bool = False
    retry_after: timedelta | None = None


class WorkerCrash(BaseException):
    """The worker died: nothing after this point of its task runs (a BaseException, so that no
    ``except Exception`` on the way, payonce's included, handles it)."""


@dataclass(slots=True)
class IntentLog:
    """What the agents saw of one business intent (seconds of simulated time)."""

    flow: str
    first_call: float
    settled: float | None = None
    unknown: int = 0
    replays: int = 0


@dataclass(slots=True)
class Journal:
    """What the agents of one run did and saw."""

    start: datetime
    intents: dict[str, IntentLog] = field(default_factory=dict)
    tool_calls: int = 0
    replays: int = 0
    crashes: int = 0
    gave_up: int = 0
    skipped_refunds: int = 0
    latency_added: list[float] = field(default_factory=list)  # seconds, per guarded call
    keys: dict[str, str] = field(default_factory=dict)  # record key -> intent id (payonce run)

    def _at(self, now: datetime) -> float:
        return round((now - self.start).total_seconds(), 3)

    def began(self, step: Step, flow: str, now: datetime) -> None:
        """Note that a tool call for ``step`` starts now."""
        self.intents.setdefault(step.intent_id, IntentLog(flow, self._at(now)))
        self.tool_calls += 1

    def saw(self, step: Step, reply: ToolAnswer, now: datetime) -> None:
        """Note one tool call's answer (after ``began``)."""
        at = self._at(now)
        log = self.intents[step.intent_id]
        if reply.replayed:
            log.replays += 1
            self.replays += 1
        if reply.answer is Answer.UNKNOWN:
            log.unknown += 1
        if reply.answer.settled and log.settled is None:
            log.settled = at


class CrashSwitch(threading.local):
    """The guard's fault hook: kills the worker whose call is armed to crash, after the provider
    answered and before the guard records the answer (the record stays CLAIMED)."""

    armed: bool = False

    def __call__(self, point: str) -> None:
        if point == "before_complete" and self.armed:
            self.armed = False
            raise WorkerCrash


class _Agents:
    """The agent runtime shared by both runs; subclasses make the call."""

    def __init__(self, sim: Simulation, wire: Wire, journal: Journal) -> None:
        self.sim = sim
        self.wire = wire
        self.journal = journal

    def call(self, step: Step, intent: Intent, *, flow: str, crash: bool) -> ToolAnswer:
        """One call to the provider (or to payonce), as this run makes it."""
        raise NotImplementedError

    def run_task(self, task: Task, *, twin: bool = False) -> None:
        """Work ``task`` to its end; a crashed worker is restarted by its supervisor."""
        crash_step = None if twin else task.crash_after
        while True:
            try:
                self._steps(task, crash_step)
            except WorkerCrash:
                self.journal.crashes += 1
                self.wire.timeline.add("crash", task.flow, answer="worker died")
                if task.restart_after is None or twin:
                    return
                crash_step = None
                self.sim.sleep(task.restart_after)
            else:
                return

    def _steps(self, task: Task, crash_step: int | None) -> None:
        charged: dict[int, str] = {}  # step index -> the provider object the agent was told of
        for index, step in enumerate(task.steps):
            target = None
            if step.refunds_step is not None:
                target = charged.get(step.refunds_step)
                if target is None:  # the agent never learnt the charge: nothing to refund
                    self.journal.skipped_refunds += 1
                    continue
            intent = _intent(task, step, target)
            reply = self._tool_call(task, step, intent, "first", crash=crash_step == index)
            if reply.object_id is not None and reply.answer is Answer.SUCCEEDED:
                charged[index] = reply.object_id
            for _ in range(step.repeats):
                self.sim.sleep(step.think[-1])
                again = self._tool_call(task, step, intent, "repeat", crash=False)
                if again.object_id is not None and again.answer is Answer.SUCCEEDED:
                    charged.setdefault(index, again.object_id)

    def _tool_call(
        self, task: Task, step: Step, intent: Intent, kind: str, *, crash: bool
    ) -> ToolAnswer:
        reply = ToolAnswer(Answer.UNKNOWN)
        for attempt in range(_TRIES):
            self.wire.begin(task.flow, kind if attempt == 0 else "retry")
            self.journal.began(step, task.flow, self.sim.now())
            try:
                reply = self.call(step, intent, flow=task.flow, crash=crash and attempt == 0)
            except WorkerCrash:
                # The provider answered, but nobody will ever read the answer.
                self.journal.saw(step, ToolAnswer(Answer.UNKNOWN), self.sim.now())
                raise
            self.journal.saw(step, reply, self.sim.now())
            if reply.answer.settled:
                return reply
            pause = reply.retry_after or step.think[attempt % len(step.think)]
            self.sim.sleep(max(pause, _MIN_PAUSE))
        self.journal.gave_up += 1
        return reply


def _intent(task: Task, step: Step, target: str | None) -> Intent:
    # Metadata is part of the intent (and its fingerprint): only what belongs to the business
    # intent goes in, never which agent sent it, so that two agents send the same intent.
    metadata = {"flow": task.flow, **{k.replace(" ", "_"): v for k, v in task.details.items()}}
    if step.operation == "refund":
        return Intent(
            "refund",
            step.amount,
            CURRENCY,
            target=target,
            reference=step.reference,
            sequence=step.sequence,
            metadata={"flow": task.flow, "reason": step.name},
        )
    if step.operation in ("transfer", "payout"):
        return Intent(
            step.operation,
            step.amount,
            CURRENCY,
            customer=task.customer,
            destination=step.destination,
            reference=step.reference,
            metadata=metadata,
        )
    return Intent(
        "charge",
        step.amount,
        CURRENCY,
        customer=task.customer,
        payment_method=task.payment_method,
        reference=step.reference,
        sequence=step.sequence,
        metadata={**metadata, "step": step.name},
    )


class DirectAgents(_Agents):
    """Agents that call the provider directly with a fresh random key per call."""

    def __init__(self, sim: Simulation, wire: Wire, journal: Journal, *, seed: int) -> None:
        super().__init__(sim, wire, journal)
        self._keys = random.Random(f"payonce-demo-sdk-keys:{seed}")

    def call(self, step: Step, intent: Intent, *, flow: str, crash: bool) -> ToolAnswer:
        """A direct call; the business reference goes in the metadata, as merchants do."""
        provider_key = str(uuid.UUID(int=self._keys.getrandbits(128), version=4))
        reply = _from_answer(self.wire.execute(intent, provider_key, key=step.intent_id))
        if crash and reply.answer is Answer.SUCCEEDED:
            raise WorkerCrash
        return reply


class GuardedAgents(_Agents):
    """Agents that call ``guard.execute``; ``crash`` (the guard's fault hook) kills a worker."""

    def __init__(
        self, sim: Simulation, wire: Wire, journal: Journal, guard: Guard, crash: CrashSwitch
    ) -> None:
        super().__init__(sim, wire, journal)
        self.guard = guard
        self._crash = crash

    def call(self, step: Step, intent: Intent, *, flow: str, crash: bool) -> ToolAnswer:
        """One ``guard.execute``; payonce's errors become what the agent makes of them."""
        self.journal.keys[self.guard.key_for(intent)] = step.intent_id
        self._crash.armed = crash
        started, wired = self.sim.running_time(), self.wire.wire_time()
        try:
            reply = self._execute(intent)
        finally:
            self._crash.armed = False
        own = (self.sim.running_time() - started) - (self.wire.wire_time() - wired)
        self.journal.latency_added.append(own)
        if reply.replayed:
            self.wire.timeline.add("replay", flow, answer=reply.answer.value)
        return reply

    def _execute(self, intent: Intent) -> ToolAnswer:
        try:
            outcome = self.guard.execute(intent)
        except PaymentDeclinedError as exc:
            return ToolAnswer(Answer.DECLINED, replayed=bool(getattr(exc, "replayed", False)))
        except (GatewayRejectedError, KeyReuseError) as exc:
            return ToolAnswer(Answer.REJECTED, replayed=bool(getattr(exc, "replayed", False)))
        except GatewayUnavailableError as exc:
            return ToolAnswer(Answer.NOT_EXECUTED, retry_after=getattr(exc, "retry_after", None))
        except InProgressError as exc:
            return ToolAnswer(Answer.IN_PROGRESS, retry_after=getattr(exc, "retry_after", None))
        except (OutcomeUnknownError, LeaseLostError):
            return ToolAnswer(Answer.UNKNOWN)
        value = outcome.value if isinstance(outcome.value, dict) else {}
        object_id = value.get("id")
        return ToolAnswer(
            Answer.SUCCEEDED,
            object_id=object_id if isinstance(object_id, str) else None,
            replayed=outcome.replayed,
        )


def _from_answer(answer: GatewayAnswer) -> ToolAnswer:
    value = answer.value or {}
    object_id = value.get("id") if isinstance(value.get("id"), str) else None
    if answer.kind is OutcomeClass.SUCCESS:
        return ToolAnswer(Answer.SUCCEEDED, object_id=object_id)
    if answer.kind is OutcomeClass.DEFINITE:
        declined = "decline_code" in value or answer.code in ("card_declined", "insufficient_funds")
        return ToolAnswer(Answer.DECLINED if declined else Answer.REJECTED)
    if answer.kind is OutcomeClass.NOT_EXECUTED:
        return ToolAnswer(Answer.NOT_EXECUTED, retry_after=answer.retry_after)
    if answer.kind is OutcomeClass.IN_FLIGHT:
        return ToolAnswer(Answer.IN_PROGRESS, retry_after=answer.retry_after)
    return ToolAnswer(Answer.UNKNOWN)

"""The two runs of the demo over one workload: agents straight at the provider, then through
payonce on a store, with a Reconciler beside them and one pass after them.

Each run has its own simulation (clock and threads), provider and wire, all seeded alike. What a
run leaves behind is what the provider recorded (its movements, objects and calls), what the
agents saw, and for payonce the store's ledger; the figures are computed from that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Final

from payonce import (
    Event,
    Guard,
    LedgerCorruptedError,
    Reconciler,
    ReconcileReport,
    RetryPolicy,
    Status,
    Store,
    verify_ledger,
)
from payonce._reconciler import REVIEW
from payonce.demo._agents import CrashSwitch, DirectAgents, GuardedAgents, Journal, _Agents
from payonce.demo._scheduler import Simulation
from payonce.demo._wire import Mark, Timeline, Wire
from payonce.demo._workload import Task, Workload
from payonce.gateways.simulated import SimulatedGateway

__all__ = ["LEASE", "Move", "Recovery", "RunRecord", "run_guarded", "run_unguarded"]

START: Final = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
#: The guard's lease: shorter than a ``slow`` call, so that such a call outlives it.
LEASE: Final = timedelta(seconds=20)
_WAIT: Final = timedelta(seconds=3)
# No jitter: the guard's own generator is not seeded, and the demo's counts must not depend on
# it. Retries wait exactly what the provider asks for (Retry-After), else go again at once.
_RETRY: Final = RetryPolicy(max_attempts=3, base_delay=timedelta(0), max_delay=timedelta(0))
_RECONCILE_EVERY: Final = timedelta(seconds=60)
_RECHECK: Final = timedelta(seconds=60)
_SECRET: Final = b"payonce-demo-secret: not for production, 32+ bytes"
_BATCH: Final = 1000


@dataclass(frozen=True, slots=True)
class Move:
    """One money movement the provider recorded, tied to the business intent it belongs to."""

    intent_id: str | None
    operation: str
    amount: int
    at: float


@dataclass(frozen=True, slots=True)
class Recovery:
    """What became of payonce's unknown outcomes, read from the store and its ledger.

    Attributes:
        troubled: intent ids whose record went UNKNOWN or was taken over (a lost answer, a
            timeout, a crashed worker), with the seconds from their claim to their settling
            (None while unsettled).
        by_reconciler: records the Reconciler settled (its passes' succeeded + failed).
        flagged: records left UNKNOWN with a ``review:`` reason.
        unresolved: records still UNKNOWN or CLAIMED after the last pass (flagged included).
        settled_at: intent id -> seconds when its record became SUCCEEDED or FAILED.
        passes: Reconciler passes run.
        ledger_verified / ledger_entries / ledger_problem: ``verify_ledger`` on the store.
    """

    troubled: dict[str, float | None]
    by_reconciler: int
    flagged: int
    unresolved: int
    settled_at: dict[str, float]
    passes: int
    ledger_verified: bool
    ledger_entries: int
    ledger_problem: str | None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything one run leaves for the figures."""

    name: str
    moves: tuple[Move, ...]
    declined: frozenset[str]
    provider_calls: int
    lookups: int
    faults: dict[str, int]
    timeouts: int
    journal: Journal
    marks: tuple[Mark, ...]
    span: float
    recovery: Recovery | None = None


def _seconds(at: datetime) -> float:
    return round((at - START).total_seconds(), 3)


class _Fleet:
    """Spawns every agent (and every second agent of a shared task) into the simulation."""

    def __init__(self, sim: Simulation, agents: _Agents, tick: Callable[[], None]) -> None:
        self.sim = sim
        self.agents = agents
        self.tick = tick
        self.running = 0

    def spawn(self, workload: Workload) -> None:
        by_agent: dict[int, list[Task]] = {}
        for task in workload.tasks:
            by_agent.setdefault(task.agent, []).append(task)
        for tasks in by_agent.values():
            self._start(partial(self._agent, tasks), START + tasks[0].start)
        for task in workload.tasks:
            if task.twin is not None:
                self._start(partial(self._twin, task), START + task.start)

    def _start(self, body: Callable[[], None], at: datetime) -> None:
        self.running += 1

        def run() -> None:
            try:
                body()
            finally:
                self.running -= 1

        self.sim.spawn(run, at=at)

    def _agent(self, tasks: list[Task]) -> None:
        for task in tasks:
            wait = START + task.start - self.sim.now()
            if wait > timedelta(0):
                self.sim.sleep(wait)
            self.agents.run_task(task)
            self.tick()

    def _twin(self, task: Task) -> None:
        self.agents.run_task(task, twin=True)
        self.tick()


def _provider(sim: Simulation, seed: int) -> SimulatedGateway:
    # Its own idempotency off: every call that executes moves money again (SCENARIOS G2). A 500
    # here comes after the provider moved the money, the kind that hurts.
    return SimulatedGateway(
        idempotent=False, clock=sim, sleep=sim.sleep, seed=seed, movement_on_500=True
    )


def _record(
    name: str,
    *,
    provider: SimulatedGateway,
    wire: Wire,
    journal: Journal,
    span: float,
    intent_of: Callable[[str], str | None],
    recovery: Recovery | None = None,
) -> RunRecord:
    executes = [c for c in provider.calls() if c.operation != "lookup"]
    return RunRecord(
        name=name,
        moves=tuple(
            Move(intent_of(m.payonce_key), m.operation, m.amount, _seconds(m.created))
            for m in provider.movements()
        ),
        declined=frozenset(
            i
            for o in provider.objects()
            if o.decline_code is not None and (i := intent_of(o.payonce_key)) is not None
        ),
        provider_calls=len(executes),
        lookups=provider.lookups_received,
        faults=dict(sorted(Counter(c.fault for c in executes if c.fault is not None).items())),
        timeouts=wire.timeouts,
        journal=journal,
        marks=tuple(wire.timeline.marks()),
        span=span,
        recovery=recovery,
    )


def run_unguarded(workload: Workload, tick: Callable[[], None]) -> RunRecord:
    """Agents calling the provider directly with a fresh random key per call."""
    sim = Simulation(START)
    provider = _provider(sim, workload.seed)
    wire = Wire(sim, provider, seed=workload.seed, timeline=Timeline(sim, START))
    journal = Journal(START)
    fleet = _Fleet(sim, DirectAgents(sim, wire, journal, seed=workload.seed), tick)
    fleet.spawn(workload)
    sim.run()
    return _record(
        "unguarded",
        provider=provider,
        wire=wire,
        journal=journal,
        span=_seconds(sim.now()),
        intent_of=lambda key: key or None,
    )


def run_guarded(workload: Workload, store: Store, tick: Callable[[], None]) -> RunRecord:
    """The same agents through ``guard.execute`` on ``store`` (empty: the figures are read from
    its ledger), a Reconciler pass every minute while they work, and one more pass once every
    lease and recheck interval has passed."""
    sim = Simulation(START)
    provider = _provider(sim, workload.seed)
    wire = Wire(sim, provider, seed=workload.seed, timeline=Timeline(sim, START))
    journal = Journal(START)
    crash = CrashSwitch()
    guard = Guard(
        store,
        secret=_SECRET,
        scope="demo",
        clock=sim,
        gateway=wire,
        lease=LEASE,
        wait=_WAIT,
        retry=_RETRY,
        faults=crash,
    )
    fleet = _Fleet(sim, GuardedAgents(sim, wire, journal, guard, crash), tick)
    fleet.spawn(workload)
    reconciler = Reconciler(store, wire, clock=sim, lease=LEASE, recheck=_RECHECK)
    reports: list[ReconcileReport] = []

    def reconcile() -> None:
        wire.begin("reconciler", "lookup")
        reports.append(reconciler.run_once(batch=_BATCH))

    def background() -> None:
        while fleet.running > 0:
            sim.sleep(_RECONCILE_EVERY)
            reconcile()

    sim.spawn(background, at=START + _RECONCILE_EVERY)
    sim.run()
    span = _seconds(sim.now())
    # The pass after the run: every lease has expired and every flagged record may be asked
    # again, so nothing is skipped for being held or too recently flagged.
    sim.spawn(reconcile, at=sim.now() + max(LEASE, _RECHECK))
    sim.run()
    recovery = _recovery(store, journal, reports, sim.now())
    return _record(
        "payonce",
        provider=provider,
        wire=wire,
        journal=journal,
        span=span,
        intent_of=journal.keys.get,
        recovery=recovery,
    )


def _recovery(
    store: Store, journal: Journal, reports: list[ReconcileReport], now: datetime
) -> Recovery:
    events: dict[str, list[tuple[Event, float]]] = {}
    count, after = 0, 0
    while batch := store.entries(after=after, limit=_BATCH):
        for entry in batch:
            events.setdefault(entry.key, []).append((entry.event, _seconds(entry.at)))
        count += len(batch)
        after = batch[-1].seq
    troubled: dict[str, float | None] = {}
    settled_at: dict[str, float] = {}
    for key, seen in events.items():
        intent_id = journal.keys.get(key, key)
        done = [at for event, at in seen if event in (Event.SUCCEEDED, Event.FAILED)]
        if done:
            settled_at[intent_id] = done[-1]
        if any(event in (Event.MARKED_UNKNOWN, Event.TAKEN_OVER) for event, _ in seen):
            claimed = seen[0][1]
            troubled[intent_id] = round(done[-1] - claimed, 3) if done else None
    left = store.scan(now=now + timedelta(days=365), limit=_BATCH * 100)
    problem = None
    try:
        verify_ledger(store)
    except LedgerCorruptedError as exc:
        problem = exc.message
    return Recovery(
        troubled=troubled,
        by_reconciler=sum(r.succeeded + r.failed for r in reports),
        flagged=sum(
            1 for r in left if r.status is Status.UNKNOWN and (r.reason or "").startswith(REVIEW)
        ),
        unresolved=len(left),
        settled_at=settled_at,
        passes=len(reports),
        ledger_verified=problem is None,
        ledger_entries=count,
        ledger_problem=problem,
    )

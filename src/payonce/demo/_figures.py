"""The demo's figures and business KPIs, computed from what each run left behind.

Every count of money comes from the provider's own record of movements, tied to the business
intent it belongs to; the workload's plan only says what was intended (what the customer owed,
what the recipient should get), so that accuracy can be judged against it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from payonce.demo._run import RunRecord
from payonce.demo._wire import Mark
from payonce.demo._workload import FLOWS, Step, Task, Workload

__all__ = [
    "KPI_ROWS",
    "TIMELINE_KINDS",
    "FlowKpis",
    "RunFigures",
    "flow_kpis",
    "percent",
    "percentile",
    "run_figures",
    "seconds",
    "timeline",
]

#: The kinds of mark the timeline stacks, bottom up.
TIMELINE_KINDS: Final = ("first", "retry", "repeat", "lookup", "replay")
_MONEY_OUT: Final = frozenset({"transfer", "payout"})


def percentile(values: Iterable[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(math.ceil(share * len(ordered)), 1)
    return ordered[rank - 1]


def percent(value: float | None) -> str:
    """A rate as the console and the report show it; an em dash when there is none."""
    return "—" if value is None else f"{value * 100:.1f}%"


def seconds(value: float | None) -> str:
    """A duration in seconds as the console and the report show it; an em dash when none."""
    return "—" if value is None else f"{value:.1f} s"


#: The KPI rows the console and the report show: (label, FlowKpis field, format).
KPI_ROWS: Final = (
    ("charge success rate", "charge_success_rate", percent),
    ("duplicate rate", "duplicate_rate", percent),
    ("reconciliation time p50", "reconciliation_time_s", seconds),
    ("renewal accuracy", "renewal_accuracy", percent),
    ("refund rate", "refund_rate", percent),
    ("disbursement latency p50", "disbursement_latency_s", seconds),
    ("payout accuracy", "payout_accuracy", percent),
)


def _ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


@dataclass(frozen=True, slots=True)
class RunFigures:
    """The side-by-side table's column for one run.

    Attributes:
        intents: distinct money movements the agents asked for.
        tool_calls: tool calls the agents made (repeats and retries included).
        provider_calls: calls that went to the provider to move money.
        lookups: calls that asked the provider what became of an earlier call.
        money_movements: movements the provider made.
        duplicate_charges / duplicate_amount: charges beyond the first of one intent, and
            their sum in minor units.
        duplicate_payouts / duplicate_payout_amount: the same for transfers and payouts.
        wrong_refunds / wrong_refund_amount: refunds beyond the first of one refund intent.
        unknown_outcomes: intents whose outcome was unknown at some point (a lost answer, a
            500, a timeout, a crashed worker).
        resolved_by_lookup / resolved_by_reconciler: of those, settled by payonce looking the
            call up at the provider on the agent's next try, or by the Reconciler.
        flagged_for_review: left UNKNOWN for a person by the Reconciler.
        unresolved_unknown: outcomes nobody ever settled (for the run without payonce: every
            unknown one, since nothing ever looked them up).
        replays_served: repeated tool calls answered from the store without a provider call.
        crashes / timeouts: workers that died; calls the agent runtime gave up waiting for.
        latency_added_ms: payonce's own time per call (store work; provider time excluded),
            p50 and p99, measured in real time (it varies from run to run).
        faults: faults injected into this run's provider calls, by kind.
    """

    intents: int
    tool_calls: int
    provider_calls: int
    lookups: int
    money_movements: int
    duplicate_charges: int
    duplicate_amount: int
    duplicate_payouts: int
    duplicate_payout_amount: int
    wrong_refunds: int
    wrong_refund_amount: int
    unknown_outcomes: int
    resolved_by_lookup: int | None
    resolved_by_reconciler: int | None
    flagged_for_review: int | None
    unresolved_unknown: int
    replays_served: int
    crashes: int
    timeouts: int
    latency_added_ms: dict[str, float] | None
    faults: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FlowKpis:
    """A flow's business KPIs in one run; None where a KPI does not apply or had no sample.

    Attributes:
        tasks: orders, renewals or disbursements planned.
        movements: money movements the provider made for the flow.
        duplicates: of those, movements beyond the first of one intent (charges, payouts and
            refunds made twice or more).
        charge_success_rate: share of tasks whose first movement the provider made (for
            disbursements: the payout or transfer).
        duplicate_rate: share of the movements asked for that the provider made more than once.
        reconciliation_time_s: p50 seconds (simulated) from the first call of an intent whose
            outcome went unknown to its settled record; None without payonce (never settled).
        renewal_accuracy: share of renewals not declined whose net collected amount (charges
            less refunds, at the provider) equals what the customer owed for the period.
        refund_rate: refunded amount over charged amount.
        disbursement_latency_s: p50 seconds (simulated) from a disbursement's first call to a
            settled answer (the agent's, or the Reconciler's record).
        payout_accuracy: share of disbursements not declined where the recipient received
            exactly the planned amount, once.
    """

    tasks: int
    movements: int
    duplicates: int
    charge_success_rate: float | None
    duplicate_rate: float | None
    reconciliation_time_s: float | None
    renewal_accuracy: float | None = None
    refund_rate: float | None = None
    disbursement_latency_s: float | None = None
    payout_accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The KPIs as a JSON-ready dict."""
        return asdict(self)


def _by_intent(run: RunRecord) -> dict[str, list[int]]:
    moved: dict[str, list[int]] = defaultdict(list)
    for move in run.moves:
        if move.intent_id is not None:
            moved[move.intent_id].append(move.amount)
    return moved


def _extras(moved: dict[str, list[int]], steps: Sequence[Step]) -> tuple[int, int]:
    count = amount = 0
    for step in steps:
        amounts = moved.get(step.intent_id, [])
        count += max(len(amounts) - 1, 0)
        amount += sum(amounts[1:])
    return count, amount


def run_figures(workload: Workload, run: RunRecord) -> RunFigures:
    """The table's column for ``run``."""
    moved = _by_intent(run)
    steps = [step for _, step in workload.steps()]
    charges = [s for s in steps if s.operation == "charge"]
    payouts = [s for s in steps if s.operation in _MONEY_OUT]
    refunds = [s for s in steps if s.operation == "refund"]
    journal = run.journal
    unknown = {i for i, log in journal.intents.items() if log.unknown}
    recovery = run.recovery
    by_lookup = by_reconciler = flagged = None
    latency = None
    if recovery is not None:
        unknown |= set(recovery.troubled)
        settled = sum(1 for took in recovery.troubled.values() if took is not None)
        by_reconciler = recovery.by_reconciler
        by_lookup = max(settled - by_reconciler, 0)
        flagged = recovery.flagged
        unresolved = recovery.unresolved
        p50 = percentile(journal.latency_added, 0.5)
        p99 = percentile(journal.latency_added, 0.99)
        if p50 is not None and p99 is not None:
            latency = {"p50": round(p50 * 1000, 2), "p99": round(p99 * 1000, 2)}
    else:
        unresolved = len(unknown)  # never looked up: the agent retried with a new key
    dup_charges = _extras(moved, charges)
    dup_payouts = _extras(moved, payouts)
    wrong_refunds = _extras(moved, refunds)
    return RunFigures(
        intents=len(journal.intents),
        tool_calls=journal.tool_calls,
        provider_calls=run.provider_calls,
        lookups=run.lookups,
        money_movements=len(run.moves),
        duplicate_charges=dup_charges[0],
        duplicate_amount=dup_charges[1],
        duplicate_payouts=dup_payouts[0],
        duplicate_payout_amount=dup_payouts[1],
        wrong_refunds=wrong_refunds[0],
        wrong_refund_amount=wrong_refunds[1],
        unknown_outcomes=len(unknown),
        resolved_by_lookup=by_lookup,
        resolved_by_reconciler=by_reconciler,
        flagged_for_review=flagged,
        unresolved_unknown=unresolved,
        replays_served=journal.replays,
        crashes=journal.crashes,
        timeouts=run.timeouts,
        latency_added_ms=latency,
        faults=dict(run.faults),
    )


def _net(task: Task, moved: dict[str, list[int]]) -> int:
    net = 0
    for step in task.steps:
        total = sum(moved.get(step.intent_id, []))
        net += -total if step.operation == "refund" else total
    return net


def flow_kpis(workload: Workload, run: RunRecord) -> dict[str, FlowKpis]:
    """Every flow's KPIs in ``run``."""
    moved = _by_intent(run)
    out: dict[str, FlowKpis] = {}
    for flow in FLOWS:
        tasks = [t for t in workload.tasks if t.flow == flow]
        asked = [s for t in tasks for s in t.steps if s.intent_id in run.journal.intents]
        money_in = [s for s in asked if s.operation != "refund"]
        made = [s for s in money_in if moved.get(s.intent_id)]
        twice = [s for s in made if len(moved[s.intent_id]) > 1]
        first_made = sum(1 for t in tasks if moved.get(t.steps[0].intent_id))
        steps = [s for t in tasks for s in t.steps]
        kpis = FlowKpis(
            tasks=len(tasks),
            movements=sum(len(moved.get(s.intent_id, [])) for s in steps),
            duplicates=_extras(moved, steps)[0],
            charge_success_rate=_ratio(first_made, len(tasks)),
            duplicate_rate=_ratio(len(twice), len(money_in)),
            reconciliation_time_s=_reconciliation(run, tasks),
        )
        if flow != "disbursements":
            charged = sum(sum(moved.get(s.intent_id, [])) for s in money_in)
            refunded = sum(sum(moved.get(s.intent_id, [])) for s in asked if s not in money_in)
            kpis = replace(kpis, refund_rate=_ratio(refunded, charged))
        if flow == "renewals":
            billable = [t for t in tasks if t.steps[0].intent_id not in run.declined]
            exact = sum(1 for t in billable if _net(t, moved) == t.expected)
            kpis = replace(kpis, renewal_accuracy=_ratio(exact, len(billable)))
        if flow == "disbursements":
            payable = [t for t in tasks if t.steps[0].intent_id not in run.declined]
            exact = sum(1 for t in payable if moved.get(t.steps[0].intent_id) == [t.expected])
            kpis = replace(
                kpis,
                payout_accuracy=_ratio(exact, len(payable)),
                disbursement_latency_s=_settle_latency(run, tasks),
            )
        out[flow] = kpis
    return out


def _reconciliation(run: RunRecord, tasks: list[Task]) -> float | None:
    if run.recovery is None:
        return None
    ids = {s.intent_id for t in tasks for s in t.steps}
    took = [v for i, v in run.recovery.troubled.items() if i in ids and v is not None]
    found = percentile(took, 0.5)
    return None if found is None else round(found, 1)


def _settle_latency(run: RunRecord, tasks: list[Task]) -> float | None:
    waits = []
    for task in tasks:
        intent_id = task.steps[0].intent_id
        log = run.journal.intents.get(intent_id)
        if log is None:
            continue
        settled = log.settled
        if settled is None and run.recovery is not None:
            settled = run.recovery.settled_at.get(intent_id)
        if settled is not None:
            waits.append(settled - log.first_call)
    found = percentile(waits, 0.5)
    return None if found is None else round(found, 1)


def timeline(marks: Iterable[Mark], *, bucket_s: float, buckets: int) -> list[dict[str, Any]]:
    """``marks`` counted per kind in ``buckets`` slices of ``bucket_s`` seconds each; marks past
    the last slice (the Reconciler's pass after the run) count in the last one."""
    width = max(bucket_s, 0.001)
    rows: list[dict[str, Any]] = [
        {"start": round(i * width, 1), **dict.fromkeys(TIMELINE_KINDS, 0)} for i in range(buckets)
    ]
    for mark in marks:
        if mark.kind in TIMELINE_KINDS:
            index = min(int(mark.at // width), buckets - 1)
            rows[index][mark.kind] += 1
    return rows

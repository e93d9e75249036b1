"""The figures count what the provider recorded, per business intent, against the plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from payonce.demo._agents import IntentLog, Journal
from payonce.demo._figures import flow_kpis, percentile, run_figures, timeline
from payonce.demo._run import Move, Recovery, RunRecord
from payonce.demo._wire import Mark
from payonce.demo._workload import Step, Task, Workload, build_workload, money

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

ORDER = Task(
    flow="checkout",
    agent=0,
    start=timedelta(0),
    customer="cus_A",
    payment_method="tok_visa",
    steps=(
        Step("charge", "charge", 5000, "order-1"),
        Step("out_of_stock_refund", "refund", 1200, "order-1:refund:sku", refunds_step=0),
    ),
    expected=3800,
)
RENEWAL = Task(
    flow="renewals",
    agent=1,
    start=timedelta(0),
    customer="cus_B",
    payment_method="tok_visa",
    steps=(
        Step("charge", "charge", 2900, "sub-1:2026-01"),
        Step("proration_charge", "charge", 1000, "sub-1:2026-01", sequence=1),
    ),
    expected=3900,
)
DECLINED_RENEWAL = Task(
    flow="renewals",
    agent=1,
    start=timedelta(0),
    customer="cus_C",
    payment_method="tok_chargeDeclined",
    steps=(Step("charge", "charge", 900, "sub-2:2026-01"),),
    expected=900,
)
PAYOUT = Task(
    flow="disbursements",
    agent=2,
    start=timedelta(0),
    customer="cus_D",
    payment_method="tok_visa",
    steps=(Step("disbursement", "payout", 7000, "payout-1", destination="ba_X"),),
    expected=7000,
)
SECOND_PAYOUT = Task(
    flow="disbursements",
    agent=2,
    start=timedelta(0),
    customer="cus_E",
    payment_method="tok_visa",
    steps=(Step("disbursement", "transfer", 3000, "payout-2", destination="acct_Y"),),
    expected=3000,
)
WORKLOAD = Workload(
    agents=3, seed=0, tasks=(ORDER, RENEWAL, DECLINED_RENEWAL, PAYOUT, SECOND_PAYOUT)
)


def _journal(*, unknown: tuple[str, ...] = (), settled: dict[str, float] | None = None) -> Journal:
    journal = Journal(START)
    for task in WORKLOAD.tasks:
        for step in task.steps:
            done = (settled or {}).get(step.intent_id, 1.0)
            journal.intents[step.intent_id] = IntentLog(
                task.flow, 0.5, settled=done, unknown=int(step.intent_id in unknown)
            )
    journal.tool_calls = 9
    journal.replays = 2
    return journal


def _run(moves: list[tuple[Step, int]], **fields: object) -> RunRecord:
    values: dict[str, object] = {
        "name": "unguarded",
        "moves": tuple(Move(step.intent_id, step.operation, amount, 1.0) for step, amount in moves),
        "declined": frozenset({DECLINED_RENEWAL.steps[0].intent_id}),
        "provider_calls": len(moves) + 3,
        "lookups": 0,
        "faults": {"after_send": 2},
        "timeouts": 1,
        "journal": _journal(),
        "marks": (),
        "span": 60.0,
    }
    values.update(fields)
    return RunRecord(**values)  # type: ignore[arg-type]


CHARGE, REFUND = ORDER.steps
RENEW, PRORATE = RENEWAL.steps
(PAY,) = PAYOUT.steps
(TRANSFER,) = SECOND_PAYOUT.steps


def test_duplicates_wrong_refunds_and_payouts_are_counted_per_intent_from_the_movements() -> None:
    run = _run(
        [
            (CHARGE, 5000),
            (CHARGE, 5000),  # a lost answer, retried with a new key
            (CHARGE, 5000),  # a looping agent
            (REFUND, 1200),
            (REFUND, 1200),  # the refund tool call repeated
            (RENEW, 2900),
            (PRORATE, 1000),  # sequence 1 of the same reference: not a duplicate
            (PAY, 7000),
            (PAY, 7000),
            (TRANSFER, 3000),
        ],
        journal=_journal(unknown=(CHARGE.intent_id, PAY.intent_id)),
    )
    figures = run_figures(WORKLOAD, run)
    assert (figures.duplicate_charges, figures.duplicate_amount) == (2, 10000)
    assert (figures.wrong_refunds, figures.wrong_refund_amount) == (1, 1200)
    assert (figures.duplicate_payouts, figures.duplicate_payout_amount) == (1, 7000)
    assert figures.money_movements == 10
    assert figures.provider_calls == 13
    # Without payonce nothing ever looks an unknown outcome up: all stay unresolved.
    assert figures.unknown_outcomes == figures.unresolved_unknown == 2
    assert figures.resolved_by_lookup is None
    assert figures.latency_added_ms is None


def test_the_kpis_judge_what_the_provider_recorded_against_what_was_owed() -> None:
    run = _run(
        [
            (CHARGE, 5000),
            (CHARGE, 5000),
            (REFUND, 1200),
            (RENEW, 2900),  # the prorated charge never happened: inaccurate renewal
            (PAY, 7000),
            (PAY, 7000),  # paid twice: inaccurate payout
            (TRANSFER, 3000),
        ],
        journal=_journal(settled={PAY.intent_id: 4.5, TRANSFER.intent_id: 2.5}),
    )
    kpis = flow_kpis(WORKLOAD, run)
    checkout, renewals, payouts = kpis["checkout"], kpis["renewals"], kpis["disbursements"]
    assert (checkout.movements, checkout.duplicates) == (3, 1)
    assert checkout.charge_success_rate == 1.0
    assert checkout.duplicate_rate == 1.0  # the one charge intent was made twice
    assert checkout.refund_rate == round(1200 / 10000, 4)
    assert renewals.charge_success_rate == 0.5  # the declined renewal moved nothing
    assert renewals.renewal_accuracy == 0.0  # of the one billable renewal, none exact
    assert renewals.duplicate_rate == 0.0
    assert payouts.payout_accuracy == 0.5
    assert payouts.disbursement_latency_s == 2.0  # p50 of 4.0 s and 2.0 s, nearest rank
    assert checkout.reconciliation_time_s is None  # nothing reconciles without payonce


def test_payonce_recovery_splits_unknown_outcomes_by_how_they_settled() -> None:
    journal = _journal(unknown=(CHARGE.intent_id,))
    journal.latency_added = [0.001, 0.002, 0.003, 0.010]
    recovery = Recovery(
        troubled={CHARGE.intent_id: 6.0, PAY.intent_id: 70.0, RENEW.intent_id: None},
        by_reconciler=1,
        flagged=1,
        unresolved=1,
        settled_at={CHARGE.intent_id: 6.5, PAY.intent_id: 70.5},
        passes=3,
        ledger_verified=True,
        ledger_entries=40,
        ledger_problem=None,
    )
    run = _run(
        [(CHARGE, 5000), (RENEW, 2900), (PAY, 7000)],
        name="payonce",
        journal=journal,
        recovery=recovery,
    )
    figures = run_figures(WORKLOAD, run)
    assert figures.unknown_outcomes == 3
    assert (figures.resolved_by_lookup, figures.resolved_by_reconciler) == (1, 1)
    assert (figures.flagged_for_review, figures.unresolved_unknown) == (1, 1)
    assert figures.replays_served == 2
    assert figures.latency_added_ms == {"p50": 2.0, "p99": 10.0}
    kpis = flow_kpis(WORKLOAD, run)
    assert kpis["checkout"].reconciliation_time_s == 6.0
    assert kpis["disbursements"].reconciliation_time_s == 70.0


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0
    assert percentile(range(1, 101), 0.99) == 99


def test_timeline_counts_marks_per_slice_and_kind() -> None:
    marks = [
        Mark(0.5, "first", "checkout", None, "success"),
        Mark(1.5, "first", "checkout", "after_send", "unknown"),
        Mark(1.9, "retry", "checkout", None, "success"),
        Mark(2.0, "replay", "checkout", None, "succeeded"),
        Mark(99.0, "lookup", "reconciler", None, "success"),  # after the span: last slice
        Mark(1.0, "crash", "checkout", None, "worker died"),  # not a kind the chart stacks
    ]
    rows = timeline(marks, bucket_s=1.0, buckets=3)
    assert [r["start"] for r in rows] == [0.0, 1.0, 2.0]
    assert [(r["first"], r["retry"], r["replay"], r["lookup"]) for r in rows] == [
        (1, 0, 0, 0),
        (1, 1, 0, 0),
        (0, 0, 1, 1),
    ]


@pytest.mark.parametrize("seed", [1, 7, 123456])
def test_the_workload_is_a_function_of_its_seed(seed: int) -> None:
    first, again = build_workload(40, seed), build_workload(40, seed)
    assert first == again
    assert build_workload(40, seed + 1) != first
    flows = {t.flow for t in first.tasks}
    assert flows == {"checkout", "renewals", "disbursements"}
    # Every refund refunds an earlier step of its own task, and references are unique.
    ids = [s.intent_id for s in (step for _, step in first.steps())]
    assert len(ids) == len(set(ids))
    for task in first.tasks:
        for index, step in enumerate(task.steps):
            if step.refunds_step is not None:
                assert step.refunds_step < index
                assert step.amount <= task.steps[step.refunds_step].amount


def test_money_groups_digits_for_people() -> None:
    assert money(683415) == "6,834.15 USD"
    assert money(5) == "0.05 USD"

"""``DemoResult``: everything the demo found, for people (``print_summary``, the report) and for
machines (``to_json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from payonce.demo._figures import FlowKpis, RunFigures
from payonce.demo._wire import FAULT_RATES

__all__ = ["DemoResult"]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """The outcome of one ``run_demo``.

    Attributes:
        agents / seed: what was run.
        unguarded / payonce: the side-by-side figures of the two runs.
        kpis: the business KPIs, by flow, then by run (``unguarded``, ``payonce``).
        intended: money movements the agents meant to make, by flow.
        timeline: per run, provider calls, retries, repeats, lookups and replays counted in
            equal slices of simulated time (``bucket_s`` seconds each).
        span_s: how long each run's agents worked, in simulated seconds.
        bucket_s: the width of a timeline slice (of the longer run).
        ledger_verified / ledger_entries / ledger_problem: ``verify_ledger`` on the store.
        store: which store the payonce run used (no credentials).
        report_path: the HTML report written.
        elapsed_s: the demo's wall-clock time.
    """

    agents: int
    seed: int
    unguarded: RunFigures
    payonce: RunFigures
    kpis: dict[str, dict[str, FlowKpis]]
    intended: dict[str, int]
    timeline: dict[str, list[dict[str, Any]]]
    span_s: dict[str, float]
    bucket_s: float
    ledger_verified: bool
    ledger_entries: int
    ledger_problem: str | None
    store: str
    report_path: Path
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Whether payonce kept its promise: no duplicate charge, payout or refund, no unknown
        outcome left unresolved, and the ledger verified."""
        g = self.payonce
        return (
            g.duplicate_charges == 0
            and g.duplicate_payouts == 0
            and g.wrong_refunds == 0
            and g.unresolved_unknown == 0
            and self.ledger_verified
        )

    def to_json(self) -> dict[str, Any]:
        """The figures as JSON-ready data (``payonce demo --json`` prints this)."""
        return {
            "ok": self.ok,
            "agents": self.agents,
            "seed": self.seed,
            "unguarded": self.unguarded.to_json(),
            "payonce": self.payonce.to_json(),
            "kpis": {
                flow: {run: kpis.to_json() for run, kpis in runs.items()}
                for flow, runs in self.kpis.items()
            },
            "intended": dict(self.intended),
            "ledger_verified": self.ledger_verified,
            "ledger": {"entries": self.ledger_entries, "problem": self.ledger_problem},
            "timeline": {
                "bucket_s": self.bucket_s,
                "span_s": dict(self.span_s),
                "runs": {run: [dict(b) for b in rows] for run, rows in self.timeline.items()},
            },
            "fault_rates": dict(FAULT_RATES),
            "store": self.store,
            "report": str(self.report_path),
            "elapsed_s": round(self.elapsed_s, 2),
        }

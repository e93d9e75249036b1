"""The demo's HTML report: one self-contained file (inline CSS and SVG, a few lines of inline
script, no network) that opens offline in any browser.

Every chart element has a stable id or class and carries its number in ``data-value`` (with
``data-run``, ``data-flow``, ``data-metric`` or ``data-kind`` saying which), so that a test, or
a person with the browser's inspector, can check the picture against ``--json``.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from payonce.demo._figures import KPI_ROWS, TIMELINE_KINDS
from payonce.demo._wire import FAULT_RATES
from payonce.demo._workload import FLOWS, money

if TYPE_CHECKING:
    from payonce.demo._result import DemoResult

__all__ = ["COLOURS", "render_report", "write_report"]

#: The fill of every kind of chart element (the screenshot test looks for these pixels).
COLOURS: Final = {
    "intended": "#adb5bd",
    "unguarded": "#e8590c",
    "payonce": "#1098ad",
    "first": "#4c6ef5",
    "retry": "#f59f00",
    "repeat": "#e03131",
    "lookup": "#7048e8",
    "replay": "#37b24d",
}
RUN_TITLES: Final = {"unguarded": "without payonce", "payonce": "with payonce"}
_KIND_TITLES: Final = {
    "first": "first calls",
    "retry": "retries",
    "repeat": "repeated tool calls sent",
    "lookup": "lookups",
    "replay": "replays served",
}
_FAULT_TITLES: Final = {
    "after_send": "lost answer after the charge",
    "status_500": "500 after the charge",
    "status_429": "429",
    "before_send": "refused connection",
    "slow": "slow call",
    "decline": "decline",
}
_FLOW_TITLES: Final = {
    "checkout": "Marketplace checkout",
    "renewals": "Subscription renewals",
    "disbursements": "Wallet disbursements",
}

_CSS: Final = """
:root { --ink:#212529; --muted:#6c757d; --line:#dee2e6; --bg:#f8f9fa; --good:#2b8a3e;
  --bad:#c92a2a; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; }
main { max-width:1120px; margin:0 auto; padding:28px 32px 40px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:18px; margin:0 0 4px; }
p.sub, p.note { color:var(--muted); margin:0 0 14px; }
.verdict { margin:16px 0 20px; padding:12px 16px; border-radius:8px; font-weight:bold;
  border:1px solid; }
.verdict.ok { background:#ebfbee; border-color:#8ce99a; color:var(--good); }
.verdict.bad { background:#fff5f5; border-color:#ffa8a8; color:var(--bad); }
.cards { display:grid; grid-template-columns:repeat(4, 1fr); gap:14px; margin-bottom:20px; }
.card, section { background:#fff; border:1px solid var(--line); border-radius:8px; }
.card { padding:12px 14px; }
.card .label { color:var(--muted); font-size:13px; }
.card .pair { display:grid; grid-template-columns:1fr 1fr; gap:8px; margin-top:6px; }
.card .num { font-size:26px; font-weight:bold; line-height:1.2; white-space:nowrap; }
.card .num.small { font-size:17px; line-height:1.75; }
.card .num.unguarded { color:#d9480f; }
.card .num.payonce { color:#0b7285; }
.card .who { color:var(--muted); font-size:12px; }
section { padding:16px 18px; margin-bottom:20px; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:20px; }
.legend { display:flex; flex-wrap:wrap; gap:14px; font-size:13px; color:var(--muted);
  margin:6px 0 8px; }
.legend i { display:inline-block; width:12px; height:12px; border-radius:2px; margin-right:5px;
  vertical-align:-1px; }
svg text { font-family:"DejaVu Sans", Arial, sans-serif; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right;
  white-space:nowrap; }
td:first-child { white-space:normal; }
#kpi-table td:nth-child(2n+1):not(:first-child), #kpi-table th.flow { border-right:0; }
#kpi-table td:nth-child(2n):not(:first-child) { border-left:1px solid var(--line); }
th:first-child, td:first-child { text-align:left; }
thead th { background:var(--bg); font-size:13px; color:var(--muted); }
td.zero { color:var(--good); font-weight:bold; }
td.hot { color:var(--bad); font-weight:bold; }
tr.sub td:first-child { padding-left:26px; color:var(--muted); }
code { font-family:"DejaVu Sans Mono", monospace; font-size:13px; }
"""

# Writes each chart's box (CSS pixels) into data-box, so that a test reading the DOM knows
# where in a screenshot to look for it.
_SCRIPT: Final = """
for (const el of document.querySelectorAll('.chart')) {
  const r = el.getBoundingClientRect();
  el.dataset.box = JSON.stringify({x: r.left + scrollX, y: r.top + scrollY,
    width: r.width, height: r.height});
}
document.body.dataset.height = document.documentElement.scrollHeight;
document.body.dataset.rendered = 'true';
"""


def _attrs(**values: object) -> str:
    parts = []
    for name, value in values.items():
        if value is None:
            continue
        key = name.rstrip("_").replace("_", "-")
        parts.append(f'{key}="{escape(str(value), quote=True)}"')
    return " ".join(parts)


class _Bars:
    """A grouped bar chart in SVG: one group per flow, one bar per series."""

    def __init__(self, chart_id: str, metric: str, height: int = 250) -> None:
        self.chart_id = chart_id
        self.metric = metric
        self.width, self.height = 500, height
        self.groups: list[tuple[str, list[tuple[str, int]]]] = []

    def add(self, flow: str, series: list[tuple[str, int]]) -> None:
        self.groups.append((flow, series))

    def svg(self) -> str:
        top, bottom, left = 24, 40, 8
        plot_h = self.height - top - bottom
        peak = max([v for _, s in self.groups for _, v in s] + [1])
        group_w = (self.width - left * 2) / max(len(self.groups), 1)
        out = [
            f'<svg class="chart bars" id="{self.chart_id}" viewBox="0 0 {self.width} '
            f'{self.height}" width="100%" role="img" {_attrs(data_metric=self.metric)}>',
            f'<line x1="{left}" x2="{self.width - left}" y1="{top + plot_h}" '
            f'y2="{top + plot_h}" stroke="#ced4da"/>',
        ]
        for g, (flow, series) in enumerate(self.groups):
            bar_w = min(44.0, (group_w - 24) / max(len(series), 1))
            x0 = left + g * group_w + (group_w - bar_w * len(series)) / 2
            for i, (run, value) in enumerate(series):
                h = max(plot_h * value / peak, 2.0)  # a zero still shows as a baseline mark
                x, y = x0 + i * bar_w, top + plot_h - h
                out.append(
                    f'<rect class="bar bar-{run}" id="{self.chart_id}-{flow}-{run}" '
                    f"{_attrs(data_flow=flow, data_run=run, data_metric=self.metric)} "
                    f'data-value="{value}" x="{x + 3:.1f}" y="{y:.1f}" '
                    f'width="{bar_w - 6:.1f}" height="{h:.1f}" fill="{COLOURS[run]}" rx="2">'
                    f"<title>{escape(_FLOW_TITLES[flow])}, {escape(run)}: {value}</title></rect>"
                )
                out.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle" '
                    f'font-size="12" fill="#495057">{value}</text>'
                )
            label = _FLOW_TITLES[flow].split(" ", 1)[-1]
            out.append(
                f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{self.height - 14}" '
                f'text-anchor="middle" font-size="13" fill="#212529">{escape(label)}</text>'
            )
        out.append("</svg>")
        return "".join(out)


def _legend(items: list[tuple[str, str]]) -> str:
    spans = "".join(
        f'<span><i style="background:{COLOURS[key]}"></i>{escape(text)}</span>'
        for key, text in items
    )
    return f'<div class="legend">{spans}</div>'


def _timeline_svg(rows: dict[str, list[dict[str, Any]]], spans: dict[str, float]) -> str:
    width, panel_h, gap, left, top = 1060, 150, 46, 44, 26
    height = top + len(rows) * (panel_h + gap)
    peak = max(
        [sum(int(b[k]) for k in TIMELINE_KINDS) for buckets in rows.values() for b in buckets] + [1]
    )
    out = [
        f'<svg class="chart timeline" id="chart-timeline" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img">'
    ]
    for p, (run, buckets) in enumerate(rows.items()):
        y0 = top + p * (panel_h + gap)
        base = y0 + panel_h
        col_w = (width - left - 10) / max(len(buckets), 1)
        out.append(
            f'<text x="{left}" y="{y0 - 8}" font-size="13" font-weight="bold" '
            f'fill="#212529">{escape(RUN_TITLES[run])}</text>'
            f'<line x1="{left}" x2="{width - 10}" y1="{base}" y2="{base}" stroke="#ced4da"/>'
            f'<text x="{left - 6}" y="{y0 + 10}" font-size="11" fill="#868e96" '
            f'text-anchor="end">{peak}</text>'
            f'<text x="{left - 6}" y="{base}" font-size="11" fill="#868e96" '
            f'text-anchor="end">0</text>'
        )
        out.append(f'<g class="timeline-run" {_attrs(data_run=run)} data-span="{spans[run]}">')
        for b, bucket in enumerate(buckets):
            y = float(base)
            x = left + b * col_w
            for kind in TIMELINE_KINDS:
                count = int(bucket[kind])
                if count == 0:
                    continue
                h = panel_h * count / peak
                y -= h
                out.append(
                    f'<rect class="tl tl-{kind}" {_attrs(data_run=run, data_kind=kind)} '
                    f'data-bucket="{b}" data-value="{count}" x="{x + 1:.1f}" y="{y:.1f}" '
                    f'width="{col_w - 2:.1f}" height="{h:.1f}" fill="{COLOURS[kind]}">'
                    f"<title>{bucket['start']} s: {count} {escape(_KIND_TITLES[kind])}</title>"
                    "</rect>"
                )
        out.append("</g>")
        for b in range(0, len(buckets), 5):
            out.append(
                f'<text x="{left + b * col_w:.1f}" y="{base + 15}" font-size="11" '
                f'fill="#868e96">{buckets[b]["start"]:.0f} s</text>'
            )
    out.append("</svg>")
    return "".join(out)


_PIECES: Final = (
    ("resolved_by_lookup", "settled by lookup on the agent's retry", "#7048e8"),
    ("resolved_by_reconciler", "settled by the Reconciler", "#37b24d"),
    ("flagged_for_review", "flagged for review", "#f59f00"),
    ("never_resolved", "never resolved", "#e8590c"),
)


def _resolution_svg(result: DemoResult) -> str:
    width, row_h, left = 500, 46, 130
    g = result.payonce
    flagged = g.flagged_for_review or 0
    counts = {
        "unguarded": {"never_resolved": result.unguarded.unresolved_unknown},
        "payonce": {
            "resolved_by_lookup": g.resolved_by_lookup or 0,
            "resolved_by_reconciler": g.resolved_by_reconciler or 0,
            "flagged_for_review": flagged,
            "never_resolved": g.unresolved_unknown - flagged,
        },
    }
    peak = max(result.unguarded.unknown_outcomes, g.unknown_outcomes, 1)
    out = [
        f'<svg class="chart resolution" id="chart-unknowns" viewBox="0 0 {width} '
        f'{row_h * 2 + 16}" width="100%" role="img">'
    ]
    for r, (run, pieces) in enumerate(counts.items()):
        y = 8 + r * row_h
        x = float(left)
        out.append(
            f'<text x="{left - 10}" y="{y + 22}" text-anchor="end" font-size="13" '
            f'fill="#212529">{escape(RUN_TITLES[run])}</text>'
        )
        for piece, title, colour in _PIECES:
            count = pieces.get(piece, 0)
            if count <= 0:
                continue
            w = (width - left - 40) * count / peak
            out.append(
                f'<rect class="res res-{piece}" {_attrs(data_run=run, data_kind=piece)} '
                f'data-value="{count}" x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="28" '
                f'fill="{colour}"><title>{count} {escape(title)}</title></rect>'
            )
            x += w
        out.append(
            f'<text x="{x + 6:.1f}" y="{y + 23}" font-size="12" fill="#495057">'
            f"{sum(pieces.values())}</text>"
        )
    out.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{colour}"></i>{escape(title)}</span>'
        for _, title, colour in _PIECES
    )
    return "".join(out) + f'<div class="legend">{legend}</div>'


def _row(label: str, metric: str, left: object, right: object, *, sub: bool = False) -> str:
    def cell(value: object, run: str) -> str:
        shown = "—" if value is None else value
        css = ""
        if metric.startswith(("duplicate", "wrong", "unresolved")) and isinstance(value, int):
            css = ' class="zero"' if value == 0 else ' class="hot"'
        return f'<td{css} data-run="{run}">{escape(str(shown))}</td>'

    return (
        f'<tr{" class=sub" if sub else ""} data-metric="{escape(metric)}">'
        f"<td>{escape(label)}</td>{cell(left, 'unguarded')}{cell(right, 'payonce')}</tr>"
    )


def _figures_table(result: DemoResult) -> str:
    u, g = result.unguarded, result.payonce
    lat = g.latency_added_ms
    rows = [
        _row("intents", "intents", u.intents, g.intents),
        _row("tool calls (repeats and retries included)", "tool_calls", u.tool_calls, g.tool_calls),
        _row("provider calls", "provider_calls", u.provider_calls, g.provider_calls),
        _row("lookups at the provider", "lookups", u.lookups, g.lookups, sub=True),
        _row("money movements", "money_movements", u.money_movements, g.money_movements),
        _row("duplicate charges", "duplicate_charges", u.duplicate_charges, g.duplicate_charges),
        _row(
            "duplicate amount",
            "duplicate_amount",
            money(u.duplicate_amount),
            money(g.duplicate_amount),
            sub=True,
        ),
        _row("duplicate payouts", "duplicate_payouts", u.duplicate_payouts, g.duplicate_payouts),
        _row(
            "duplicate payout amount",
            "duplicate_payout_amount",
            money(u.duplicate_payout_amount),
            money(g.duplicate_payout_amount),
            sub=True,
        ),
        _row("wrong refunds", "wrong_refunds", u.wrong_refunds, g.wrong_refunds),
        _row(
            "wrong refund amount",
            "wrong_refund_amount",
            money(u.wrong_refund_amount),
            money(g.wrong_refund_amount),
            sub=True,
        ),
        _row("unknown outcomes", "unknown_outcomes", u.unknown_outcomes, g.unknown_outcomes),
        _row(
            "settled by lookup on the agent's retry",
            "resolved_by_lookup",
            u.resolved_by_lookup,
            g.resolved_by_lookup,
            sub=True,
        ),
        _row(
            "settled by the Reconciler",
            "resolved_by_reconciler",
            u.resolved_by_reconciler,
            g.resolved_by_reconciler,
            sub=True,
        ),
        _row(
            "flagged for review",
            "flagged_for_review",
            u.flagged_for_review,
            g.flagged_for_review,
            sub=True,
        ),
        _row(
            "never resolved",
            "unresolved_unknown",
            u.unresolved_unknown,
            g.unresolved_unknown,
            sub=True,
        ),
        _row("replays served", "replays_served", u.replays_served, g.replays_served),
        _row("worker crashes", "crashes", u.crashes, g.crashes),
        _row("calls timed out", "timeouts", u.timeouts, g.timeouts),
        _row(
            "latency added, p50 / p99",
            "latency_added_ms",
            None,
            None if lat is None else f"{lat['p50']:.1f} ms / {lat['p99']:.1f} ms",
        ),
    ]
    return (
        '<table id="figures-table"><thead><tr><th></th><th>without payonce</th>'
        f"<th>with payonce</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _kpi_table(result: DemoResult) -> str:
    head = (
        "".join(f'<th colspan="2">{escape(_FLOW_TITLES[f])}</th>' for f in FLOWS)
        + "</tr><tr><th></th>"
        + "<th>without</th><th>with</th>" * len(FLOWS)
    )
    rows = []
    for label, name, show in KPI_ROWS:
        cells = []
        for flow in FLOWS:
            for run in ("unguarded", "payonce"):
                value = getattr(result.kpis[flow][run], name)
                cells.append(
                    f"<td {_attrs(data_flow=flow, data_run=run, data_metric=name)}>"
                    f"{escape(show(value))}</td>"
                )
        rows.append(f"<tr><td>{escape(label)}</td>{''.join(cells)}</tr>")
    return (
        f'<table id="kpi-table"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _card(label: str, metric: str, left: object, right: object) -> str:
    def side(value: object, run: str) -> str:
        size = " small" if isinstance(value, str) else ""
        return (
            f'<div><div class="num {run}{size}" data-run="{run}">{escape(str(value))}</div>'
            f'<div class="who">{escape(RUN_TITLES[run])}</div></div>'
        )

    return (
        f'<div class="card" data-metric="{metric}"><div class="label">{escape(label)}</div>'
        f'<div class="pair">{side(left, "unguarded")}{side(right, "payonce")}</div></div>'
    )


def _cards(result: DemoResult) -> str:
    u, g = result.unguarded, result.payonce
    return "".join(
        _card(label, metric, left, right)
        for label, metric, left, right in (
            ("duplicate charges", "duplicate_charges", u.duplicate_charges, g.duplicate_charges),
            (
                "money charged twice",
                "duplicate_amount",
                money(u.duplicate_amount),
                money(g.duplicate_amount),
            ),
            (
                "unknown outcomes never resolved",
                "unresolved_unknown",
                u.unresolved_unknown,
                g.unresolved_unknown,
            ),
            ("repeated tool calls replayed", "replays_served", u.replays_served, g.replays_served),
        )
    )


def render_report(result: DemoResult) -> str:
    """The report of ``result`` as one HTML document."""
    g = result.payonce
    movements = _Bars("chart-movements", "movements")
    duplicates = _Bars("chart-duplicates", "duplicates")
    for flow in FLOWS:
        runs = result.kpis[flow]
        movements.add(
            flow,
            [
                ("intended", result.intended[flow]),
                ("unguarded", runs["unguarded"].movements),
                ("payonce", runs["payonce"].movements),
            ],
        )
        duplicates.add(
            flow,
            [("unguarded", runs["unguarded"].duplicates), ("payonce", runs["payonce"].duplicates)],
        )
    ok = result.ok
    verdict = (
        f"With payonce: {g.duplicate_charges} duplicate charges, {g.duplicate_payouts} duplicate "
        f"payouts, {g.wrong_refunds} wrong refunds, {g.unresolved_unknown} unknown outcomes left, "
        f"ledger {'verified' if result.ledger_verified else 'NOT verified'}."
    )
    rates = ", ".join(f"{_FAULT_TITLES.get(k, k)} {v:.0%}" for k, v in FAULT_RATES.items())
    data = json.dumps(result.to_json(), sort_keys=True).replace("</", "<\\/")
    run_legend = _legend([(k, RUN_TITLES[k]) for k in ("unguarded", "payonce")])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>payonce demo report: {result.agents} agents, seed {result.seed}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>payonce demo: AI agents moving money through a flaky provider</h1>
<p class="sub">{result.agents} agents · seed {result.seed} · SimulatedGateway with its own
idempotency off · the same workload twice: straight at the provider with a fresh random key per
call, then through <code>guard.execute</code> on {escape(result.store)} with a Reconciler.</p>
<div id="verdict" class="verdict {"ok" if ok else "bad"}" data-ok="{str(ok).lower()}">
{escape(verdict)}</div>
<div class="cards">{_cards(result)}</div>
<div class="grid2">
<section><h2>Money movements per flow</h2>
<p class="note">What the provider recorded, next to what the agents meant to move (a declined
payment moves nothing).</p>
{_legend([("intended", "intended"), *[(k, RUN_TITLES[k]) for k in RUN_TITLES]])}
{movements.svg()}</section>
<section><h2>Duplicate movements per flow</h2>
<p class="note">Charges, payouts and refunds the provider made more than once for one intent.</p>
{run_legend}
{duplicates.svg()}</section>
</div>
<section><h2>Timeline of calls, retries and replays</h2>
<p class="note">Calls per {result.bucket_s:.0f} s of simulated time, stacked by kind. Replays are
answered from payonce's store and never reach the provider.</p>
{_legend([(k, _KIND_TITLES[k]) for k in TIMELINE_KINDS])}
{_timeline_svg(result.timeline, result.span_s)}</section>
<div class="grid2">
<section><h2>The figures</h2>{_figures_table(result)}</section>
<section><h2>Unknown outcomes and how they ended</h2>
<p class="note">A lost answer, a 500, a timeout or a crashed worker leaves an outcome unknown.
Without payonce the agent retries with a new key and nobody ever finds out what happened.</p>
{_resolution_svg(result)}
<h2 style="margin-top:18px">Ledger</h2>
<p id="ledger" data-verified="{str(result.ledger_verified).lower()}"
 data-value="{result.ledger_entries}"><code>verify_ledger</code>: {result.ledger_entries}
entries, {"hash chains intact" if result.ledger_verified else escape(result.ledger_problem or "")}.
</p>
<p class="note">Injected faults per provider call: {escape(rates)}; a slow call takes 30 s, past
the agent runtime's 25 s timeout and the guard's 20 s lease.</p></section>
</div>
<section><h2>Business KPIs per flow</h2>{_kpi_table(result)}</section>
</main>
<script type="application/json" id="demo-data">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_report(result: DemoResult, path: Path) -> Path:
    """Write the report of ``result`` to ``path`` (UTF-8) and return its absolute path."""
    path.write_text(render_report(result), encoding="utf-8")
    return path.resolve()

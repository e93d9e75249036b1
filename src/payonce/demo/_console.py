"""The demo on a terminal: a Rich progress bar while it runs, then the side-by-side table, the
business KPIs per flow, the ledger line and the report's path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

from payonce.demo._figures import KPI_ROWS
from payonce.demo._workload import FLOWS, money

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from payonce.demo._result import DemoResult

__all__ = ["print_summary", "progress_bars"]


def _rich() -> None:
    try:
        import rich  # noqa: F401, PLC0415 - only checks that the extra is there
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "the payonce demo draws with Rich: install it with pip install 'payonce[cli]'"
        ) from exc


@contextmanager
def progress_bars(
    console: Console, *, enabled: bool, totals: dict[str, int]
) -> Iterator[dict[str, Callable[[], None]]]:
    """One bar per run (advanced once per finished task), or silent callbacks if disabled."""
    if not enabled:
        yield dict.fromkeys(totals, _nothing)
        return
    from rich.progress import (  # noqa: PLC0415 - Rich is loaded only when drawing
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    titles = {"unguarded": "agents without payonce", "payonce": "agents with payonce   "}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        console=console,
    ) as bars:
        ids = {name: bars.add_task(titles.get(name, name), total=n) for name, n in totals.items()}
        yield {name: partial(bars.advance, ids[name]) for name in totals}


def _nothing() -> None:
    return None


def _count(value: int | None) -> str:
    return "—" if value is None else str(value)


def _hot(value: int, text: str) -> str:
    return f"[bold green]{text}[/]" if value == 0 else f"[bold red]{text}[/]"


def _figures_table(result: DemoResult) -> Table:
    from rich.table import Table  # noqa: PLC0415

    u, g = result.unguarded, result.payonce
    table = Table(title="The same workload, twice", title_style="bold", show_lines=False)
    table.add_column("")
    table.add_column("without payonce", justify="right")
    table.add_column("with payonce", justify="right")

    table.add_row("intents", str(u.intents), str(g.intents))
    table.add_row("tool calls (repeats, retries)", str(u.tool_calls), str(g.tool_calls))
    table.add_row("provider calls", str(u.provider_calls), str(g.provider_calls))
    table.add_row("  lookups at the provider", str(u.lookups), str(g.lookups))
    table.add_row("money movements", str(u.money_movements), str(g.money_movements))
    for label, count_u, count_g, amount_u, amount_g in (
        (
            "duplicate charges",
            u.duplicate_charges,
            g.duplicate_charges,
            u.duplicate_amount,
            g.duplicate_amount,
        ),
        (
            "duplicate payouts",
            u.duplicate_payouts,
            g.duplicate_payouts,
            u.duplicate_payout_amount,
            g.duplicate_payout_amount,
        ),
        (
            "wrong refunds",
            u.wrong_refunds,
            g.wrong_refunds,
            u.wrong_refund_amount,
            g.wrong_refund_amount,
        ),
    ):
        table.add_row(
            label,
            _hot(count_u, f"{count_u} ({money(amount_u)})"),
            _hot(count_g, f"{count_g} ({money(amount_g)})"),
        )
    table.add_row("unknown outcomes", str(u.unknown_outcomes), str(g.unknown_outcomes))
    table.add_row(
        "  settled by lookup on retry", _count(u.resolved_by_lookup), _count(g.resolved_by_lookup)
    )
    table.add_row(
        "  settled by the Reconciler",
        _count(u.resolved_by_reconciler),
        _count(g.resolved_by_reconciler),
    )
    table.add_row(
        "  flagged for review", _count(u.flagged_for_review), _count(g.flagged_for_review)
    )
    table.add_row(
        "  never resolved",
        _hot(u.unresolved_unknown, str(u.unresolved_unknown)),
        _hot(g.unresolved_unknown, str(g.unresolved_unknown)),
    )
    table.add_row("replays served", str(u.replays_served), str(g.replays_served))
    table.add_row(
        "worker crashes / timeouts", f"{u.crashes} / {u.timeouts}", f"{g.crashes} / {g.timeouts}"
    )
    lat = g.latency_added_ms
    table.add_row(
        "latency added p50 / p99",
        "—",
        "—" if lat is None else f"{lat['p50']:.1f} ms / {lat['p99']:.1f} ms",
    )
    return table


def _kpi_table(result: DemoResult) -> Table:
    from rich.table import Table  # noqa: PLC0415

    table = Table(title="Business KPIs per flow (without → with payonce)", title_style="bold")
    table.add_column("")
    for flow in FLOWS:
        table.add_column(flow, justify="right")
    for label, name, show in KPI_ROWS:
        cells = []
        for flow in FLOWS:
            before = getattr(result.kpis[flow]["unguarded"], name)
            after = getattr(result.kpis[flow]["payonce"], name)
            cells.append(
                "" if before is None and after is None else f"{show(before)} → {show(after)}"
            )
        table.add_row(label, *cells)
    return table


def print_summary(result: DemoResult, console: Console | None = None) -> None:
    """Print the side-by-side table, the KPIs per flow, the ledger line and the report path.

    Args:
        result: what ``run_demo`` returned.
        console: where to print (a new ``rich.console.Console`` on stdout by default).
    """
    _rich()
    if console is None:
        from rich.console import Console  # noqa: PLC0415

        console = Console()
    console.print(
        f"[bold]payonce demo[/]: {result.agents} agents, seed {result.seed}, SimulatedGateway "
        "with its idempotency off, a bad day of faults; the same workload straight at the "
        f"provider, then through payonce on {result.store}."
    )
    console.print(_figures_table(result))
    console.print(_kpi_table(result))
    if result.ledger_verified:
        console.print(
            f"[green]ledger verified[/]: verify_ledger checked {result.ledger_entries} entries; "
            "every hash chain is intact."
        )
    else:
        console.print(f"[bold red]ledger NOT verified[/]: {result.ledger_problem}")
    verdict = (
        "[bold green]payonce: no duplicate charge, payout or refund; every unknown outcome "
        "resolved.[/]"
        if result.ok
        else "[bold red]payonce did not keep its promise in this run: see the table.[/]"
    )
    console.print(verdict)
    console.print(f"report: [link=file://{result.report_path}]{result.report_path}[/link]")

"""``run_demo`` and ``main``: run the two halves of the demo, compute the figures, write the
report."""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from payonce import (
    ConfigurationError,
    PayonceError,
    SQLiteStore,
    Store,
    StoreMissingError,
    open_store,
)
from payonce.demo._console import print_summary, progress_bars
from payonce.demo._figures import flow_kpis, run_figures, timeline
from payonce.demo._report import write_report
from payonce.demo._result import DemoResult
from payonce.demo._run import run_guarded, run_unguarded
from payonce.demo._workload import FLOWS, build_workload

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DEFAULT_REPORT", "MAX_AGENTS", "main", "run_demo"]

#: Where the report goes by default, in the working directory.
DEFAULT_REPORT: Final = "payonce-demo-report.html"
#: The most agents one demo runs (1000 take about 40 s on a 2-core machine).
MAX_AGENTS: Final = 1000
_MAX_BUCKETS: Final = 30
_ROUND_SECONDS: Final = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 1800, 3600)


def _check_agents(agents: object) -> int:
    if isinstance(agents, bool) or not isinstance(agents, int) or not 1 <= agents <= MAX_AGENTS:
        raise ConfigurationError(
            f"agents must be a whole number from 1 to {MAX_AGENTS}; got {agents!r}. Pass, for "
            "example, agents=40 (--agents 40).",
            option="agents",
        )
    return agents


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigurationError(
            f"seed must be a whole number from 0 to 2**63-1; got {seed!r}. Pass, for example, "
            "seed=7 (--seed 7); the same seed gives the same counts.",
            option="seed",
        )
    return seed


def _check_report(report: Path | str | None) -> Path:
    path = Path.cwd() / DEFAULT_REPORT if report is None else Path(report)
    if path.is_dir():
        raise ConfigurationError(
            f"report {str(path)!r} is a directory; pass a file path such as "
            f"{str(path / DEFAULT_REPORT)!r}.",
            option="report",
        )
    if not path.parent.is_dir():
        raise ConfigurationError(
            f"report {str(path)!r} cannot be written: its directory does not exist. Create it "
            "first, or pass a path in an existing directory.",
            option="report",
        )
    return path


def _describe(url: str) -> str:
    """The store URL with every password masked (I8): the one before the host and any query
    option whose name holds "pass" (``?password=``, ``?sslpassword=``); no fragment, and no
    query at all where a '?' inside a password cut the URL short."""
    parts = urlsplit(url)._replace(fragment="")
    if parts.password is not None:
        port = "" if parts.port is None else f":{parts.port}"
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{parts.hostname or ''}{port}")
    if "@" in parts.query:  # a '?' in a password left unencoded: its tail is in the query
        parts = parts._replace(query="***")
    elif parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(name, "***" if "pass" in name.lower() else value) for name, value in pairs]
        parts = parts._replace(query=urlencode(masked, safe="*/"))
    # Not urlunsplit: it drops the empty host of sqlite:///relative.db.
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (
        f"?{parts.query}" if parts.query else ""
    )


def _open_empty(url: str) -> Store:
    """The store at ``url``, created only where there is none: an existing one is opened as it
    is (no migration, no layout key written) so that refusing it below changes nothing."""
    try:
        return open_store(url, create=False)
    except StoreMissingError:
        return open_store(url)


def run_demo(
    *,
    agents: int = 40,
    seed: int = 7,
    report: Path | None = None,
    store_url: str | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> DemoResult:
    """Run the demo: the seeded workload without payonce, then through payonce.

    Args:
        agents: how many agents work (1 to 1000); each takes four tasks of one flow.
        seed: the workload's and the provider's seed; the same seed gives the same counts
            (measured latencies vary).
        report: where to write the HTML report (default ``./payonce-demo-report.html``).
        store_url: the store of the payonce run, which must be empty (default: a new temporary
            SQLite file, removed afterwards).
        console: where the progress bar goes (default: a new Rich console on stdout).
        progress: False draws no progress bar.

    Returns:
        The figures, the KPIs and the report's path.

    Raises:
        ConfigurationError: a bad argument, a store URL that does not open, or a store that is
            not empty; nothing was run.
    """
    agents, seed = _check_agents(agents), _check_seed(seed)
    path = _check_report(report)
    started = time.perf_counter()
    workload = build_workload(agents, seed)
    store: Store
    with tempfile.TemporaryDirectory(prefix="payonce-demo-") as scratch:
        if store_url is None:
            store, described = SQLiteStore(Path(scratch) / "demo.db"), "a new SQLite file"
        else:
            store, described = _open_empty(store_url), _describe(store_url)
        try:
            if store.entries(after=0, limit=1):
                raise ConfigurationError(
                    f"the demo needs an empty store and {described} holds records; pass the URL "
                    "of a new database or omit store_url (--store) for a temporary one.",
                    option="store_url",
                )
            if progress and console is None:
                from rich.console import Console  # noqa: PLC0415 - Rich only when drawing

                console = Console()
            runs = len(workload.tasks) + sum(t.twin is not None for t in workload.tasks)
            with progress_bars(
                console,  # type: ignore[arg-type]  # None only when progress is off
                enabled=progress,
                totals={"unguarded": runs, "payonce": runs},
            ) as ticks:
                unguarded = run_unguarded(workload, ticks["unguarded"])
                guarded = run_guarded(workload, store, ticks["payonce"])
        finally:
            store.close()
    assert guarded.recovery is not None
    # Slices of a round number of seconds, the same for both runs, so the panels line up.
    longest = max(unguarded.span, guarded.span, 1.0)
    bucket = next((n for n in _ROUND_SECONDS if n * _MAX_BUCKETS >= longest), _ROUND_SECONDS[-1])
    buckets = min(math.ceil(longest / bucket), _MAX_BUCKETS)
    result = DemoResult(
        agents=agents,
        seed=seed,
        unguarded=run_figures(workload, unguarded),
        payonce=run_figures(workload, guarded),
        kpis={
            flow: {"unguarded": before, "payonce": after}
            for flow, before, after in zip(
                FLOWS,
                flow_kpis(workload, unguarded).values(),
                flow_kpis(workload, guarded).values(),
                strict=True,
            )
        },
        intended={f: sum(len(t.steps) for t in workload.tasks if t.flow == f) for f in FLOWS},
        timeline={
            run.name: timeline(run.marks, bucket_s=bucket, buckets=buckets)
            for run in (unguarded, guarded)
        },
        span_s={"unguarded": unguarded.span, "payonce": guarded.span},
        bucket_s=float(bucket),
        ledger_verified=guarded.recovery.ledger_verified,
        ledger_entries=guarded.recovery.ledger_entries,
        ledger_problem=guarded.recovery.ledger_problem,
        store=described,
        report_path=path.resolve(),
        elapsed_s=0.0,
    )
    from dataclasses import replace  # noqa: PLC0415

    result = replace(result, elapsed_s=time.perf_counter() - started)
    write_report(result, path)
    return result


def _int_option(name: str, low: int, high: int, example: int) -> type[int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} takes a whole number from {low} to {high}, e.g. {name} {example}; "
                f"got {text!r}"
            )
        return value

    return parse  # type: ignore[return-value]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payonce demo",
        description="AI agents moving money through a flaky provider, without and with payonce: "
        "the same seeded workload twice, a side-by-side table, business KPIs and an HTML report.",
    )
    parser.add_argument(
        "--agents",
        type=_int_option("--agents", 1, MAX_AGENTS, 40),
        default=40,
        help=f"how many agents (1-{MAX_AGENTS}, default 40)",
    )
    parser.add_argument(
        "--seed",
        type=_int_option("--seed", 0, 2**63 - 1, 7),
        default=7,
        help="the workload's seed (default 7); the same seed gives the same counts",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help=f"where to write the HTML report (default ./{DEFAULT_REPORT})",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="an empty store for the payonce run (default: a temporary SQLite file)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as JSON instead of tables"
    )
    parser.add_argument("--no-progress", action="store_true", help="draw no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m payonce.demo``: 0 when payonce kept its promise, 1 when it did not, 2 for
    bad arguments."""
    try:
        args = _parser().parse_args(None if argv is None else list(argv))
    except SystemExit as stop:  # argparse has printed the usage and the problem
        return stop.code if isinstance(stop.code, int) else 2
    try:
        from rich.console import Console  # noqa: PLC0415 - Rich only for the command line
    except ImportError:
        print(
            "payonce demo: the demo draws with Rich, which is not installed; install it with "
            "pip install 'payonce[cli]' (or pip install rich) and run it again.",
            file=sys.stderr,
        )
        return 2
    # With --json, stdout carries the JSON alone: the progress bar goes to stderr.
    console = Console(stderr=args.json)
    try:
        result = run_demo(
            agents=args.agents,
            seed=args.seed,
            report=args.report,
            store_url=args.store,
            console=console,
            progress=not args.no_progress,
        )
    except PayonceError as exc:
        print(f"payonce demo: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        print_summary(result, console)
    return 0 if result.ok else 1

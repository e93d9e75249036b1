"""Entry point: ``python -m benchmarks.run [--quick] [--rounds 3] [--out docs/performance.md]``.

Prints payonce next to the hand-written SQLite baseline; with ``--out`` also writes the markdown
report (method, environment, table, per-round ratios, profile). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from benchmarks import sections
from benchmarks.sqlite_bench import BASELINE, CALLERS, PAYONCE, Config, PathResult, Report, run


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="payonce on SQLite next to the hand-written baseline, in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (fewer ops)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path (medians taken)")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--rows", type=int, help="finished records per database beforehand")
    parser.add_argument("--max-seconds", type=float, help="stop measuring after this long")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile section")
    parser.add_argument("--dir", type=Path, help="where the temporary databases go")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.rows is not None and args.rows < 0:
        parser.error("--rows must be 0 or more")
    return args


def _config(args: argparse.Namespace) -> Config:
    config = Config.quick(args.rounds) if args.quick else Config.full(args.rounds)
    if args.rows is not None:
        config = dataclasses.replace(config, rows=args.rows)
    if args.max_seconds is not None:
        config = dataclasses.replace(config, max_seconds=args.max_seconds)
    if args.no_profile:
        config = dataclasses.replace(config, profile_ops=0)
    return config


# -- figures --------------------------------------------------------------------------------------


def _target(r: PathResult) -> str:
    return "-" if r.target is None else f">= {r.target:.2f}x"


def _latency(r: PathResult, side: int) -> str:
    return f"{r.p50(side):,.0f} / {r.p99(side):,.0f}"


def table_text(report: Report) -> str:
    """The result table for a terminal."""
    header = (
        f"{'path':<11}{'mode':<8}{'payonce/s':>11}{'baseline/s':>12}{'ratio':>8}"
        f"{'payonce p50/p99 µs':>21}{'baseline p50/p99 µs':>22}{'target':>10}{'':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in report.results:
        lines.append(
            f"{r.path:<11}{r.mode:<8}{r.ops_per_s(PAYONCE):>11,.0f}{r.ops_per_s(BASELINE):>12,.0f}"
            f"{r.ratio:>7.2f}x{_latency(r, PAYONCE):>21}{_latency(r, BASELINE):>22}"
            f"{_target(r):>10}{r.verdict:>6}"
        )
    return "\n".join(lines)


def table_markdown(report: Report) -> str:
    lines = [
        "| path | synchronous | payonce ops/s | baseline ops/s | ratio | payonce p50 / p99 µs "
        "| baseline p50 / p99 µs | target | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report.results:
        lines.append(
            f"| {r.path} | {r.mode} | {r.ops_per_s(PAYONCE):,.0f} | {r.ops_per_s(BASELINE):,.0f} "
            f"| {r.ratio:.2f}x | {_latency(r, PAYONCE)} | {_latency(r, BASELINE)} "
            f"| {_target(r)} | {r.verdict} |"
        )
    return "\n".join(lines)


def rounds_markdown(report: Report) -> str:
    lines = [
        "| path | synchronous | ratio per round | payonce ops/s per round "
        "| baseline ops/s per round |",
        "|---|---|---|---|---|",
    ]
    for r in report.results:
        ratios = ", ".join(f"{x:.2f}" for x in r.round_ratios)
        p_ops = ", ".join(f"{p.ops_per_s:,.0f}" for p, _ in r.rounds)
        b_ops = ", ".join(f"{b.ops_per_s:,.0f}" for _, b in r.rounds)
        lines.append(f"| {r.path} | {r.mode} | {ratios} | {p_ops} | {b_ops} |")
    return "\n".join(lines)


def overhead_lines(report: Report) -> list[str]:
    """What payonce adds per call, from the median throughputs and the median p50s."""
    out = []
    for r in report.results:
        p, b = r.ops_per_s(PAYONCE), r.ops_per_s(BASELINE)
        if p and b:
            out.append(
                f"- {r.path}, {r.mode}: {1e6 / p:,.0f} µs per call against {1e6 / b:,.0f} µs "
                f"(payonce adds {1e6 / p - 1e6 / b:,.0f} µs); at the median call "
                f"{r.p50(PAYONCE):,.0f} µs against {r.p50(BASELINE):,.0f} µs "
                f"(p50 ratio {r.p50(BASELINE) / r.p50(PAYONCE):.2f}x)."
            )
    return out


def summary(report: Report) -> str:
    """Targets met or not, one line."""
    judged = [r for r in report.results if r.target is not None]
    missed = [
        f"{r.path}/{r.mode} {r.ratio:.2f}x < {r.target:.2f}x" for r in judged if r.verdict == "FAIL"
    ]
    if not missed:
        return f"all {len(judged)} targets met"
    return f"{len(judged) - len(missed)} of {len(judged)} targets met; missed: " + "; ".join(missed)


def profile_markdown(report: Report) -> str:
    counts = ", ".join(f"{label} {n:.0f}" for label, n in report.statements.items())
    sections = [f"SQL statements per call (`Connection.execute` calls): {counts}."]
    for label, rows in report.profile.items():
        lines = [
            f"#### {label}, {report.config.profile_ops:,} calls",
            "",
            "| self µs/call | cumulative µs/call | calls/call | function |",
            "|---:|---:|---:|---|",
        ]
        lines += [f"| {tt:.1f} | {ct:.1f} | {nc:.1f} | `{where}` |" for tt, ct, nc, where in rows]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


# -- the report -----------------------------------------------------------------------------------

_BASELINES = """\
- **fresh**: canonical JSON of the intent (`json.dumps`, sorted keys, no whitespace), its SHA-256
  fingerprint, the HMAC-SHA256 key and provider key; claim = `BEGIN IMMEDIATE`; `INSERT` the
  CLAIMED record; `INSERT` its ledger row (SHA-256 over the row's fields, chained to genesis);
  `COMMIT`; call `fn`; complete = `BEGIN IMMEDIATE`; `UPDATE … SET status, outcome, ledger_head,
  updated_at, lease_expires_at WHERE scope = ? AND key = ? AND token = 1 AND status = 'CLAIMED'`
  (fenced); `INSERT` its ledger row (hash chained to the claim's); `COMMIT`. Two transactions, two
  ledger rows, a hash per row. The ledger `seq` is the INTEGER PRIMARY KEY, assigned by SQLite
  and left out of the hash.
- **replay**: canonical JSON, fingerprint and HMAC key; one point `SELECT status, fingerprint,
  outcome`; status and fingerprint compared; `json.loads` of the outcome.
- **concurrent**: the fresh work with `INSERT OR IGNORE` as the claim: the caller whose insert
  took the row writes its ledger row, commits, calls `fn` and completes; the others read the row
  in the same transaction, then poll it until it is SUCCEEDED.

What payonce does on top: it canonicalises through `Intent`, derives the provider key, builds
frozen `NewRecord`/`Record`/`Entry` values, asks the pure `decide` function what to do, reads the
replay columns before taking the write lock (so a replay never writes), reads the key's chain head
under it (a released or purged key keeps its chain and its fencing tokens), writes the holder's
complete as a compare-and-set on the token and the ledger head of the record it handed out
(falling back to a read when that record changed), writes the mutable columns back, and maps
driver errors. The profile below counts the SQL statements each side runs per call."""


def render(report: Report, command: str) -> str:
    """The markdown report."""
    c, env = report.config, report.environment
    bound = (
        f" The time bound ({c.max_seconds:.0f} s) stopped the run after {report.rounds_done} "
        "round(s); the figures are over those."
        if report.stopped_early
        else ""
    )
    method = [
        "- One process, one run. A template database is created by `SQLiteStore` (so tables, "
        f"indexes and triggers are payonce's), filled with {c.rows:,} SUCCEEDED records and two "
        "ledger rows each (`executemany`, one transaction), `ANALYZE`d and checkpointed, then "
        "copied to a payonce file and a baseline file per synchronous mode. The baseline file is "
        "opened by a `SQLiteStore` once too, then used through a raw `sqlite3` connection with "
        "the store's PRAGMAs (WAL, busy_timeout 30 s, synchronous, foreign_keys).",
        "- payonce: `Guard(SQLiteStore(path, synchronous=mode), secret=…, scope=…)` with the "
        'system clock and default options; `guard.run(intent, fn)` where `fn` returns `{"id": '
        '"ch_x"}`; every intent has a unique reference. Intents are built before timing on both '
        f"sides: building one validated `Intent` costs {report.intent_us:.1f} µs, which a caller "
        "pays on top of the payonce figures.",
        f"- Warm-up: {c.warmup_fresh} fresh calls, {c.warmup_replay:,} replays and "
        f"{c.warmup_keys} concurrent keys per side and mode, not counted.",
        f"- Each round runs, per mode and side, {c.fresh_ops:,} fresh calls, {c.replay_ops:,} "
        "replays (finished intents drawn at random, the same draw for both sides) and "
        f"{c.concurrent_keys} concurrent keys. Each path is cut into {c.chunks} chunks and the "
        "sides alternate chunk by chunk (who goes first alternates too), so noise hits both.",
        "- Latency: `time.perf_counter_ns` around each call. Throughput: calls divided by the "
        "summed time of the chunks. Garbage collection stays on: payonce's allocations are part "
        "of its cost.",
        f"- `concurrent`: {CALLERS} persistent threads (connections opened in the warm-up) wait "
        "on a barrier per key whose action stamps the start. A caller's latency runs until it "
        "holds the outcome; busy time per key runs until the last of the 8 does, and ops/s counts "
        "calls. Each side checks that exactly one caller per key ran `fn` and that all 8 got its "
        "value. Both sides poll on the guard's schedule (5 ms, doubling, at most 100 ms), so the "
        "comparison is of the store work, not of the poll policy.",
        f"- Bounds: fixed counts, and measuring stops after {c.max_seconds:.0f} s (the report "
        "then says how many rounds ran).",
    ]
    sections = [
        "# Performance",
        f"Generated by `{command}` (`make bench BENCH_ARGS=…`); re-run it rather than editing the "
        "figures. Benchmarks live in `benchmarks/` and are not part of the test suite "
        "(DESIGN §12). The production stores (PostgreSQL, Redis) are measured by `python -m "
        "benchmarks.stores_bench`: its summary closes this page, the whole report is "
        "[performance-stores.md](performance-stores.md).",
        "## Result",
        "\n".join(
            [
                f"- date: {env['date']}",
                f"- machine: {env['machine']}; `nproc` = {env['nproc']}; load average "
                f"{env['load']} at the start, {report.load_after} at the end",
                f"- Python {env['python']}, SQLite {env['sqlite']}",
                f"- disk: {env['fsync']}, in the database directory",
                f"- run: {report.rounds_done} round(s), {report.total_seconds:.0f} s in all; "
                f"{c.rows:,} finished records per database, built in {report.build_seconds:.1f} s",
            ]
        ),
        table_markdown(report),
        f"**Targets:** {summary(report)}.{bound}",
        "Throughput and latencies are medians over the rounds; the ratio is the median of the "
        "per-round ratios (payonce ops/s ÷ baseline ops/s), since the two sides of a round "
        "shared the machine's state.",
        "## Method",
        "\n".join(method),
        "## What each baseline does",
        "The baseline is the irreducible work written by hand with stdlib `sqlite3`: flat "
        "functions, module constants and local variables, on the same schema and PRAGMAs, doing "
        "the same durable work.",
        _BASELINES,
        "## Reading the numbers",
        "\n".join(overhead_lines(report)),
        "At FULL each commit waits for an fsync of the WAL, which both sides pay twice per fresh "
        "call, so payonce's fixed CPU cost is a smaller share; at NORMAL commits do not fsync and "
        "the comparison is CPU against CPU (the p99s there are mostly WAL checkpoints, which fsync "
        "even at NORMAL, and scheduling noise). Replays never write on either side. Concurrent "
        "duplicates mostly wait: on the write lock (SQLite's busy handler sleeps 1, 2, 5, 10 … "
        "ms between tries) and on the poll schedule, the same on both sides.",
        "### Per round",
        rounds_markdown(report),
    ]
    if report.profile:
        sections += [
            "## Profile",
            "`cProfile` of the same calls on fresh copies of the database, after the timed "
            "rounds, top functions by self time. Profiling inflates Python-level costs several "
            "times over, so read the shares and the call counts, not the absolute figures.",
            profile_markdown(report),
        ]
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    report = run(_config(args), parent=args.dir, keep=args.keep, log=lambda s: print(s, flush=True))
    env = report.environment
    print()
    print(f"{env['date']} · nproc {env['nproc']} · Python {env['python']} · SQLite {env['sqlite']}")
    print(f"{env['fsync']} · load {env['load']} → {report.load_after}")
    print(table_text(report))
    print()
    print("\n".join(overhead_lines(report)))
    print(f"targets: {summary(report)}")
    if report.stopped_early:
        print(f"(time bound hit: {report.rounds_done} round(s) measured)")
    if args.out is not None:
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m benchmarks.run", *given])
        # The stores benchmark's summary in the same file is its own: carried over as it is.
        stores = sections.kept(args.out, sections.STORES)
        text = render(report, command) + ("" if stores is None else f"\n{stores}\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

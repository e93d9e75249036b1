"""payonce on SQLite next to the hand-written baseline, measured in the same run (DESIGN §12).

Three paths, each at ``synchronous=FULL`` and ``NORMAL``:

- ``fresh``: ``guard.run`` of a new intent with a trivial function, against the irreducible work
  done by hand with ``sqlite3``: derive the key, claim (one transaction, two rows), call, complete
  (one transaction, one update and one row).
- ``replay``: ``guard.run`` of a finished intent, against key derivation, one point ``SELECT`` and
  ``json.loads`` of the outcome.
- ``concurrent``: 8 threads released together on one key; the time until all 8 hold the outcome.

Both sides run on copies of one pre-populated database created by ``SQLiteStore`` (identical
tables, indexes and triggers) with the same PRAGMAs, and alternate chunk by chunk inside each
round so that machine noise hits both. The report is rendered by ``benchmarks.run``.
"""

from __future__ import annotations

import cProfile
import hashlib
import hmac
import itertools
import json
import math
import os
import platform
import pstats
import queue
import random
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from payonce import Guard, Intent, SQLiteStore

SECRET: Final = b"payonce-benchmark-secret-0123456789abcdef"
SCOPE: Final = "tenant-bench"
CALLERS: Final = 8
MODES: Final = ("FULL", "NORMAL")
PATHS: Final = ("fresh", "replay", "concurrent")
# The targets: payonce throughput as a fraction of the baseline's, per (path, mode).
TARGETS: Final[dict[tuple[str, str], float]] = {
    ("fresh", "FULL"): 0.75,
    ("fresh", "NORMAL"): 0.6,
    ("replay", "FULL"): 0.6,
    ("replay", "NORMAL"): 0.6,
}
VALUE: Final = {"id": "ch_x"}
GENESIS: Final = "0" * 64
LEASE_US: Final = 60_000_000  # the guard's default lease, 60 s
FIRST_POLL: Final = 0.005  # the guard's poll schedule: 5 ms, doubling, at most 100 ms
MAX_POLL: Final = 0.1
WAIT_S: Final = 5.0  # the guard's default wait


@dataclass(frozen=True, slots=True)
class Config:
    """How much to measure. The run stops measuring (and says so) once ``max_seconds`` pass."""

    rows: int  # finished records in each database before the first measurement
    rounds: int
    fresh_ops: int  # per side, per round, per mode
    replay_ops: int
    concurrent_keys: int  # keys per side, per round, per mode; 8 calls each
    chunks: int  # each round alternates the two sides this many times per path
    warmup_fresh: int
    warmup_replay: int
    warmup_keys: int
    max_seconds: float
    profile_ops: int  # 0: no profile

    @classmethod
    def full(cls, rounds: int = 3) -> Config:
        return cls(
            rows=100_000,
            rounds=rounds,
            fresh_ops=2_000,
            replay_ops=10_000,
            concurrent_keys=60,
            chunks=40,
            warmup_fresh=300,
            warmup_replay=2_000,
            warmup_keys=6,
            max_seconds=900.0,
            profile_ops=2_000,
        )

    @classmethod
    def quick(cls, rounds: int = 3) -> Config:
        return cls(
            rows=10_000,
            rounds=rounds,
            fresh_ops=200,
            replay_ops=1_000,
            concurrent_keys=10,
            chunks=5,
            warmup_fresh=50,
            warmup_replay=200,
            warmup_keys=2,
            max_seconds=120.0,
            profile_ops=300,
        )


# -- statistics -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Series:
    """One side of one path in one round: per-operation latencies and the total busy time."""

    latencies_ns: list[int] = field(default_factory=list)
    elapsed_ns: int = 0

    @property
    def ops(self) -> int:
        return len(self.latencies_ns)

    @property
    def ops_per_s(self) -> float:
        return self.ops / (self.elapsed_ns / 1e9) if self.elapsed_ns else 0.0

    def percentile_us(self, q: float) -> float:
        """Nearest-rank percentile, in microseconds."""
        if not self.latencies_ns:
            return math.nan
        ordered = sorted(self.latencies_ns)
        rank = min(max(math.ceil(q / 100 * len(ordered)), 1), len(ordered))
        return ordered[rank - 1] / 1000

    def merge(self, other: Series) -> None:
        self.latencies_ns.extend(other.latencies_ns)
        self.elapsed_ns += other.elapsed_ns


PAYONCE: Final = 0
BASELINE: Final = 1


@dataclass(slots=True)
class PathResult:
    """A path in one mode: a (payonce, baseline) pair of series per round."""

    path: str
    mode: str
    rounds: list[tuple[Series, Series]] = field(default_factory=list)

    @property
    def target(self) -> float | None:
        return TARGETS.get((self.path, self.mode))

    def _median(self, side: int, stat: Callable[[Series], float]) -> float:
        values = [stat(pair[side]) for pair in self.rounds if pair[side].ops]
        return statistics.median(values) if values else math.nan

    def ops_per_s(self, side: int) -> float:
        return self._median(side, lambda s: s.ops_per_s)

    def p50(self, side: int) -> float:
        return self._median(side, lambda s: s.percentile_us(50))

    def p99(self, side: int) -> float:
        return self._median(side, lambda s: s.percentile_us(99))

    @property
    def round_ratios(self) -> list[float]:
        return [p.ops_per_s / b.ops_per_s for p, b in self.rounds if p.ops and b.ops]

    @property
    def ratio(self) -> float:
        """The median of the per-round ratios: each round's pair shared the machine's state."""
        ratios = self.round_ratios
        return statistics.median(ratios) if ratios else math.nan

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "PASS" if self.ratio >= self.target else "FAIL"


@dataclass(slots=True)
class Report:
    config: Config
    environment: dict[str, str]
    results: list[PathResult]
    rounds_done: int
    stopped_early: bool
    build_seconds: float
    total_seconds: float
    intent_us: float  # cost of building one Intent, outside both timed paths
    load_after: str
    # label -> rows of (self µs/op, cumulative µs/op, calls/op, "file:line(function)")
    profile: dict[str, list[tuple[float, float, float, str]]] = field(default_factory=dict)
    statements: dict[str, float] = field(default_factory=dict)  # label -> SQL statements/call


# -- the hand-written baseline --------------------------------------------------------------------
# The same durable work as payonce, by hand and flat (module constants, locals, no objects):
# canonical JSON, HMAC-SHA256 keys, a SHA-256 per ledger row chained to the key's previous row, and
# two BEGIN IMMEDIATE transactions per fresh call. The ledger seq is the INTEGER PRIMARY KEY, so
# SQLite assigns MAX(seq) + 1 itself and the hash leaves it out.

_RECORD_COLUMNS: Final = (
    "scope, key, status, fingerprint, intent, provider_key, operation, amount, currency, family,"
    " generation, token, attempt, lease_expires_at, outcome, reason, ledger_head, created_at,"
    " updated_at"
)
_ENTRY_COLUMNS: Final = (
    "at, scope, key, event, status_from, status_to, token, attempt, amount, currency, detail,"
    " prev_hash, hash"
)
B_INSERT: Final = (
    f"INSERT INTO payonce_records ({_RECORD_COLUMNS})"
    " VALUES (?, ?, 'CLAIMED', ?, ?, ?, ?, ?, ?, NULL, 0, 1, 1, ?, NULL, NULL, ?, ?, ?)"
)
B_INSERT_OR_IGNORE: Final = B_INSERT.replace("INSERT INTO", "INSERT OR IGNORE INTO")
B_CLAIMED_ENTRY: Final = (
    f"INSERT INTO payonce_ledger ({_ENTRY_COLUMNS})"
    " VALUES (?, ?, ?, 'claimed', NULL, 'CLAIMED', 1, 1, ?, ?, ?, ?, ?)"
)
B_SUCCEEDED_ENTRY: Final = (
    f"INSERT INTO payonce_ledger ({_ENTRY_COLUMNS})"
    " VALUES (?, ?, ?, 'succeeded', 'CLAIMED', 'SUCCEEDED', 1, 1, ?, ?, ?, ?, ?)"
)
B_COMPLETE: Final = (
    "UPDATE payonce_records SET status = 'SUCCEEDED', outcome = ?, lease_expires_at = NULL,"
    " ledger_head = ?, updated_at = ?"
    " WHERE scope = ? AND key = ? AND token = 1 AND status = 'CLAIMED'"
)
B_SELECT: Final = (
    "SELECT status, fingerprint, outcome FROM payonce_records WHERE scope = ? AND key = ?"
)

_dumps = json.dumps
_loads = json.loads
_sha256 = hashlib.sha256
_hmac_new = hmac.new
_time_ns = time.time_ns


def baseline_connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """A raw connection with the PRAGMAs ``SQLiteStore`` sets."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _b_key(intent: dict[str, Any]) -> tuple[str, str, str]:
    """Canonical JSON, fingerprint and key of an intent."""
    intent_json = _dumps(intent, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    material = f"{SCOPE}\x1f{intent['operation']}\x1f{intent['reference']}\x1f{intent['sequence']}"
    key = "k1_" + _hmac_new(SECRET, material.encode(), _sha256).hexdigest()
    return intent_json, _sha256(intent_json.encode()).hexdigest(), key


def _b_claim(conn: sqlite3.Connection, intent: dict[str, Any], sql: str) -> tuple[Any, ...]:
    """Insert the CLAIMED record and its ledger row in one transaction. Returns (won, key,
    fingerprint, head, row): ``row`` is the existing record's when the insert was ignored."""
    intent_json, fp, key = _b_key(intent)
    provider_key = "po1_" + _hmac_new(SECRET, key.encode(), _sha256).hexdigest()
    amount, currency, now = intent["amount"], intent["currency"], _time_ns() // 1000
    detail = '{"fingerprint":"' + fp + '","provider_key":"' + provider_key + '"}'
    chained = f"{now}|{SCOPE}|{key}|claimed||CLAIMED|1|1|{amount}|{currency}|{detail}|{GENESIS}"
    head = _sha256(chained.encode()).hexdigest()
    record = (SCOPE, key, fp, intent_json, provider_key, intent["operation"], amount, currency)
    row = None
    conn.execute("BEGIN IMMEDIATE")
    try:
        won = conn.execute(sql, (*record, now + LEASE_US, head, now, now)).rowcount == 1
        if won:
            entry = (now, SCOPE, key, amount, currency, detail, GENESIS, head)
            conn.execute(B_CLAIMED_ENTRY, entry)
        else:
            row = conn.execute(B_SELECT, (SCOPE, key)).fetchone()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return won, key, fp, head, row


def _b_complete(
    conn: sqlite3.Connection, intent: dict[str, Any], key: str, head: str, value: Any
) -> None:
    """SUCCEEDED, fenced on the token, and its ledger row chained to the claim's, in one
    transaction."""
    body = _dumps({"value": value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    amount, currency, now = intent["amount"], intent["currency"], _time_ns() // 1000
    detail = '{"outcome_sha256":"' + _sha256(body.encode()).hexdigest() + '"}'
    chained = (
        f"{now}|{SCOPE}|{key}|succeeded|CLAIMED|SUCCEEDED|1|1|{amount}|{currency}|{detail}|{head}"
    )
    digest = _sha256(chained.encode()).hexdigest()
    conn.execute("BEGIN IMMEDIATE")
    try:
        fenced = conn.execute(B_COMPLETE, (body, digest, now, SCOPE, key)).rowcount == 1
        if fenced:
            entry = (now, SCOPE, key, amount, currency, detail, head, digest)
            conn.execute(B_SUCCEEDED_ENTRY, entry)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if not fenced:
        raise RuntimeError("baseline: lease lost")


def baseline_fresh(conn: sqlite3.Connection, intent: dict[str, Any], fn: Callable[[], Any]) -> Any:
    """Claim, call, complete: two transactions, two ledger rows, a hash per row."""
    _, key, _, head, _ = _b_claim(conn, intent, B_INSERT)
    value = fn()
    _b_complete(conn, intent, key, head, value)
    return value


def baseline_replay(conn: sqlite3.Connection, intent: dict[str, Any]) -> Any:
    """Derive the key, read the record at one point, check it, decode the outcome."""
    _, fp, key = _b_key(intent)
    row = conn.execute(B_SELECT, (SCOPE, key)).fetchone()
    if row is None or row[0] != "SUCCEEDED" or row[1] != fp:
        raise RuntimeError("baseline: not a finished record of this intent")
    return _loads(row[2])["value"]


def baseline_concurrent(
    conn: sqlite3.Connection, intent: dict[str, Any], fn: Callable[[], Any]
) -> Any:
    """INSERT OR IGNORE arbitrates: the winner calls and completes, the others poll its row."""
    won, key, fp, head, row = _b_claim(conn, intent, B_INSERT_OR_IGNORE)
    if won:
        value = fn()
        _b_complete(conn, intent, key, head, value)
        return value
    poll, deadline = FIRST_POLL, time.monotonic() + WAIT_S
    while True:
        if row is None or row[1] != fp:
            raise RuntimeError("baseline: the record vanished or holds another intent")
        if row[0] == "SUCCEEDED":
            return _loads(row[2])["value"]
        if time.monotonic() >= deadline:
            raise RuntimeError("baseline: still in progress after the wait")
        time.sleep(poll)
        poll = min(poll * 2, MAX_POLL)
        row = conn.execute(B_SELECT, (SCOPE, key)).fetchone()


# -- databases ------------------------------------------------------------------------------------


def build_template(path: Path, rows: int) -> None:
    """A database created by SQLiteStore holding ``rows`` finished records and two ledger rows
    each (executemany, one transaction), then analysed and checkpointed."""
    SQLiteStore(path).close()
    base = _time_ns() // 1000 - 3_600_000_000  # an hour ago: inside retention
    body = '{"value":{"id":"ch_pre"}}'
    records: list[tuple[Any, ...]] = []
    entries: list[tuple[Any, ...]] = []
    for i in range(rows):
        amount, at = 1000 + i % 500, base + i * 10
        intent = {"amount": amount, "currency": "usd", "customer": "cus_prepopulated"}
        intent |= {"operation": "charge", "reference": f"pre-{i:08d}", "sequence": 0}
        intent_json = json.dumps(intent, sort_keys=True, separators=(",", ":"))
        fp = _sha256(intent_json.encode()).hexdigest()
        key = "k1_" + _hmac_new(SECRET, intent_json.encode(), _sha256).hexdigest()
        provider_key = "po1_" + _sha256(key.encode()).hexdigest()
        h1, h2 = _sha256(f"{key}|1".encode()).hexdigest(), _sha256(f"{key}|2".encode()).hexdigest()
        head = (SCOPE, key, "SUCCEEDED", fp, intent_json, provider_key, "charge", amount, "usd")
        records.append((*head, None, 0, 1, 1, None, body, None, h2, at, at + 5))
        tail = (1, 1, amount, "usd")
        claimed = ("claimed", None, "CLAIMED", *tail, '{"fingerprint":"' + fp + '"}', GENESIS, h1)
        entries.append((2 * i + 1, at, SCOPE, key, *claimed))
        succeeded = ("succeeded", "CLAIMED", "SUCCEEDED", *tail, '{"outcome_sha256":"-"}', h1, h2)
        entries.append((2 * i + 2, at + 5, SCOPE, key, *succeeded))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO payonce_records ({_RECORD_COLUMNS}) VALUES ({', '.join('?' * 19)})",
            records,
        )
        conn.executemany(
            f"INSERT INTO payonce_ledger (seq, {_ENTRY_COLUMNS}) VALUES ({', '.join('?' * 14)})",
            entries,
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@dataclass(slots=True)
class _Pair:
    """The two databases of one mode, what runs on them, and the intents finished on both."""

    mode: str
    store: SQLiteStore
    guard: Guard
    conn: sqlite3.Connection  # the baseline's connection for the main thread
    baseline_path: Path
    finished: list[tuple[Intent, dict[str, Any]]] = field(default_factory=list)

    def close(self) -> None:
        self.store.close()
        self.conn.close()


def _open_pair(template: Path, workdir: Path, mode: str, tag: str = "") -> _Pair:
    payonce_path = workdir / f"payonce-{mode.lower()}{tag}.db"
    baseline_path = workdir / f"baseline-{mode.lower()}{tag}.db"
    shutil.copyfile(template, payonce_path)
    shutil.copyfile(template, baseline_path)
    # The baseline file is opened by a SQLiteStore first, so it has exactly payonce's schema.
    SQLiteStore(baseline_path, synchronous=mode).close()
    store = SQLiteStore(payonce_path, synchronous=mode)
    guard = Guard(store, secret=SECRET, scope=SCOPE)
    return _Pair(mode, store, guard, baseline_connect(baseline_path, mode), baseline_path)


# -- workloads ------------------------------------------------------------------------------------

_references = itertools.count()


def _new_intents(n: int) -> list[tuple[Intent, dict[str, Any]]]:
    """Intents with unique references, built before timing, with the baseline's plain dicts."""
    out = []
    for i in itertools.islice(_references, n):
        reference = f"order-{i:09d}"
        intent = Intent("charge", 1000 + i % 500, "usd", customer="cus_bench", reference=reference)
        out.append((intent, intent.canonical()))
    return out


def _charge(attempt: object) -> dict[str, str]:
    return {"id": "ch_x"}


def _charge0() -> dict[str, str]:
    return {"id": "ch_x"}


def _timed(op: Callable[[Any], Any], items: Sequence[Any], series: Series) -> list[Any]:
    results = []
    latencies = series.latencies_ns
    clock = time.perf_counter_ns
    start = clock()
    for item in items:
        t0 = clock()
        results.append(op(item))
        latencies.append(clock() - t0)
    series.elapsed_ns += clock() - start
    return results


def _both(
    first_payonce: bool, payonce: Callable[[], Any], baseline: Callable[[], Any]
) -> tuple[Any, Any]:
    if first_payonce:
        p = payonce()
        return p, baseline()
    b = baseline()
    return payonce(), b


def _step_fresh(pair: _Pair, n: int, p: Series, b: Series, payonce_first: bool) -> None:
    items, guard, conn = _new_intents(n), pair.guard, pair.conn
    outcomes, values = _both(
        payonce_first,
        lambda: _timed(lambda it: guard.run(it[0], _charge), items, p),
        lambda: _timed(lambda it: baseline_fresh(conn, it[1], _charge0), items, b),
    )
    if any(o.replayed or o.value != VALUE for o in outcomes) or any(v != VALUE for v in values):
        raise RuntimeError("a fresh call did not return its own new outcome")
    pair.finished.extend(items)


def _step_replay(
    pair: _Pair, n: int, p: Series, b: Series, payonce_first: bool, *, rng: random.Random
) -> None:
    items, guard, conn = rng.choices(pair.finished, k=n), pair.guard, pair.conn
    outcomes, values = _both(
        payonce_first,
        lambda: _timed(lambda it: guard.run(it[0], _charge), items, p),
        lambda: _timed(lambda it: baseline_replay(conn, it[1]), items, b),
    )
    if any(not o.replayed or o.value != VALUE for o in outcomes) or any(v != VALUE for v in values):
        raise RuntimeError("a replay did not return the recorded outcome")


class _Crew:
    """CALLERS persistent threads, so every connection is opened once, in the warm-up. For each
    key all of them wait on a barrier whose action stamps the start; each stamps its own end."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._inboxes: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in range(size)]
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True, name=f"caller-{i}")
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int) -> None:
        local: dict[str, sqlite3.Connection] = {}  # this thread's baseline connections
        while (job := self._inboxes[index].get()) is not None:
            call, items, start, end = job
            ends: list[int] = []
            values: list[Any] = []
            error: BaseException | None = None
            try:
                for item in items:
                    start.wait()
                    values.append(call(local, item))
                    ends.append(time.perf_counter_ns())
                    end.wait()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                start.abort()
                end.abort()
                error = exc
            self._outbox.put((ends, values, error))
        for conn in local.values():
            conn.close()

    def run(self, call: Callable[[dict[str, Any], Any], Any], items: Sequence[Any]) -> Series:
        """Every caller runs ``call(local, item)`` for each item. Latency: each caller's time
        from the common release; busy time: per item, until the last caller had its value."""
        starts: list[int] = []
        start = threading.Barrier(self.size, action=lambda: starts.append(time.perf_counter_ns()))
        end = threading.Barrier(self.size)
        for inbox in self._inboxes:
            inbox.put((call, items, start, end))
        outputs = [self._outbox.get() for _ in range(self.size)]
        errors = [e for _, _, e in outputs if e is not None]
        if errors:
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            raise RuntimeError("a concurrent caller failed") from (real or errors)[0]
        series = Series()
        for k in range(len(items)):
            ends = [out[0][k] for out in outputs]
            if any(out[1][k] != VALUE for out in outputs):
                raise RuntimeError("a concurrent caller did not get the winner's value")
            series.latencies_ns.extend(e - starts[k] for e in ends)
            series.elapsed_ns += max(ends) - starts[k]
        return series

    def close(self) -> None:
        for inbox in self._inboxes:
            inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=10)


def _step_concurrent(pair: _Pair, crew: _Crew, n: int, payonce_first: bool) -> tuple[Series, ...]:
    items = _new_intents(n)
    p_calls: list[str] = []
    b_calls: list[str] = []

    def p_charge(attempt: Any) -> dict[str, str]:
        p_calls.append(attempt.key)
        return {"id": "ch_x"}

    def b_charge() -> dict[str, str]:
        b_calls.append("called")
        return {"id": "ch_x"}

    def p_call(local: dict[str, Any], item: tuple[Intent, dict[str, Any]]) -> Any:
        return pair.guard.run(item[0], p_charge).value

    def b_call(local: dict[str, Any], item: tuple[Intent, dict[str, Any]]) -> Any:
        if (conn := local.get(pair.mode)) is None:
            conn = local[pair.mode] = baseline_connect(pair.baseline_path, pair.mode)
        return baseline_concurrent(conn, item[1], b_charge)

    p, b = _both(payonce_first, lambda: crew.run(p_call, items), lambda: crew.run(b_call, items))
    # Exactly one of the 8 callers ran the function, per key, on both sides.
    if len(p_calls) != n or len(set(p_calls)) != n or len(b_calls) != n:
        raise RuntimeError(f"{len(p_calls)}/{len(b_calls)} calls for {n} keys: expected one each")
    return p, b


def _chunks(total: int, parts: int) -> Iterator[int]:
    size, extra = divmod(total, parts)
    sizes = (size + (i < extra) for i in range(parts))
    return (s for s in sizes if s)


# -- the run --------------------------------------------------------------------------------------


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


def environment(workdir: Path) -> dict[str, str]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.release()}, {cpu}",
        "nproc": str(len(os.sched_getaffinity(0))),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "sqlite": sqlite3.sqlite_version,
        "fsync": _fsync_latency(workdir),
        "load": _load(),
    }


def _fsync_latency(workdir: Path) -> str:
    """The median of 100 fsyncs of a 4 KiB append in the database directory."""
    probe = workdir / "fsync.probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    samples = []
    try:
        for _ in range(100):
            os.write(fd, b"\0" * 4096)
            t0 = time.perf_counter_ns()
            os.fsync(fd)
            samples.append(time.perf_counter_ns() - t0)
    finally:
        os.close(fd)
        probe.unlink()
    return f"{statistics.median(samples) / 1000:.0f} µs median per fsync of 4 KiB"


@contextmanager
def _workspace(parent: Path | None, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="payonce-bench-", dir=parent))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def _intent_cost() -> float:
    """Microseconds to build one validated Intent (outside both timed paths)."""
    n = 5000
    t0 = time.perf_counter_ns()
    for i in range(n):
        Intent("charge", 1000, "usd", customer="cus_bench", reference=f"cost-{i}")
    return (time.perf_counter_ns() - t0) / n / 1000


def run(
    config: Config,
    *,
    parent: Path | None = None,
    keep: bool = False,
    log: Callable[[str], None] = print,
) -> Report:
    """Build the databases, warm up, measure every path in every round, then profile."""
    started = time.monotonic()
    deadline = started + config.max_seconds
    rng = random.Random(20260101)
    with _workspace(parent, keep) as workdir:
        env = environment(workdir)
        log(f"{workdir}: building {config.rows:,} finished records per database")
        template = workdir / "template.db"
        build_template(template, config.rows)
        build_seconds = time.monotonic() - started
        pairs = [_open_pair(template, workdir, mode) for mode in MODES]
        crew = _Crew(CALLERS)
        results = {
            (path, pair.mode): PathResult(path, pair.mode) for path in PATHS for pair in pairs
        }
        counts = {
            "fresh": config.fresh_ops,
            "replay": config.replay_ops,
            "concurrent": config.concurrent_keys,
        }
        rounds_done, stopped = 0, False
        try:
            log("warming up")
            for pair in pairs:
                _step_fresh(pair, config.warmup_fresh, Series(), Series(), True)
                _step_replay(pair, config.warmup_replay, Series(), Series(), True, rng=rng)
                _step_concurrent(pair, crew, config.warmup_keys, True)
            for r in range(config.rounds):
                if stopped or time.monotonic() >= deadline:
                    stopped = True
                    break
                log(f"round {r + 1}/{config.rounds}")
                current = {key: (Series(), Series()) for key in results}
                for path, pair in itertools.product(PATHS, pairs):
                    p, b = current[(path, pair.mode)]
                    for j, n in enumerate(_chunks(counts[path], config.chunks)):
                        if time.monotonic() >= deadline:
                            stopped = True
                            break
                        first = (j + r) % 2 == 0  # who goes first alternates too
                        if path == "fresh":
                            _step_fresh(pair, n, p, b, first)
                        elif path == "replay":
                            _step_replay(pair, n, p, b, first, rng=rng)
                        else:
                            cp, cb = _step_concurrent(pair, crew, n, first)
                            p.merge(cp)
                            b.merge(cb)
                for key, pair_series in current.items():
                    results[key].rounds.append(pair_series)
                rounds_done += 1
        finally:
            crew.close()
            for pair in pairs:
                pair.close()
        load_after = _load()
        intent_us = _intent_cost()
        profile: dict[str, list[tuple[float, float, float, str]]] = {}
        statements: dict[str, float] = {}
        if config.profile_ops:
            log("profiling")
            profile, statements = profile_paths(template, workdir, config.profile_ops)
    return Report(
        config=config,
        environment=env,
        results=[results[(path, mode)] for path in PATHS for mode in MODES],
        rounds_done=rounds_done,
        stopped_early=stopped,
        build_seconds=build_seconds,
        total_seconds=time.monotonic() - started,
        intent_us=intent_us,
        load_after=load_after,
        profile=profile,
        statements=statements,
    )


# -- profile --------------------------------------------------------------------------------------


def profile_paths(
    template: Path, workdir: Path, ops: int, top: int = 20
) -> tuple[dict[str, list[tuple[float, float, float, str]]], dict[str, float]]:
    """cProfile of payonce's fresh path (at NORMAL, where the CPU shows) and replay path, and of
    the baseline's, on fresh copies of the database: the ``top`` functions by self time, and
    the SQL statements per call (``Connection.execute`` calls)."""
    pair = _open_pair(template, workdir, "NORMAL", tag="-profile")
    out, statements = {}, {}
    try:
        _step_fresh(pair, 200, Series(), Series(), True)  # connections and caches warm
        items, guard, conn = _new_intents(ops), pair.guard, pair.conn
        bodies: dict[str, Callable[[], object]] = {
            "payonce fresh (NORMAL)": lambda: [guard.run(i, _charge) for i, _ in items],
            "baseline fresh (NORMAL)": lambda: [
                baseline_fresh(conn, d, _charge0) for _, d in items
            ],
            "payonce replay": lambda: [guard.run(i, _charge) for i, _ in items],
            "baseline replay": lambda: [baseline_replay(conn, d) for _, d in items],
        }
        for label, body in bodies.items():
            profiler = cProfile.Profile()
            profiler.runcall(body)
            stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
            rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
            out[label] = [
                (tt / ops * 1e6, ct / ops * 1e6, nc / ops, _where(func))
                for func, (_, nc, tt, ct, _) in rows
            ]
            statements[label] = (
                sum(v[1] for f, v in stats.items() if f[0] == "~" and f[2] == _EXECUTE) / ops
            )
    finally:
        pair.close()
    return out, statements


_EXECUTE: Final = "<method 'execute' of 'sqlite3.Connection' objects>"


_ROOTS: Final = (
    Path(__file__).resolve().parent.parent,
    Path(json.__file__).resolve().parent.parent,  # the standard library
)


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name  # a builtin, e.g. "<method 'execute' of 'sqlite3.Connection' objects>"
    path = Path(filename).resolve()
    for root in _ROOTS:
        if path.is_relative_to(root):
            return f"{path.relative_to(root)}:{line}({name})"
    return f"{filename}:{line}({name})"

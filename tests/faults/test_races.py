"""Concurrent duplicates (SCENARIOS R4, R5): many callers, one key, one call at the provider.

The provider's function sleeps inside the call to hold the first caller's claim open while the
duplicates arrive; that sleep simulates a slow provider and nothing asserts on its timing. The
multi-process race uses the system clock, since processes cannot share a ManualClock, with a
lease (30 s) far longer than any round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from payonce import (
    Attempt,
    Guard,
    InProgressError,
    Outcome,
    SQLiteStore,
    Store,
    SystemClock,
)
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET, make_store
from tests.faults import worker
from tests.faults.history import Ack, check_history

ROOT = Path(__file__).resolve().parents[2]
SLOW_CALL = 0.2  # seconds the provider holds the first call open
THREADS = 32
PROCESSES = 16
THREADS_PER_PROCESS = 2
ROUNDS = 20


class SlowProvider:
    """An in-process fake provider: records each movement, then stalls inside the call."""

    def __init__(self, stall: float) -> None:
        self.stall = stall
        self.movements: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, attempt: Attempt) -> dict[str, str]:
        with self._lock:
            value = {"id": f"ch_{len(self.movements) + 1}"}
            self.movements.append(
                {"provider_key": attempt.provider_key, "attempt": attempt.number, "value": value}
            )
        time.sleep(self.stall)
        return value


def race(callers: int, call: Callable[[], Outcome]) -> list[Outcome | BaseException]:
    """Run ``call`` in ``callers`` threads released together by a barrier; collect results."""
    barrier = threading.Barrier(callers)
    results: list[Outcome | BaseException] = [RuntimeError("no result")] * callers

    def caller(index: int) -> None:
        barrier.wait()
        try:
            results[index] = call()
        except BaseException as exc:  # collected and asserted on by the test
            results[index] = exc

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def assert_one_outcome(results: list[Outcome | BaseException]) -> list[Outcome]:
    """Every caller got the one outcome or InProgressError; exactly one caller ran the call."""
    unexpected = [r for r in results if not isinstance(r, Outcome | InProgressError)]
    assert not unexpected, unexpected
    outcomes = [r for r in results if isinstance(r, Outcome)]
    assert len({json.dumps(o.value, sort_keys=True) for o in outcomes}) == 1
    assert len({o.body for o in outcomes}) == 1
    assert [o.replayed for o in outcomes].count(False) == 1
    return outcomes


@pytest.mark.parametrize("waiting", [True, False], ids=["wait", "no-wait"])
def test_r4_concurrent_duplicates_threads(backend: str, tmp_path: Path, waiting: bool) -> None:
    store = make_store(backend, tmp_path)
    provider = SlowProvider(SLOW_CALL)
    # Waiting duplicates poll on the real clock and replay; without waiting they answer
    # InProgressError at once, so the manual clock never moves and the lease cannot expire.
    guard = Guard(
        store,
        secret=SECRET,
        scope=SCOPE,
        clock=SystemClock() if waiting else ManualClock(),
        lease=timedelta(seconds=30),
        wait=timedelta(seconds=10) if waiting else timedelta(0),
    )
    intent = worker.intent_for("r4-order")
    try:
        results = race(THREADS, lambda: guard.run(intent, provider))

        assert len(provider.movements) == 1
        outcomes = assert_one_outcome(results)
        if waiting:
            assert len(outcomes) == THREADS  # every duplicate waited for the first and replayed
        else:
            busy = [r for r in results if isinstance(r, InProgressError)]
            assert all(e.retry_after > timedelta(0) for e in busy)
        check_history(store, provider.movements, outcomes)
    finally:
        store.close()


def _results(stream: IO[str], expected: int) -> Iterator[dict[str, Any]]:
    """The next ``expected`` caller results a worker prints, skipping its progress events."""
    while expected:
        line = stream.readline()
        assert line, "a worker exited early; see its stderr file in tmp_path"
        parsed = json.loads(line)
        if "ok" in parsed:
            expected -= 1
            yield parsed


def _check_round(results: list[dict[str, Any]], movements: list[dict[str, Any]]) -> None:
    errors = {r["error"] for r in results if not r["ok"]}
    assert errors <= {"InProgressError"}, errors
    ok = [r for r in results if r["ok"]]
    assert len({r["body"] for r in ok}) == 1  # one outcome, byte for byte
    assert [r["replayed"] for r in ok].count(False) == 1
    moved = [m for m in movements if m["provider_key"] == ok[0]["provider_key"]]
    assert len(moved) == 1, moved  # the call ran exactly once in all processes together
    assert moved[0]["value"] == ok[0]["value"]


def test_r5_concurrent_duplicates_processes(tmp_path: Path) -> None:
    """16 processes x 2 threads race on one key of one SQLite file, 20 rounds; then 32 threads.

    One long-lived worker per process runs every round (interpreter start-up would dominate
    otherwise); the parent starts each round by writing one line to every worker's stdin once
    all of them report ready, so their callers hit the store together.
    """
    db, movements = tmp_path / "payonce.db", tmp_path / "movements.txt"
    command = [
        sys.executable,
        "-m",
        "tests.faults.worker",
        f"--db={db}",
        f"--movements={movements}",
        "--reference=r5",
        f"--rounds={ROUNDS}",
        f"--threads={THREADS_PER_PROCESS}",
        f"--sleep-in-fn={SLOW_CALL}",
        "--lease=30",
        "--wait=10",
    ]
    acknowledged: list[Ack | Outcome] = []
    with ExitStack() as stack:
        procs = []
        for n in range(PROCESSES):
            stderr = stack.enter_context((tmp_path / f"worker-{n}.err").open("w"))
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
            stack.enter_context(proc)  # closes its pipes and reaps it
            stack.callback(proc.kill)  # runs first: a failed round must not leave it blocked
            procs.append(proc)
        streams = [p.stdout for p in procs if p.stdout is not None]
        for rnd in range(ROUNDS):
            for stream in streams:
                assert json.loads(stream.readline()) == {"ready": rnd}
            for proc in procs:  # the start signal: every worker is blocked reading it
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            results = [r for s in streams for r in _results(s, THREADS_PER_PROCESS)]
            assert len(results) == PROCESSES * THREADS_PER_PROCESS
            _check_round(results, worker.read_movements(movements))
            acknowledged.extend(Ack(r["key"], r["body"]) for r in results if r["ok"])
        for proc in procs:
            assert proc.wait(timeout=60) == 0

    # A plain 32-thread round in this process, on the same file, through the same provider.
    store: Store = SQLiteStore(db)
    try:
        guard = Guard(
            store,
            secret=worker.SECRET,
            scope=worker.SCOPE,
            lease=timedelta(seconds=30),
            wait=timedelta(seconds=10),
        )
        fn = worker.provider(movements, SLOW_CALL, announce=False)
        intent = worker.intent_for("r5-threads")
        outcomes = assert_one_outcome(race(THREADS, lambda: guard.run(intent, fn)))
        acknowledged.extend(outcomes)

        all_movements = worker.read_movements(movements)
        assert len(all_movements) == ROUNDS + 1
        history = check_history(store, all_movements, acknowledged)
        assert len(history.records) == ROUNDS + 1
    finally:
        store.close()

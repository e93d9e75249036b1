"""Real crashes on SQLite (SCENARIOS R6-R8, I7): a worker process dies at a fault point.

The worker (``tests.faults.worker``) exits with ``os._exit(137)`` at a named fault point, or is
killed with SIGKILL while blocked inside the provider call. The parent then opens the same file
with a guard on a ManualClock started at the wall-clock time, so "before the lease expired" and
"after it" are set by advancing that clock, never by sleeping.

The worker's provider never deduplicates. The parent's provider deduplicates on the provider key,
as Stripe does, over the same movements file: a resumed call that reuses the stored provider key
replays the worker's movement instead of moving money again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from payonce import (
    Attempt,
    Event,
    InProgressError,
    OutcomeUnknownError,
    Record,
    SQLiteStore,
    Status,
    verify_ledger,
)
from payonce.testing import ManualClock
from tests import conftest
from tests.faults import worker
from tests.faults.history import check_history

ROOT = Path(__file__).resolve().parents[2]
LEASE = timedelta(seconds=30)
REFERENCE = "crash-order"
CRASHED = 137


class Crashed:
    """The files a crashed worker left, and the parent's view of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "payonce.db"
        self.movements = tmp_path / "movements.txt"
        self.intent = worker.intent_for(REFERENCE)
        self.calls: list[Attempt] = []
        self.store = SQLiteStore(self.db)
        # Started after the worker claimed, so its lease (on the wall clock) is still live.
        self.clock = ManualClock(datetime.now(UTC))
        self.guard = worker.impatient_guard(self.store, self.clock, lease=LEASE)
        self.key = self.guard.key_for(self.intent)

    def record(self) -> Record:
        record = self.store.get(worker.SCOPE, self.key)
        assert record is not None
        return record

    def events(self) -> list[Event]:
        return [e.event for e in self.store.entries(after=0, limit=100) if e.key == self.key]

    def expire_lease(self) -> None:
        expires_at = self.record().lease_expires_at
        assert expires_at is not None
        assert self.clock.now() < expires_at
        self.clock.advance(expires_at - self.clock.now() + timedelta(seconds=1))

    def provider(self) -> Callable[[Attempt], dict[str, str]]:
        """The parent's provider: deduplicates on the provider key (a Stripe-like gateway)."""

        def fn(attempt: Attempt) -> dict[str, str]:
            self.calls.append(attempt)
            return worker.move(self.movements, attempt.provider_key, attempt.number, dedupe=True)

        return fn


def run_worker(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.faults.worker",
            f"--db={tmp_path / 'payonce.db'}",
            f"--movements={tmp_path / 'movements.txt'}",
            f"--reference={REFERENCE}",
            f"--lease={LEASE.total_seconds()}",
            "--wait=0",
            *options,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def crashed(tmp_path: Path) -> Iterator[Callable[..., Crashed]]:
    opened: list[Crashed] = []

    def crash(*options: str) -> Crashed:
        done = run_worker(tmp_path, *options)
        assert done.returncode == CRASHED, done.stderr
        assert not [line for line in done.stdout.splitlines() if '"ok"' in line]  # no reply
        opened.append(Crashed(tmp_path))
        return opened[-1]

    yield crash
    for state in opened:
        state.store.close()


def test_worker_derives_the_suite_keys() -> None:
    # The parent's guard must derive the worker's keys: same secret and scope as the suite.
    assert (worker.SECRET, worker.SCOPE) == (conftest.SECRET, conftest.SCOPE)


@pytest.mark.parametrize("resumable", [False, True], ids=["plain", "resumable"])
def test_r6_crash_after_claim(crashed: Callable[..., Crashed], resumable: bool) -> None:
    state = crashed("--crash-at=after_claim")
    record = state.record()
    assert record.status is Status.CLAIMED
    assert record.lease is not None
    assert worker.read_movements(state.movements) == []
    fn = state.provider()

    with pytest.raises(InProgressError):  # the dead worker's lease is still live
        state.guard.run(state.intent, fn, resumable=resumable)
    assert state.calls == []

    state.expire_lease()
    if not resumable:
        with pytest.raises(OutcomeUnknownError):
            state.guard.run(state.intent, fn)
        assert state.calls == []
        assert state.record().status is Status.UNKNOWN
        check_history(state.store, [], unresolved={state.key})
        # The resolution step a Reconciler would take for a resumable provider.
    outcome = state.guard.run(state.intent, fn, resumable=True)

    assert [(a.provider_key, a.number) for a in state.calls] == [
        (record.provider_key, 2 if resumable else 3)
    ]
    movements = worker.read_movements(state.movements)
    assert len(movements) == 1
    assert outcome.value == movements[0]["value"]
    assert not outcome.replayed
    check_history(state.store, movements, [outcome])


@pytest.mark.parametrize("resumable", [False, True], ids=["plain", "resumable"])
def test_r7_crash_after_call_before_complete(
    crashed: Callable[..., Crashed], resumable: bool
) -> None:
    state = crashed("--crash-at=before_complete")
    movements = worker.read_movements(state.movements)
    assert len(movements) == 1  # the provider moved money; the worker died before recording it
    assert state.record().status is Status.CLAIMED
    assert state.events() == [Event.CLAIMED]
    fn = state.provider()

    state.expire_lease()
    if not resumable:
        with pytest.raises(OutcomeUnknownError):
            state.guard.run(state.intent, fn)
        assert state.calls == []
        assert state.record().status is Status.UNKNOWN
        check_history(state.store, movements, unresolved={state.key})
    outcome = state.guard.run(state.intent, fn, resumable=True)

    # The same provider key as the lost call: a deduplicating provider replays it.
    assert [a.provider_key for a in state.calls] == [movements[0]["provider_key"]]
    assert worker.read_movements(state.movements) == movements  # never a second movement
    assert outcome.value == movements[0]["value"]
    assert state.record().status is Status.SUCCEEDED
    check_history(state.store, movements, [outcome])


def test_r8_crash_mid_record_leaves_the_db_fully_before(
    crashed: Callable[..., Crashed],
) -> None:
    state = crashed("--store-crash-at=mid_record")
    movements = worker.read_movements(state.movements)
    assert len(movements) == 1

    # The ledger entry was written first in the complete transaction; the crash rolled it back.
    record = state.record()
    assert (record.status, record.outcome) == (Status.CLAIMED, None)
    assert state.events() == [Event.CLAIMED]
    verify_ledger(state.store)
    with closing(sqlite3.connect(state.db)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    check_history(state.store, movements, unresolved={state.key})

    state.expire_lease()
    outcome = state.guard.run(state.intent, state.provider(), resumable=True)
    assert worker.read_movements(state.movements) == movements
    check_history(state.store, movements, [outcome])


def test_r8_crash_after_complete_leaves_the_db_fully_after(
    crashed: Callable[..., Crashed],
) -> None:
    state = crashed("--crash-at=after_complete")
    movements = worker.read_movements(state.movements)
    record = state.record()
    assert record.status is Status.SUCCEEDED
    assert json.loads(record.outcome or "null") == {"value": movements[0]["value"]}
    assert state.events() == [Event.CLAIMED, Event.SUCCEEDED]

    outcome = state.guard.run(state.intent, state.provider())  # the caller never got a reply

    assert outcome.replayed
    assert outcome.body == record.outcome
    assert state.calls == []  # 0 extra calls
    check_history(state.store, movements, [outcome])


def test_r7_sigkill_inside_the_call_resolves_after_the_lease(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.faults.worker",
            f"--db={tmp_path / 'payonce.db'}",
            f"--movements={tmp_path / 'movements.txt'}",
            f"--reference={REFERENCE}",
            f"--lease={LEASE.total_seconds()}",
            "--sleep-in-fn=60",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the movement is durable
            assert json.loads(line or "{}").get("event") == "moved", line
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL

    state = Crashed(tmp_path)
    try:
        movements = worker.read_movements(state.movements)
        assert len(movements) == 1
        record = state.record()
        assert record.status is Status.CLAIMED
        assert state.store.scan(now=state.clock.now(), limit=10) == []  # its lease is live

        # I7: past its lease the dead worker's record is due for recovery, and a takeover
        # resolves it.
        state.expire_lease()
        assert [r.key for r in state.store.scan(now=state.clock.now(), limit=10)] == [state.key]
        outcome = state.guard.run(state.intent, state.provider(), resumable=True)

        assert outcome.value == movements[0]["value"]
        assert [a.number for a in state.calls] == [2]
        assert state.store.scan(now=state.clock.now(), limit=10) == []
        check_history(state.store, worker.read_movements(state.movements), [outcome])
    finally:
        state.store.close()


def test_r7_unsent_resume_after_a_crash_keeps_the_record(
    crashed: Callable[..., Crashed],
) -> None:
    """The worker moved money and died; the resumed attempt is refused before it is sent.

    That attempt provably did nothing, but the first one's outcome is still unknown, so the
    record must stay (UNKNOWN) rather than be released: a released key is claimed afresh by the
    next plain call, which would move money a second time at a provider that does not
    deduplicate.
    """
    state = crashed("--crash-at=before_complete")
    movements = worker.read_movements(state.movements)
    assert len(movements) == 1
    state.expire_lease()
    guard = worker.impatient_guard(
        state.store, state.clock, lease=LEASE, not_executed=(ConnectionRefusedError,)
    )

    def refused(attempt: Attempt) -> dict[str, str]:
        state.calls.append(attempt)
        raise ConnectionRefusedError

    with pytest.raises(OutcomeUnknownError):
        guard.run(state.intent, refused, resumable=True)
    assert state.record().status is Status.UNKNOWN

    def plain(attempt: Attempt) -> dict[str, str]:  # a provider that does not deduplicate
        return worker.move(state.movements, attempt.provider_key, attempt.number)

    with pytest.raises(OutcomeUnknownError):
        guard.run(state.intent, plain)
    assert worker.read_movements(state.movements) == movements
    check_history(state.store, movements, unresolved={state.key})

"""Real crashes on the production stores (SCENARIOS R6-R8 on PostgreSQL and Redis).

A worker process opens its own store on the same database or key prefix, claims, and exits with
``os._exit(137)`` at a fault point. The parent then looks at what the crash left, through a
guard on a ManualClock started at the wall-clock time, so "after the lease" is set by moving
that clock, never by sleeping. The worker's provider writes one line per movement to a file; the
parent's provider deduplicates on the provider key over the same file, as Stripe does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from payonce import Attempt, Guard, Intent, Status, Store, verify_ledger
from payonce.testing import ManualClock
from tests import conftest

ROOT = Path(__file__).resolve().parents[2]
LEASE = timedelta(seconds=30)
INTENT = Intent("charge", 4200, "usd", customer="cus_crash", reference="crash-order")
CRASHED = 137
SECRET_HEX = conftest.SECRET.hex()

# The child: the same guard over its own connection to the same store, crashing at a point.
CHILD = """
import json, sys
from datetime import timedelta
from payonce import Guard, Intent
from payonce.testing import CrashAt
backend, where, prefix, point, movements = sys.argv[1:6]
if backend == "postgres":
    from payonce.stores import PostgresStore
    store = PostgresStore(where)
else:
    from payonce.stores import RedisStore
    store = RedisStore(where, prefix=prefix)
guard = Guard(store, secret=bytes.fromhex(sys.argv[6]), scope="tenant-a",
              lease=timedelta(seconds=30), faults=CrashAt(point))
def charge(attempt):
    with open(movements, "a") as f:
        f.write(json.dumps({"provider_key": attempt.provider_key}) + "\\n")
    return {"id": "ch_worker"}
intent = Intent("charge", 4200, "usd", customer="cus_crash", reference="crash-order")
print(json.dumps(guard.run(intent, charge).value))
"""


@pytest.fixture(params=["postgres", "redis"])
def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Store, list[str]]]:
    backend = str(request.param)
    store = conftest.make_store(backend, tmp_path)
    if backend == "postgres":
        where = [conftest._POSTGRES.conninfo, ""]
    else:
        where = [conftest._REDIS.url, conftest._REDIS.prefixes[-1]]
    yield backend, store, where
    store.close()


def _crash(backend: str, where: list[str], point: str, movements: Path) -> int:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            backend,
            *where,
            point,
            str(movements),
            conftest.SECRET.hex(),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode


def _moved(movements: Path) -> list[str]:
    if not movements.exists():
        return []
    return [json.loads(line)["provider_key"] for line in movements.read_text().splitlines()]


def _parent(store: Store) -> tuple[Guard, ManualClock, list[Attempt]]:
    clock = ManualClock(datetime.now(UTC))
    guard = Guard(store, secret=conftest.SECRET, scope="tenant-a", clock=clock, lease=LEASE)
    return guard, clock, []


def _deduplicating(movements: Path, calls: list[Attempt]) -> object:
    def charge(attempt: Attempt) -> dict[str, str]:
        calls.append(attempt)
        if attempt.provider_key not in _moved(movements):  # a provider that replays by key
            with movements.open("a") as f:
                f.write(json.dumps({"provider_key": attempt.provider_key}) + "\n")
        return {"id": "ch_worker"}

    return charge


def test_r6_crash_after_claim(shared: tuple[str, Store, list[str]], tmp_path: Path) -> None:
    backend, store, where = shared
    movements = tmp_path / "movements.jsonl"
    assert _crash(backend, where, "after_claim", movements) == CRASHED
    guard, clock, calls = _parent(store)
    record = store.get("tenant-a", guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.CLAIMED
    assert _moved(movements) == []
    clock.advance(LEASE + timedelta(seconds=1))
    outcome = guard.run(INTENT, _deduplicating(movements, calls), resumable=True)  # type: ignore[arg-type]
    assert outcome.value == {"id": "ch_worker"}
    assert _moved(movements) == [record.provider_key]
    verify_ledger(store)


def test_r7_crash_after_the_call_before_recording(
    shared: tuple[str, Store, list[str]], tmp_path: Path
) -> None:
    backend, store, where = shared
    movements = tmp_path / "movements.jsonl"
    assert _crash(backend, where, "before_complete", movements) == CRASHED
    guard, clock, calls = _parent(store)
    record = store.get("tenant-a", guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.CLAIMED
    assert _moved(movements) == [record.provider_key]
    clock.advance(LEASE + timedelta(seconds=1))
    guard.run(INTENT, _deduplicating(movements, calls), resumable=True)  # type: ignore[arg-type]
    assert [call.provider_key for call in calls] == [record.provider_key]
    assert _moved(movements) == [record.provider_key]  # replayed by the provider, not moved
    verify_ledger(store)


def test_r8_crash_after_recording_leaves_it_fully_recorded(
    shared: tuple[str, Store, list[str]], tmp_path: Path
) -> None:
    backend, store, where = shared
    movements = tmp_path / "movements.jsonl"
    assert _crash(backend, where, "after_complete", movements) == CRASHED
    guard, _clock, calls = _parent(store)
    again = guard.run(INTENT, _deduplicating(movements, calls))  # type: ignore[arg-type]
    assert again.replayed
    assert calls == []
    assert len(_moved(movements)) == 1
    verify_ledger(store)

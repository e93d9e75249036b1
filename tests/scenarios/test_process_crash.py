"""SCENARIOS R6-R8 with real processes against the Stripe-compatible server (G1): a worker runs
``guard.execute`` through ``StripeGateway`` on its own connection to the same store and exits with
``os._exit(137)`` at a fault point. The parent looks at what the crash left through a guard on a
ManualClock started at the wall-clock time (the worker used the system clock), retries, runs the
Reconciler and checks I1-I5.

G2 is in-process by nature (its ledger lives in the test's memory): its crash runs are the
in-process ``Crash`` of test_gateway_faults.py. The memory store cannot be shared with a process.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from payonce import InProgressError, Status, Store
from payonce.testing import ManualClock
from tests import conftest
from tests.scenarios.harness import API_KEY, World, check, open_world
from tests.stripe_server import StripeMock

ROOT = Path(__file__).resolve().parents[2]
CRASHED = 137
WORKER_LEASE = timedelta(seconds=30)

CHILD = """
import sys
from datetime import timedelta
import stripe
from payonce import Guard, Intent
from payonce.gateways.stripe import StripeGateway
from payonce.testing import CrashAt
backend, where, prefix, point, url, api_key, secret, reference, nonce, account = sys.argv[1:11]
store_faults = None
if point == "mid_record":
    store_faults, point = CrashAt("mid_record"), "none"
if backend == "sqlite":
    from payonce import SQLiteStore
    store = SQLiteStore(where, faults=store_faults)
elif backend == "postgres":
    from payonce.stores import PostgresStore
    store = PostgresStore(where)
else:
    from payonce.stores import RedisStore
    store = RedisStore(where, prefix=prefix)
client = stripe.StripeClient(api_key, base_addresses={"api": url}, stripe_account=account)
guard = Guard(store, secret=bytes.fromhex(secret), scope="tenant-a",
              lease=timedelta(seconds=30), gateway=StripeGateway(client), faults=CrashAt(point))
intent = Intent("charge", 2500, "usd", payment_method="tok_visa", reference=reference,
                metadata={"scenario": nonce})
print(guard.execute(intent).value["id"])
"""


def _crash(world: World, backend: str, where: list[str], point: str, url: str) -> str:
    intent = world.intent("process-crash", 2500)
    done = subprocess.run(
        [
            sys.executable, "-c", CHILD, backend, *where, point, url, API_KEY,
            conftest.SECRET.hex(), intent.reference or "", world.nonce, world.account or "",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == CRASHED, done.stderr[-2000:]
    return world.key_of(intent)


CASES = [
    ("before_claim", "retry"),
    ("after_claim", "retry"),
    ("before_complete", "retry"),
    ("before_complete", "window"),  # the injected clock moves 25 h on: lookup, no resend
    ("mid_record", "retry"),  # SQLite's store fault point, inside the recording transaction
    ("after_complete", "retry"),
]


@pytest.mark.parametrize(
    ("shared", "point", "later"),
    [
        (backend, point, later)
        for backend in ("sqlite", "postgres", "redis")
        for point, later in CASES
        if point != "mid_record" or backend == "sqlite"
    ],
    indirect=["shared"],
)
def test_r6_r7_r8_worker_process_killed_at_a_fault_point(
    shared: tuple[str, Store, list[str]], stripe_server: StripeMock, point: str, later: str
) -> None:
    backend, store, where = shared
    clock = ManualClock(datetime.now(UTC))
    with open_world("g1", store, clock, stripe_server) as world:
        key = _crash(world, backend, where, point, stripe_server.url)
        intent = world.intent("process-crash", 2500)
        record = world.record(intent)
        charged = point in ("before_complete", "mid_record", "after_complete")
        assert len(world.charges(key)) == (1 if charged else 0)
        if point == "before_claim":
            assert record is None
        elif point == "after_complete":
            assert record is not None
            assert record.status is Status.SUCCEEDED
        else:
            assert record is not None
            assert record.status is Status.CLAIMED  # never torn: the claim, not half a record
            with pytest.raises(InProgressError):  # the dead worker's lease is still live
                world.guard().execute(intent)
        if later == "window":
            clock.advance(timedelta(hours=25))
            report = world.reconciler().run_once()
            assert (report.succeeded, report.resent) == (1, 0)
            assert world.calls() == []  # found by its payonce_key, never resent
        else:
            clock.advance(WORKER_LEASE + timedelta(seconds=1))
        outcome = world.guard().execute(intent)
        assert outcome.replayed is (point == "after_complete" or later == "window")
        [charge] = world.charges(key)
        assert outcome.value["id"] == charge["id"]
        if record is not None and later == "retry" and point != "after_complete":
            assert {c.provider_key for c in world.calls()} == {record.provider_key}
        world.reconcile()
        check(world, [outcome])

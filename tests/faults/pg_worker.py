"""PostgreSQL test support: a throw-away database per test run, and a guard in a worker process.

The server comes from ``PAYONCE_TEST_POSTGRES`` (a libpq connection string to a database the
role may connect to and ``CREATE DATABASE`` from; default: the loopback server's ``test``
database as ``postgres``). A missing server fails the tests loudly: never a skip.

Run as a worker from the repository root as ``python -m tests.faults.pg_worker --conninfo CI
--movements PATH ...``: the same guard, fake provider and JSON lines as ``tests.faults.worker``,
over ``PostgresStore(conninfo)``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from payonce import Attempt, Event, Guard, Outcome
from payonce.stores._postgres import PostgresStore
from payonce.testing import ManualClock
from tests.faults import worker

ADMIN = os.environ.get(
    "PAYONCE_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)
TABLES = ("payonce_records", "payonce_ledger", "payonce_checkpoints")


def admin_connection(conninfo: str = ADMIN) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection, failing with a clear message when the server is missing."""
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable with PAYONCE_TEST_POSTGRES={conninfo!r}: {exc}. Start it "
            "(.ci/run does) or point the variable at a server; these tests never skip."
        ) from exc


def create_database() -> tuple[str, str]:
    """Create ``payonce_test_<random>``; returns its name and a connection string to it."""
    name = f"payonce_test_{secrets.token_hex(6)}"
    with admin_connection() as conn:
        conn.execute(f"CREATE DATABASE {name}")  # a generated identifier, never input
    return name, make_conninfo(ADMIN, dbname=name)


@contextmanager
def migrated_database() -> Iterator[str]:
    """A fresh database with payonce's schema applied, dropped on the way out; yields its
    connection string."""
    name, conninfo = create_database()
    try:
        PostgresStore(conninfo).close()  # applies the migrations
        yield conninfo
    finally:
        drop_database(name)


def drop_database(name: str) -> None:
    """Drop a database ``create_database`` made, disconnecting whatever is still connected."""
    with admin_connection() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def empty_tables(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Empty the payonce tables and restart the ledger sequence, past the append-only triggers.

    ``session_replication_role = replica`` keeps ordinary triggers from firing, so the test's
    privileged connection may truncate what the store itself never can.
    """
    conn.execute("SET session_replication_role = replica")
    conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    conn.execute("SET session_replication_role = DEFAULT")


def terminate_idle(admin: psycopg.Connection[tuple[object, ...]], application_name: str) -> int:
    """Terminate every backend of ``application_name`` and wait until each has gone (its
    farewell is written before it leaves ``pg_stat_activity``); returns how many there were.
    Polls the server for that state; nothing here times anything."""
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    pids = [pid for (pid,) in admin.execute(query, (application_name,)).fetchall()]
    for pid in pids:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    deadline = time.monotonic() + 30
    gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
    while admin.execute(gone, (pids,)).fetchone() != (0,):
        assert time.monotonic() < deadline, f"the backends of {application_name!r} stayed"
        time.sleep(0.005)  # polling the server for a state, not timing anything
    return len(pids)


def terminate_when_waiting(
    admin: psycopg.Connection[tuple[object, ...]],
    application_name: str,
    future: Future[Any],
    *,
    wait_event: str | None = None,
) -> None:
    """Wait until the backend of ``application_name`` waits on a lock (of kind ``wait_event``
    if given: ``advisory``, ``transactionid``, ...), then terminate it with
    ``pg_terminate_backend``. Polls the server for that state; nothing here times anything."""
    deadline = time.monotonic() + 30
    query = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        " AND wait_event_type = 'Lock' AND (%s::text IS NULL OR wait_event = %s)"
    )
    while time.monotonic() < deadline and not future.done():
        row = admin.execute(query, (application_name, wait_event, wait_event)).fetchone()
        if row is not None:
            assert admin.execute("SELECT pg_terminate_backend(%s)", row).fetchone() == (True,)
            return
        time.sleep(0.005)  # polling the server for a state, not timing anything
    raise AssertionError(f"the backend of {application_name!r} never waited on the held lock")


class Outage:
    """A guard over a PostgresStore whose connections carry a tag (their application_name, so
    a test finds the store's backend in ``pg_stat_activity``), and a deduplicating provider."""

    def __init__(self, database: str, tmp_path: Path, tag: str, *, lease: timedelta) -> None:
        self.tag = tag
        self.store = PostgresStore(make_conninfo(database, application_name=self.tag))
        self.clock = ManualClock(datetime.now(UTC))
        self.guard = worker.impatient_guard(self.store, self.clock, lease=lease)
        self.intent = worker.intent_for(tag)
        self.key = self.guard.key_for(self.intent)
        self.movements = tmp_path / f"movements-{tag}.txt"
        self.calls: list[Attempt] = []

    def provider(self, after: Callable[[], None] | None = None) -> Callable[[Attempt], Any]:
        """Moves money (deduplicating on the provider key, as Stripe does), then ``after``."""

        def fn(attempt: Attempt) -> dict[str, str]:
            self.calls.append(attempt)
            answer = worker.move(self.movements, attempt.provider_key, attempt.number, dedupe=True)
            if after is not None:
                after()
            return answer

        return fn

    def run_in_thread(self, fn: Callable[[Attempt], Any], **options: Any) -> Future[Outcome]:
        pool = ThreadPoolExecutor(max_workers=1)
        future = pool.submit(self.guard.run, self.intent, fn, **options)
        pool.shutdown(wait=False)
        return future

    def terminate_when_blocked(
        self,
        admin: psycopg.Connection[tuple[object, ...]],
        future: Future[Outcome],
        *,
        wait_event: str | None = None,
    ) -> None:
        """Wait until the store's backend waits on a lock, then terminate that backend."""
        terminate_when_waiting(admin, self.tag, future, wait_event=wait_event)

    def events(self) -> list[Event]:
        return [e.event for e in self.store.entries(after=0, limit=100) if e.key == self.key]

    def close(self) -> None:
        self.store.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="a guard over PostgresStore in its own process")
    parser.add_argument("--conninfo", required=True, help="libpq connection string")
    parser.add_argument("--movements", type=Path, required=True, help="the provider's ledger")
    parser.add_argument("--reference", default="order-1", help="the intent's reference")
    parser.add_argument("--lease", type=float, default=30.0, help="lease, seconds")
    parser.add_argument("--wait", type=float, default=10.0, help="duplicate wait, seconds")
    parser.add_argument("--threads", type=int, default=1, help="callers racing in this process")
    parser.add_argument("--sleep-in-fn", type=float, default=0.0, help="seconds inside the call")
    parser.add_argument("--rounds", type=int, default=1, help="races on fresh keys, stdin-started")
    worker.store_latency(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run ``--rounds`` stdin-started races of ``--threads`` callers; returns the exit status."""
    args = _parse(argv)
    store = PostgresStore(args.conninfo, min_size=1, max_size=args.threads)
    guard = Guard(
        worker.Slowed(store, args.store_latency) if args.store_latency else store,
        secret=worker.SECRET,
        scope=worker.SCOPE,
        lease=timedelta(seconds=args.lease),
        wait=timedelta(seconds=args.wait),
    )
    fn = worker.provider(args.movements, args.sleep_in_fn, announce=False)
    try:
        for rnd in range(args.rounds):
            intent = worker.intent_for(f"{args.reference}-{rnd}")
            worker.race(guard, intent, fn, args.threads, rnd)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

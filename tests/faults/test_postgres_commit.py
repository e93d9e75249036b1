"""R15c on PostgreSQL: the connection dies during COMMIT; payonce re-reads and never acts twice.

Two cases, for the claim and for the complete:

- **killed during COMMIT** (real): a deferred constraint trigger, present only in this test's
  database, takes an advisory lock at commit time for the store's tagged connections. The test
  holds that lock, waits until ``pg_stat_activity`` shows the store's backend waiting on it
  (the commit is in progress), and terminates the backend with ``pg_terminate_backend``. The
  transaction never commits.
- **committed, answer lost** (injected at the driver boundary): the statement commits on the
  real server, then the client's connection is closed before the answer is used, as when the
  network drops the reply to a COMMIT.

Expected: a claim cut off either way raises ``StoreUnavailableError`` and nothing is called; a
complete cut off re-reads on a fresh connection: if it committed, the caller gets the outcome;
if not, ``OutcomeUnknownError`` and the record stays CLAIMED for a takeover. Afterwards the
history checker finds one movement and a verifying ledger.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from payonce import (
    AsyncGuard,
    Attempt,
    Event,
    Guard,
    InProgressError,
    Outcome,
    OutcomeUnknownError,
    Status,
    StoreUnavailableError,
    verify_ledger,
)
from payonce.stores import _postgres, _postgres_async
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.stores._postgres_schema import CLAIM, UPDATE_FENCED
from payonce.stores._postgres_sql import Query
from payonce.testing import ManualClock
from tests.faults import pg_worker, worker
from tests.faults.history import check_history
from tests.faults.pg_worker import Outage

LEASE = timedelta(seconds=30)
LOCK = 4215  # the advisory lock the commit-time trigger waits on
TAG = "payonce-r15c"
Admin = psycopg.Connection[tuple[Any, ...]]

# Fires at COMMIT (deferred) for connections whose application_name starts with the tag, and
# waits there while the test holds the advisory lock. Created only in this module's database.
HOLD_AT_COMMIT = f"""
CREATE FUNCTION payonce_test_hold_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('application_name') LIKE '{TAG}%' THEN
        PERFORM pg_advisory_xact_lock({LOCK});
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER payonce_test_hold_at_commit
    AFTER INSERT OR UPDATE ON payonce_records DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION payonce_test_hold_at_commit();
"""


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pg_worker.migrated_database() as conninfo:
        with pg_worker.admin_connection(conninfo) as conn:
            conn.execute(HOLD_AT_COMMIT)
        yield conninfo


@pytest.fixture
def case(database: str, admin: Admin, tmp_path: Path) -> Iterator[Callable[[str], Outage]]:
    made: list[Outage] = []

    def make(label: str) -> Outage:
        made.append(Outage(database, tmp_path, f"{TAG}-{label}", lease=LEASE))
        return made[-1]

    yield make
    for c in made:
        c.store.close()


@pytest.fixture
def lose_answer(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """Arm a lost answer: the next statement with this text commits, then its connection dies."""

    def arm(text: str) -> list[str]:
        lost: list[str] = []
        real = _postgres._execute

        def execute(conn: psycopg.Connection[Any], query: Query) -> list[tuple[Any, ...]]:
            rows = real(conn, query)
            if query.text == text and not lost:
                lost.append(text)
                conn.close()  # the pool discards it; the server has committed
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return rows

        monkeypatch.setattr(_postgres, "_execute", execute)
        return lost

    return arm


# -- the complete ----------------------------------------------------------------------------------


def test_r15c_complete_killed_during_commit_stays_claimed_and_resolves_once(
    case: Callable[[str], Outage], admin: Admin, database: str
) -> None:
    c = case("complete-killed")
    with pg_worker.admin_connection(database) as holder:

        def hold_commits() -> None:
            # Inside the call, after the money moved: the complete's COMMIT will wait for this.
            holder.execute("SELECT pg_advisory_lock(%s)", (LOCK,))

        future = c.run_in_thread(c.provider(after=hold_commits))
        c.terminate_when_blocked(admin, future, wait_event="advisory")
        with pytest.raises(OutcomeUnknownError) as caught:
            future.result(timeout=30)
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))

    cause = caught.value.__cause__
    assert isinstance(cause, StoreUnavailableError)
    assert cause.to_dict()["operation"] == "complete"
    # The fresh read found the claim's state: the COMMIT did not happen, nothing half-written.
    record = c.store.get(worker.SCOPE, c.key)
    assert record is not None
    assert (record.status, record.outcome) == (Status.CLAIMED, None)
    assert c.events() == [Event.CLAIMED]
    movements = worker.read_movements(c.movements)
    assert len(movements) == 1

    # After the lease a resumable retry takes over with the same provider key; the provider
    # replays its first answer: one movement, one recorded outcome.
    c.clock.advance(LEASE + timedelta(seconds=1))
    outcome = c.guard.run(c.intent, c.provider(), resumable=True)
    assert len({a.provider_key for a in c.calls}) == 1
    assert worker.read_movements(c.movements) == movements
    check_history(c.store, movements, [outcome])
    assert c.guard.run(c.intent, c.provider()).replayed


def test_r15c_complete_committed_but_answer_lost_counts_as_done(
    case: Callable[[str], Outage],
    lose_answer: Callable[[str], list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = case("complete-lost")
    lost = lose_answer(UPDATE_FENCED)
    with caplog.at_level(logging.WARNING, logger="payonce.stores.postgres"):
        outcome = c.guard.run(c.intent, c.provider())

    assert lost == [UPDATE_FENCED]  # the fault fired: the connection died after the COMMIT
    assert not outcome.replayed
    assert any("shows it committed" in r.getMessage() for r in caplog.records)
    record = c.store.get(worker.SCOPE, c.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert c.events() == [Event.CLAIMED, Event.SUCCEEDED]  # written once, not twice
    movements = worker.read_movements(c.movements)
    assert len(movements) == 1
    check_history(c.store, movements, [outcome])
    again = c.guard.run(c.intent, c.provider())
    assert (again.replayed, again.value) == (True, outcome.value)
    assert len(c.calls) == 1
    assert verify_ledger(c.store).entries == 2  # raises LedgerCorruptedError if tampered


# -- the claim ---------------------------------------------------------------------------------


def test_r15c_claim_killed_during_commit_calls_nothing(
    case: Callable[[str], Outage], admin: Admin, database: str
) -> None:
    c = case("claim-killed")
    with pg_worker.admin_connection(database) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        future = c.run_in_thread(c.provider())
        c.terminate_when_blocked(admin, future, wait_event="advisory")
        with pytest.raises(StoreUnavailableError) as caught:
            future.result(timeout=30)
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))

    assert caught.value.to_dict()["operation"] == "claim"
    assert c.calls == []  # no gateway call without a durable claim
    assert c.store.get(worker.SCOPE, c.key) is None  # the COMMIT never happened
    outcome = c.guard.run(c.intent, c.provider())
    assert not outcome.replayed
    movements = worker.read_movements(c.movements)
    assert len(movements) == 1
    check_history(c.store, movements, [outcome])


def test_r15c_claim_committed_but_answer_lost_never_calls_twice(
    case: Callable[[str], Outage], lose_answer: Callable[[str], list[str]]
) -> None:
    c = case("claim-lost")
    lost = lose_answer(CLAIM)
    with pytest.raises(StoreUnavailableError):
        c.guard.run(c.intent, c.provider())
    assert lost == [CLAIM]
    assert c.calls == []
    # The claim did commit: a retry re-reads it and finds a live lease that nobody will finish.
    record = c.store.get(worker.SCOPE, c.key)
    assert record is not None
    assert record.status is Status.CLAIMED
    with pytest.raises(InProgressError):
        c.guard.run(c.intent, c.provider())
    assert c.calls == []
    # After the lease a resumable retry takes it over and calls once, with the same provider key.
    c.clock.advance(LEASE + timedelta(seconds=1))
    outcome = c.guard.run(c.intent, c.provider(), resumable=True)
    assert [a.provider_key for a in c.calls] == [record.provider_key]
    movements = worker.read_movements(c.movements)
    assert len(movements) == 1
    check_history(c.store, movements, [outcome])


# -- the async store -------------------------------------------------------------------------------


def test_r15c_async_complete_committed_but_answer_lost_counts_as_done(
    database: str, admin: Admin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lost: list[str] = []
    real = _postgres_async._aexecute

    async def execute(conn: psycopg.AsyncConnection[Any], query: Query) -> list[tuple[Any, ...]]:
        rows = await real(conn, query)
        if query.text == UPDATE_FENCED and not lost:
            lost.append(query.text)
            await conn.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return rows

    monkeypatch.setattr(_postgres_async, "_aexecute", execute)
    movements = tmp_path / "movements.txt"
    calls = threading.Event()

    async def scenario() -> tuple[Outcome, Outcome]:
        store = AsyncPostgresStore(database)
        try:
            guard = AsyncGuard(
                store, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock(), lease=LEASE
            )
            intent = worker.intent_for("r15c-async")

            async def fn(attempt: Attempt) -> dict[str, str]:
                assert not calls.is_set(), "called twice"
                calls.set()
                return worker.move(movements, attempt.provider_key, attempt.number, dedupe=True)

            first = await guard.run(intent, fn)
            return first, await guard.run(intent, fn)
        finally:
            await store.close()

    first, again = asyncio.run(scenario())
    assert lost == [UPDATE_FENCED]
    assert (first.replayed, again.replayed) == (False, True)
    assert len(worker.read_movements(movements)) == 1


# -- the other writes ------------------------------------------------------------------------------


def test_r15c_unknown_mark_committed_but_answer_lost_counts_as_done(
    case: Callable[[str], Outage], lose_answer: Callable[[str], list[str]]
) -> None:
    c = case("unknown-lost")
    lost = lose_answer(UPDATE_FENCED)

    def answer_lost(attempt: Attempt) -> dict[str, str]:
        c.calls.append(attempt)
        raise TimeoutError("the provider's answer was lost")

    with pytest.raises(OutcomeUnknownError) as caught:
        c.guard.run(c.intent, answer_lost)
    assert lost == [UPDATE_FENCED]
    assert caught.value.__cause__ is not None  # the call's own error, not the store's
    assert not isinstance(caught.value.__cause__, StoreUnavailableError)
    record = c.store.get(worker.SCOPE, c.key)
    assert record is not None
    assert record.status is Status.UNKNOWN  # the mark landed and counted as done
    assert c.events() == [Event.CLAIMED, Event.MARKED_UNKNOWN]
    assert len(c.calls) == 1


def test_r15c_release_committed_but_answer_lost_counts_as_done(
    database: str, admin: Admin, tmp_path: Path, lose_answer: Callable[[str], list[str]]
) -> None:
    from payonce import GatewayUnavailableError  # noqa: PLC0415
    from payonce.stores._postgres_schema import DELETE_FENCED  # noqa: PLC0415

    class RefusedError(Exception):
        """The provider refused the connection: provably not sent."""

    store = PostgresStore(make_conninfo(database, application_name=f"{TAG}-release"))
    try:
        guard = Guard(
            store, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock(),
            not_executed=(RefusedError,),
        )  # fmt: skip
        intent = worker.intent_for("r15c-release")
        lost = lose_answer(DELETE_FENCED)

        def refused(attempt: Attempt) -> dict[str, str]:
            raise RefusedError("connection refused")

        with pytest.raises(GatewayUnavailableError):
            guard.run(intent, refused)
        assert lost == [DELETE_FENCED]
        key = guard.key_for(intent)
        assert store.get(worker.SCOPE, key) is None
        kinds = [e.event for e in store.entries(after=0, limit=10) if e.key == key]
        assert kinds == [Event.CLAIMED, Event.RELEASED]
    finally:
        store.close()


def test_r15c_takeover_whose_answer_was_lost_fails_closed(
    case: Callable[[str], Outage], lose_answer: Callable[[str], list[str]]
) -> None:
    # Two workers taking one record over at the same instant compute the same entry, so a
    # takeover whose answer was lost is never adopted from the ledger head: it fails closed and
    # the record waits out the lease it may have taken, then a later takeover calls once.
    c = case("takeover-lost")

    def crashed(attempt: Attempt) -> dict[str, str]:
        c.calls.append(attempt)
        raise KeyboardInterrupt  # the worker dies mid-call

    with pytest.raises(KeyboardInterrupt):
        c.guard.run(c.intent, crashed)
    c.clock.advance(LEASE + timedelta(seconds=1))
    lost = lose_answer(UPDATE_FENCED)
    with pytest.raises(StoreUnavailableError) as caught:
        c.guard.run(c.intent, c.provider(), resumable=True)
    assert lost == [UPDATE_FENCED]
    assert caught.value.to_dict()["operation"] == "takeover"
    assert len(c.calls) == 1  # the lost takeover called nothing
    record = c.store.get(worker.SCOPE, c.key)
    assert record is not None
    assert (record.status, record.token) == (Status.CLAIMED, 2)  # it did commit
    c.clock.advance(LEASE + timedelta(seconds=1))
    outcome = c.guard.run(c.intent, c.provider(), resumable=True)
    assert [a.number for a in c.calls] == [1, 3]  # one call after the crash, never two
    movements = worker.read_movements(c.movements)
    assert len(movements) == 1
    check_history(c.store, movements, [outcome])

"""PostgreSQL: sealing a checkpoint while a lower-numbered ledger entry is still uncommitted.

The ledger's ``seq`` is drawn at INSERT time, not at commit: a raw transaction that inserts an
entry and stays open holds a number below the entries the store commits after it. A seal must
not close its range over that number. ``ledger_horizon`` waits for the open transaction (its
``LOCK TABLE ... IN SHARE MODE``); each test waits until ``pg_locks`` shows that lock request
waiting, then ends the raw transaction. Waiting for that state polls the server; nothing here
times anything (the one timeout is the server's own ``lock_timeout``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from payonce import (
    AsyncGuard,
    Checkpoint,
    ConflictError,
    Entry,
    Event,
    Guard,
    LedgerCorruptedError,
    Reconciler,
    Status,
    seal_checkpoint,
    verify_ledger,
)
from payonce._chain import GENESIS, make_entry, to_micros
from payonce.gateways.simulated import SimulatedGateway
from payonce.stores import _postgres
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.testing import ManualClock
from tests.conftest import _POSTGRES
from tests.faults import pg_worker, worker

Admin = psycopg.Connection[tuple[Any, ...]]
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

# The columns PostgresStore inserts (``_postgres_schema.INSERT_ENTRY``); seq is the identity's.
_INSERT_ENTRY = (
    "INSERT INTO payonce_ledger (at, scope, key, event, status_from, status_to, token, attempt,"
    " amount, currency, detail, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
    " %s, %s, %s) RETURNING seq"
)
_SEALER_WAITING = (
    "SELECT count(*) FROM pg_locks WHERE relation = 'payonce_ledger'::regclass"
    " AND mode = 'ShareLock' AND NOT granted"
)


@pytest.fixture
def store() -> Iterator[PostgresStore]:
    made = _POSTGRES.fresh_store()  # the run's database, tables emptied, seq restarted
    assert isinstance(made, PostgresStore)
    yield made
    made.close()


@pytest.fixture
def admin(store: PostgresStore) -> Iterator[Admin]:
    with pg_worker.admin_connection(_POSTGRES.conninfo) as conn:
        yield conn


def _raw_entry(label: str, event: Event = Event.CLAIMED, prev_hash: str = GENESIS) -> Entry:
    """A valid ledger entry of the key ``k1_raw_<label>`` (its first, by default)."""
    status_to = Status.SUCCEEDED if event is Event.SUCCEEDED else Status.CLAIMED
    return make_entry(
        seq=0, at=NOW, scope=worker.SCOPE, key=f"k1_raw_{label}", event=event,
        status_from=None, status_to=status_to, token=1, attempt=1, amount=1000,
        currency="usd", detail="{}", prev_hash=prev_hash,
    )  # fmt: skip


def _insert(conn: Admin, entry: Entry) -> int:
    """Insert ``entry`` as PostgresStore does; returns the seq it drew."""
    row = conn.execute(
        _INSERT_ENTRY,
        (
            to_micros(entry.at), entry.scope, entry.key, entry.event.value, None,
            entry.status_to.value, entry.token, entry.attempt, entry.amount, entry.currency,
            entry.detail, entry.prev_hash, entry.hash,
        ),
    ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])


@contextmanager
def _uncommitted_entry(label: str, event: Event = Event.CLAIMED) -> Iterator[tuple[Admin, int]]:
    """A raw transaction that inserted one valid ledger entry (a fresh key's first, chained to
    the genesis) and has not committed; yields its connection and the seq it holds. The caller
    ends it with COMMIT or ROLLBACK (an exception leaving the block rolls it back)."""
    with pg_worker.admin_connection(_POSTGRES.conninfo) as conn:
        conn.execute("BEGIN")
        yield conn, _insert(conn, _raw_entry(label, event))


def _write_later_entries(store: PostgresStore, reference: str) -> list[int]:
    """One intent run through the guard (claim + complete); returns the seqs now visible."""
    guard = Guard(store, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock(NOW))
    guard.run(worker.intent_for(reference), lambda attempt: {"id": f"ch_{reference}"})
    return [e.seq for e in store.entries(after=0, limit=100)]


def _sealer_waiting(admin: Admin) -> bool:
    row = admin.execute(_SEALER_WAITING).fetchone()
    return row is not None and row[0] == 1


def _wait_until_sealer_waits(admin: Admin, future: Future[Any]) -> None:
    """Poll until the horizon's LOCK waits behind the raw transaction; polls a state, times
    nothing."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if future.done():
            raise AssertionError(
                f"the seal finished without waiting for the uncommitted entry: {future.result()}"
            )
        if _sealer_waiting(admin):
            return
        time.sleep(0.005)  # polling the server for a state, not timing anything
    raise AssertionError("the seal never waited for the uncommitted ledger entry")


def _seal_in_thread(pool: ThreadPoolExecutor, store: Any) -> Future[Checkpoint | None]:
    return pool.submit(seal_checkpoint, store, now=NOW)


# -- the horizon -----------------------------------------------------------------------------------


def test_ledger_sequence_has_no_session_cache(admin: Admin) -> None:
    # The horizon's argument needs numbers drawn in order across sessions: CACHE 1.
    row = admin.execute(
        "SELECT seqcache FROM pg_sequence"
        " WHERE seqrelid = pg_get_serial_sequence('payonce_ledger', 'seq')::regclass"
    ).fetchone()
    assert row == (1,)


@pytest.mark.parametrize("ending", ["COMMIT", "ROLLBACK"])
def test_seal_waits_for_a_lower_uncommitted_entry_and_covers_its_number(
    store: PostgresStore, admin: Admin, ending: str
) -> None:
    # Committed, the raw entry is inside the sealed range; rolled back, its number is a gap
    # inside the range, and final.
    with ThreadPoolExecutor(max_workers=1) as pool:
        with _uncommitted_entry(ending.lower()) as (writer, held):
            later = _write_later_entries(store, f"seal-{ending.lower()}")
            assert held < min(later)
            assert held not in later  # invisible while its transaction is open
            future = _seal_in_thread(pool, store)
            _wait_until_sealer_waits(admin, future)
            writer.execute(ending)
        checkpoint = future.result(timeout=30)

    kept = len(later) + (ending == "COMMIT")
    assert checkpoint is not None
    assert (checkpoint.first_seq, checkpoint.last_seq) == (held, max(later))
    assert checkpoint.count == kept
    report = verify_ledger(store)
    assert (report.checkpoints, report.entries) == (1, kept)


def test_audit_reads_no_further_than_the_horizon(store: PostgresStore, admin: Admin) -> None:
    # A `succeeded` entry still uncommitted below committed ones: an audit that read past it
    # would hand back a cursor beyond its number, and every later audit would skip it.
    gateway = SimulatedGateway(clock=ManualClock(NOW))
    with ThreadPoolExecutor(max_workers=1) as pool:
        with _uncommitted_entry("audit", Event.SUCCEEDED) as (writer, held):
            later = _write_later_entries(store, "audit")
            assert held < min(later)
            future = pool.submit(Reconciler(store, gateway).audit)
            _wait_until_sealer_waits(admin, future)  # the audit's horizon waits for it
            writer.execute("COMMIT")
        report = future.result(timeout=30)

    assert report.complete
    assert report.cursor == max(later)
    # The raw entry was read: its key has no record, so it counts as skipped; the guarded
    # call's record was asked about.
    assert (report.skipped, report.checked) == (1, 1)


def test_verify_waits_for_a_lower_uncommitted_entry_before_reading_its_successor(
    store: PostgresStore, admin: Admin
) -> None:
    # The key's first entry is uncommitted below its second, committed one. A verification
    # that read past the first before it committed would find the second chained to an entry
    # it never saw, and report the chain broken.
    with ThreadPoolExecutor(max_workers=1) as pool:
        with _uncommitted_entry("verify") as (writer, held):
            second = _raw_entry("verify", Event.SUCCEEDED, prev_hash=_raw_entry("verify").hash)
            assert _insert(admin, second) > held  # committed: the admin connection autocommits
            future = pool.submit(verify_ledger, store)
            _wait_until_sealer_waits(admin, future)  # the verification's horizon waits for it
            writer.execute("COMMIT")
        report = future.result(timeout=30)
    assert (report.entries, report.keys) == (2, 1)


def test_seal_gives_up_when_the_ledger_stays_busy(
    store: PostgresStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server enforces lock_timeout; the test only shortens it.
    monkeypatch.setattr(_postgres, "_HORIZON_WAIT", timedelta(milliseconds=200))
    with _uncommitted_entry("busy") as (writer, held):
        later = _write_later_entries(store, "seal-busy")
        before = list(store.checkpoints())
        with pytest.raises(ConflictError) as caught:
            seal_checkpoint(store, now=NOW)
        assert list(store.checkpoints()) == before == []  # nothing sealed
        writer.execute("COMMIT")

    message = str(caught.value)
    assert "busy with writers for 0.2 s" in message
    assert "nothing was sealed; seal again later" in message
    assert caught.value.to_dict()["operation"] == "ledger_horizon"
    assert isinstance(caught.value.__cause__, psycopg.errors.LockNotAvailable)
    # Sealing again once the writer is done covers everything.
    checkpoint = seal_checkpoint(store, now=NOW)
    assert checkpoint is not None
    assert (checkpoint.first_seq, checkpoint.last_seq) == (held, max(later))
    verify_ledger(store)


def test_async_horizon_waits_for_a_lower_uncommitted_entry(
    store: PostgresStore, admin: Admin
) -> None:
    async def scenario() -> tuple[int, int, list[int]]:
        astore = AsyncPostgresStore(_POSTGRES.conninfo)
        try:
            await astore.open()  # before the raw transaction: migrations check takes its locks
            guard = AsyncGuard(
                astore, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock()
            )
            with _uncommitted_entry("async") as (writer, held):
                await guard.run(worker.intent_for("seal-async"), lambda attempt: {"id": "ch_a"})
                later = [e.seq for e in await astore.entries(after=0, limit=100)]
                assert held < min(later)
                task = asyncio.create_task(astore.ledger_horizon())
                deadline = time.monotonic() + 30
                while not _sealer_waiting(admin):
                    assert not task.done(), f"the horizon did not wait: {task.result()}"
                    assert time.monotonic() < deadline, "the horizon never waited on the lock"
                    await asyncio.sleep(0.005)  # lets the task run; polls a state, times nothing
                writer.execute("COMMIT")
            return await task, held, later
        finally:
            await astore.close()

    horizon, held, later = asyncio.run(scenario())

    committed = admin.execute("SELECT max(seq) FROM payonce_ledger").fetchone()
    assert committed == (horizon,)
    assert horizon == max(later) > held


# -- without a horizon (the behaviour before it) ---------------------------------------------------


class _WithoutHorizon:
    """The PostgreSQL store seen as a store without ``ledger_horizon``: how payonce sealed on
    PostgreSQL before the horizon."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "ledger_horizon":
            raise AttributeError(name)
        return getattr(self._store, name)


def test_without_the_horizon_the_same_seal_later_reads_as_tampered(store: PostgresStore) -> None:
    # The sequence of the first horizon test; only the horizon is missing.
    with _uncommitted_entry("no-horizon") as (writer, held):
        later = _write_later_entries(store, "seal-no-horizon")
        # The seal runs while the raw entry is uncommitted, in a thread, so that a seal that
        # waited for the entry's transaction fails here instead of hanging the test.
        pool = ThreadPoolExecutor(1)
        try:
            checkpoint = pool.submit(seal_checkpoint, _WithoutHorizon(store), now=NOW).result(
                timeout=30
            )
        finally:
            pool.shutdown(wait=False)  # a seal still waiting ends when the writer closes
        writer.execute("COMMIT")

    assert checkpoint is not None
    assert (checkpoint.first_seq, checkpoint.last_seq) == (held, max(later))
    assert checkpoint.count == len(later)  # the held entry was left out of its own range
    with pytest.raises(LedgerCorruptedError, match="entries of checkpoint 1"):
        verify_ledger(store)

"""The SQLite store (L4): the embedded default, stdlib only (DESIGN §7).

Concurrency model: every transition is one ``BEGIN IMMEDIATE`` transaction that reads the record,
asks ``payonce._transitions`` for the next record and its ledger entry, and writes both. SQLite
has one writer at a time, so the write lock taken at ``BEGIN IMMEDIATE`` serialises transitions
across threads and processes; readers (replays, ``get``, the verifier) never wait for it in WAL
mode. Timestamps are stored as microseconds since the epoch (``payonce._chain.to_micros``), the
same encoding the ledger hashes use.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path

from payonce._chain import to_micros
from payonce._errors import (
    ConfigurationError,
    ConflictError,
    LeaseLostError,
    StoreClosedError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from payonce._model import (
    Checkpoint,
    Claimed,
    Entry,
    NewRecord,
    Record,
    ReplayView,
    Status,
)
from payonce._transitions import (
    claim_transition,
    complete_transition,
    purge_transition,
    release_transition,
    takeover_eligible,
    takeover_transition,
    unknown_transition,
)
from payonce.stores._sqlite_sql import (
    _CLAIM_HEAD,
    _DELETE_RECORD,
    _HELD_LIMIT,
    _IN_MEMORY,
    _INSERT_CHECKPOINT,
    _INSERT_ENTRY_AUTO,
    _INSERT_RECORD,
    _PRIMARY_KEY_VIOLATION,
    _SELECT_CHECKPOINTS,
    _SELECT_ENTRIES,
    _SELECT_RECORDS,
    _SELECT_VIEW,
    _STATUSES,
    _SYNCHRONOUS,
    _UPDATE_HELD,
    _WAL_RETRY,
    MIGRATIONS,
    _applied,
    _insert_entry,
    _load,
    _migrate,
    _next_seq,
    _params,
    _select_for_write,
    _select_record,
    _update_params,
    _update_record,
)

__all__ = ["MIGRATIONS", "SQLiteStore"]


class _KeyTakenError(Exception):
    """Internal: the primary key refused our claim; carries the winner's record."""

    def __init__(self, record: Record) -> None:
        super().__init__(record.key)
        self.record = record


class _StaleHeldError(Exception):
    """Internal: the row is no longer the record handed to the lease holder."""


class _Slot:
    """One thread's connection: held by the thread's ``threading.local``, weakly by the store."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class SQLiteStore:
    """Records and ledger in one SQLite file (or ``":memory:"``); safe across threads and
    processes that open the same file.

    Args:
        path: the database file; its directory must exist. ``":memory:"`` keeps everything in
            this process (one shared connection).
        synchronous: ``"FULL"`` (default), ``"EXTRA"`` or ``"NORMAL"``. NORMAL is faster in WAL
            mode but a power loss may drop the newest transitions.
        busy_timeout: how long a writer queues for the write lock before failing with
            ``StoreUnavailableError``.
        faults: a fault injector called with named points (``"mid_record"``), for crash tests.
        create: False opens only a file payonce has set up already, changing nothing: no file,
            ``":memory:"`` or a database without payonce's tables is refused with
            ``StoreMissingError`` before anything is written (not even the WAL journal mode), a
            schema that needs a migration with ``ConfigurationError`` (run ``payonce migrate``).

    Raises:
        StoreMissingError: with ``create=False``, no payonce store at ``path``.
        ConfigurationError: a bad option, a missing directory, or a database whose schema is
            newer than this version of payonce.
        StoreUnavailableError: the database could not be opened or migrated.
        StoreError: the file is not an SQLite database, or is damaged.
    """

    # seq is MAX(seq) + 1 under the write lock and a rolled-back transition leaves no row, so
    # verify_ledger may read a gap as a deleted entry.
    gapless_ledger = True
    # A point read runs in its own WAL snapshot without the write lock: the guard reads first
    # and replays never queue behind claimers.
    read_before_claim = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "FULL",
        busy_timeout: timedelta = timedelta(seconds=30),
        faults: Callable[[str], None] | None = None,
        create: bool = True,
    ) -> None:
        self._path = os.fspath(path)
        mode = synchronous.upper() if isinstance(synchronous, str) else ""
        if mode not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SQLiteStore(synchronous={synchronous!r}) is not supported: pass 'FULL' (the "
                "default, durable on power loss), 'EXTRA', or 'NORMAL' (faster; a power loss may "
                "drop the newest transitions). OFF is refused because a claim must be durable "
                "before the gateway is called.",
                option="synchronous",
            )
        if not isinstance(busy_timeout, timedelta) or busy_timeout < timedelta(0):
            raise ConfigurationError(
                f"SQLiteStore(busy_timeout={busy_timeout!r}) must be a non-negative timedelta, "
                "for example timedelta(seconds=30).",
                option="busy_timeout",
            )
        self._in_memory = self._path in _IN_MEMORY
        self._synchronous = mode
        self._busy_timeout = busy_timeout
        if not self._in_memory and Path(self._path).is_dir():
            raise ConfigurationError(
                f"{self._path!r} is a directory: an SQLite store is a file. Pass the path of a "
                "file in it, e.g. sqlite:///dir/payonce.db.",
                option="path",
            )
        self._check_file(create)  # before the directory check: nothing there is a missing store
        if not self._in_memory and not Path(self._path).parent.is_dir():
            raise ConfigurationError(
                f"SQLiteStore cannot create {self._path!r}: its directory does not exist. Create "
                "the directory first or pass a path inside an existing one.",
                option="path",
            )
        self._faults = faults
        self._closed = False
        # Each connection to ":memory:" is a separate database, so an in-memory store shares one
        # connection behind a lock; a file store gives each thread its own connection, because
        # a sqlite3 connection runs one transaction at a time.
        self._shared_lock = threading.Lock()
        self._shared: sqlite3.Connection | None = None
        self._local = threading.local()
        self._registry_lock = threading.Lock()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        # The records this store handed to lease holders, by (scope, key, token): a fenced write
        # of a holder starts from it instead of reading the row again (one-shot, bounded).
        self._held: dict[tuple[str, str, int], Record] = {}
        self._held_lock = threading.Lock()
        try:
            with self._write("open") as conn:
                _migrate(conn, create=create)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({self._path!r}, synchronous={self._synchronous!r})"

    def _check_file(self, create: bool) -> None:
        """Refuse, before any connection of the store changes the file (its journal mode), a
        schema newer than this payonce's and, with ``create=False``, a path with no payonce
        tables or one that needs a migration; waits for a locked file as a write does."""
        if self._in_memory or not Path(self._path).is_file():
            if create:
                return
            raise _missing(self._path)
        try:
            wait = self._busy_timeout.total_seconds()
            with closing(sqlite3.connect(self._path, timeout=wait)) as conn:
                (found,) = conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                    "AND name = 'payonce_migrations'"
                ).fetchone()
                if found:
                    _applied(conn, create=create)
        except sqlite3.Error as exc:
            raise _translate(exc, "open") from exc
        if not found and not create:
            raise _missing(self._path)

    # -- connections and transactions ----------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: the module never opens transactions behind our back, so each
        # BEGIN IMMEDIATE / COMMIT below is exactly what SQLite sees.
        conn = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout.total_seconds(),
        )
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _thread_connection(self, operation: str) -> sqlite3.Connection:
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None:
            slot = _Slot(self._open())
            # The connection closes when its thread ends and threading.local drops the slot, so
            # short-lived threads do not pile up open files; close() reaches the live ones.
            weakref.finalize(slot, _close_quietly, slot.conn)
            with self._registry_lock:
                if self._closed:
                    _close_quietly(slot.conn)
                    raise _closed_error(operation)
                self._slots.add(slot)
            self._local.slot = slot
        return slot.conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        # The busy timeout makes a writer queue for the write lock instead of failing at once.
        millis = int(self._busy_timeout / timedelta(milliseconds=1))
        conn.execute(f"PRAGMA busy_timeout = {millis}")
        if not self._in_memory:
            # WAL lets replays and the verifier read while a claim writes.
            journal = self._enable_wal(conn)
            if journal.lower() != "wal":
                raise ConfigurationError(
                    f"SQLite kept {self._path!r} in journal mode {journal!r} instead of WAL; put "
                    "the database on a local filesystem that supports WAL.",
                    option="path",
                )
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # Switching a new file to WAL takes an exclusive lock that SQLite requests once, without
        # the busy handler, so another opener's brief shared lock fails it at once (16 processes
        # opening one new file hit this). Retry as the busy handler would, within busy_timeout.
        remaining = max(1, int(self._busy_timeout / _WAL_RETRY))
        while True:
            remaining -= 1
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0])
            except sqlite3.OperationalError as exc:
                if remaining <= 0 or exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
            time.sleep(_WAL_RETRY.total_seconds())

    @contextmanager
    def _connection(self, operation: str) -> Iterator[sqlite3.Connection]:
        # Driver errors are mapped here, once, for every method (DESIGN §9).
        if self._closed:
            raise _closed_error(operation)
        try:
            if self._in_memory:
                with self._shared_lock:
                    if self._closed:
                        raise _closed_error(operation)
                    if self._shared is None:
                        self._shared = self._open()
                    yield self._shared
            else:
                yield self._thread_connection(operation)
        except sqlite3.Error as exc:
            raise _translate(exc, operation) from exc

    @contextmanager
    def _write(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._connection(operation) as conn:
            # BEGIN IMMEDIATE takes the write lock before the first read. With a plain BEGIN two
            # claimers could both read "absent" and then both try to upgrade to a write lock,
            # which SQLite answers with SQLITE_BUSY at once instead of queueing on the timeout.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # An I/O or full-disk error may have rolled back already; a failed ROLLBACK must
                # not hide the error that caused it.
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    # -- transitions -----------------------------------------------------------------------------

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """Create the record as CLAIMED, first writer wins; see ``Store.claim``.

        Raises:
            StoreUnavailableError: the database could not be read or written.
        """
        # The guard reads first (read_before_claim), so a replay never gets here.
        try:
            with self._write("claim") as conn:
                # The primary key arbitrates: if another writer holds the key, the INSERT below
                # fails and our ledger entry rolls back with it. The EXISTS in the same read
                # only spares a queued duplicate that wasted write.
                ((seq, prev_hash, prev_token, taken),) = conn.execute(
                    _CLAIM_HEAD, (new.scope, new.key)
                ).fetchall()
                if taken:
                    # A concurrent duplicate won while we queued for the lock: answer with its
                    # record without writing (the primary key below would refuse us anyway).
                    winner = _select_record(conn, new.scope, new.key)
                    assert winner is not None  # we hold the write lock since the check
                    return Claimed(winner, None)
                record, entry = claim_transition(
                    new,
                    now=now,
                    lease_for=lease_for,
                    seq=seq,
                    prev_hash=prev_hash,
                    prev_token=prev_token or 0,
                )
                _insert_entry(conn, entry)
                try:
                    conn.execute(_INSERT_RECORD, _params(record))
                except sqlite3.IntegrityError as exc:
                    # Someone else holds the key; our ledger entry rolls back with the claim.
                    winner = _select_record(conn, new.scope, new.key)
                    if winner is None or exc.sqlite_errorcode != _PRIMARY_KEY_VIOLATION:
                        raise
                    raise _KeyTakenError(winner) from exc
        except _KeyTakenError as taken:
            return Claimed(taken.record, None)
        self._remember(record)
        return Claimed(record, record.lease)

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """Take an UNKNOWN or lease-expired CLAIMED record over; see ``Store.takeover``.

        Raises:
            LeaseLostError: the record no longer exists (released or purged meanwhile).
            StoreUnavailableError: the database could not be read or written.
        """
        with self._write("takeover") as conn:
            current, seq = _select_for_write(conn, scope, key)
            if current is None:
                raise LeaseLostError(key=key, token=token)
            if not takeover_eligible(current, token=token, now=now):
                return Claimed(current, None)
            record, entry = takeover_transition(current, now=now, lease_for=lease_for, seq=seq)
            _insert_entry(conn, entry)
            _update_record(conn, record)
        self._remember(record)
        return Claimed(record, record.lease)

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """CLAIMED → SUCCEEDED or FAILED, fenced on ``token``; see ``Store.complete``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            ValueError: ``status`` is neither SUCCEEDED nor FAILED.
            StoreUnavailableError: the database could not be read or written.
        """

        def transition(current: Record | None, seq: int) -> tuple[Record, Entry]:
            return complete_transition(
                current, key=key, token=token, status=status, outcome=outcome, now=now, seq=seq
            )

        return self._fenced_update("complete", scope, key, token, transition)

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """CLAIMED → UNKNOWN, fenced on ``token``; see ``Store.mark_unknown``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: the database could not be read or written.
        """

        def transition(current: Record | None, seq: int) -> tuple[Record, Entry]:
            return unknown_transition(
                current, key=key, token=token, reason=reason, now=now, seq=seq
            )

        return self._fenced_update("mark_unknown", scope, key, token, transition)

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        """CLAIMED → (none), fenced on ``token``; see ``Store.release``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: the database could not be read or written.
        """
        with self._write("release") as conn:
            current, seq = _select_for_write(conn, scope, key)
            entry = release_transition(
                current,
                key=key,
                token=token,
                reason=reason,
                now=now,
                seq=seq,
            )
            _insert_entry(conn, entry)
            conn.execute(_DELETE_RECORD, (scope, key))

    def _write_held(
        self,
        conn: sqlite3.Connection,
        held: Record,
        transition: Callable[[Record | None, int], tuple[Record, Entry]],
    ) -> Record:
        record, entry = transition(held, 0)
        conn.execute(_INSERT_ENTRY_AUTO, _params(entry)[1:])
        if self._faults is not None:
            self._faults("mid_record")
        params = [*_update_params(record), held.token, held.ledger_head]
        if conn.execute(_UPDATE_HELD, params).rowcount != 1:
            raise _StaleHeldError
        return record

    def _remember(self, record: Record) -> None:
        with self._held_lock:
            if len(self._held) >= _HELD_LIMIT:
                self._held.pop(next(iter(self._held)))
            self._held[(record.scope, record.key, record.token)] = record

    def _fenced_update(
        self,
        operation: str,
        scope: str,
        key: str,
        token: int,
        transition: Callable[[Record | None, int], tuple[Record, Entry]],
    ) -> Record:
        with self._held_lock:
            held = self._held.pop((scope, key, token), None)
        if held is not None:
            # The holder's write, computed from the record this store gave it: no read, and the
            # UPDATE applies only if the row is still that record. Otherwise the transaction
            # rolls back (our ledger row with it) and the read below decides from the row.
            try:
                with self._write(operation) as conn:
                    record = self._write_held(conn, held, transition)
            except _StaleHeldError:
                pass
            else:
                return record
        with self._write(operation) as conn:
            current, seq = _select_for_write(conn, scope, key)
            record, entry = transition(current, seq)
            _insert_entry(conn, entry)
            if self._faults is not None:
                self._faults("mid_record")
            _update_record(conn, record)
        return record

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """Delete terminal records past retention, one ``purged`` entry each; see ``Store.purge``.

        Raises:
            StoreUnavailableError: the database could not be read or written.
        """
        cutoff = to_micros(now - retention)
        with self._write("purge") as conn:
            # Each status filter repeats its partial index's WHERE so the planner can use it; the
            # index's implicit (scope, key) suffix already gives the tie-break order.
            rows = conn.execute(
                _SELECT_RECORDS + " WHERE status IN ('SUCCEEDED', 'FAILED') AND updated_at <= ?"
                " ORDER BY updated_at, scope, key LIMIT ?",
                (cutoff, limit),
            ).fetchall()
            seq = _next_seq(conn)
            for offset, row in enumerate(rows):
                record = _load(Record, row)
                _insert_entry(conn, purge_transition(record, now=now, seq=seq + offset))
                conn.execute(_DELETE_RECORD, (record.scope, record.key))
        return len(rows)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, scope: str, key: str) -> Record | None:
        """The record, or None. Never writes.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        with self._connection("get") as conn:
            return _select_record(conn, scope, key)

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """The columns a replay needs, or None if there is no record. Never writes.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        # The replay path: kept free of the context-manager machinery of the write path.
        slot: _Slot | None = None if self._in_memory else getattr(self._local, "slot", None)
        try:
            if slot is None or self._closed:
                with self._connection("replay_view") as conn:
                    rows = conn.execute(_SELECT_VIEW, (scope, key)).fetchall()
            else:
                rows = slot.conn.execute(_SELECT_VIEW, (scope, key)).fetchall()
        except sqlite3.Error as exc:
            raise _translate(exc, "replay_view") from exc
        if not rows:
            return None
        status, fingerprint, outcome, attempt, provider_key = rows[0]
        return ReplayView(key, _STATUSES[status], fingerprint, outcome, attempt, provider_key)

    def newest(self, scope: str, family: str) -> Record | None:
        """The record of ``family`` with the highest generation, or None.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        with self._connection("newest") as conn:
            # Generations are unique per family; a tie goes to the oldest, as in MemoryStore.
            # INDEXED BY pins the plan: for that tie-break the planner would otherwise sort the
            # whole scope, read through the primary key, instead of the top generation only.
            rows = conn.execute(
                _SELECT_RECORDS + " INDEXED BY payonce_records_newest WHERE scope = ?"
                " AND family = ? ORDER BY generation DESC, created_at, key LIMIT 1",
                (scope, family),
            ).fetchall()
        return _load(Record, rows[0]) if rows else None

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """UNKNOWN records and CLAIMED ones whose lease expired at ``now``, oldest first.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        with self._connection("scan") as conn:
            rows = conn.execute(
                _SELECT_RECORDS + " WHERE status IN ('CLAIMED', 'UNKNOWN')"
                " AND (status = 'UNKNOWN' OR lease_expires_at <= ?)"
                " ORDER BY created_at, scope, key LIMIT ?",
                (to_micros(now), limit),
            ).fetchall()
        return [_load(Record, row) for row in rows]

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """Up to ``limit`` ledger entries with ``seq > after``, in sequence order.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        with self._connection("entries") as conn:
            rows = conn.execute(_SELECT_ENTRIES, (after, limit)).fetchall()
        return [_load(Entry, row) for row in rows]

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        """``(scope, key, ledger_head)`` of records in (scope, key) order, after ``after``.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        with self._connection("heads") as conn:
            if after is None:
                rows = conn.execute(
                    "SELECT scope, key, ledger_head FROM payonce_records "
                    "ORDER BY scope, key LIMIT ?",
                    (limit,),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT scope, key, ledger_head FROM payonce_records "
                    "WHERE (scope, key) > (?, ?) ORDER BY scope, key LIMIT ?",
                    (after[0], after[1], limit),
                ).fetchall()
        return [(scope, key, head) for scope, key, head in rows]

    def checkpoints(self) -> Sequence[Checkpoint]:
        """Every sealed checkpoint, in order.

        Raises:
            StoreUnavailableError: the database could not be read.
        """
        with self._connection("checkpoints") as conn:
            rows = conn.execute(_SELECT_CHECKPOINTS).fetchall()
        return [_load(Checkpoint, row) for row in rows]

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store the next checkpoint.

        Raises:
            ConflictError: its number is not the next one (another worker sealed it first).
            StoreUnavailableError: the database could not be written.
        """
        with self._write("append_checkpoint") as conn:
            # Numbers stay contiguous, as in the reference store: a gap would read as truncation.
            (expected,) = conn.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM payonce_checkpoints"
            ).fetchall()[0]
            if checkpoint.number != expected:
                raise _checkpoint_conflict(checkpoint.number)
            try:
                conn.execute(_INSERT_CHECKPOINT, _params(checkpoint))
            except sqlite3.IntegrityError as exc:
                raise _checkpoint_conflict(checkpoint.number) from exc

    def close(self) -> None:
        """Close every connection this store opened; the store is unusable afterwards.

        Call it when no other thread is inside a store method.
        """
        with self._shared_lock, self._registry_lock:
            self._closed = True
            connections = [slot.conn for slot in self._slots]
            if self._shared is not None:
                connections.append(self._shared)
            self._slots.clear()
            self._shared = None
        for conn in connections:
            _close_quietly(conn)


# -- module helpers ------------------------------------------------------------------------------


def _close_quietly(conn: sqlite3.Connection) -> None:
    with suppress(sqlite3.Error):
        conn.close()


def _checkpoint_conflict(number: int) -> ConflictError:
    # The same message as the reference store: the caller's remedy is identical.
    return ConflictError(
        f"checkpoint {number} was sealed concurrently by another worker; "
        "read the checkpoints again and seal from the newest one.",
        number=number,
    )


def _closed_error(operation: str) -> StoreClosedError:
    return StoreClosedError(store="SQLiteStore", operation=operation)


def _missing(path: str) -> StoreMissingError:
    return StoreMissingError(
        f"there is no store at {path} (no SQLite file with payonce's tables there), and it was "
        "opened with create=False (as every payonce command but migrate and demo): check the "
        "path (sqlite:///relative.db, sqlite:////absolute.db), or create the store with "
        "`payonce migrate --store URL`.",
        option="path",
    )


def _translate(exc: sqlite3.Error, operation: str) -> StoreError:
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError):
        # Busy/locked after the timeout, I/O, full disk, unopenable or read-only file:
        # conditions that pass or that an operator fixes, after which the same intent is retried.
        return StoreUnavailableError(f"SQLite reported {name} ({exc})", operation=operation)
    return StoreError(
        f"the payonce store failed during {operation}: SQLite reported {name} ({exc}). This is "
        "not transient: the database file may be damaged or its schema changed outside payonce; "
        "stop writing to it and check it before retrying.",
        operation=operation,
    )

"""The PostgreSQL store without I/O (L4): row codecs and flows (statements: ``_postgres_schema``).

The tables are those of the SQLite store (``payonce.stores._sqlite_sql.MIGRATIONS``): the same
names, the same columns, times as BIGINT microseconds since the epoch. The dialect differences,
written out in ``_postgres_schema``: ``seq`` is an identity column (not gapless: a rolled-back
insert consumes a number), ``scope`` and ``key`` sort byte-wise (``COLLATE "C"``, so ``heads``
pages in the order every store uses), triggers are PL/pgSQL functions, and the claim is a
server-side function (DESIGN §7).

Every operation is written here once, as a flow: a generator that yields the statements it needs
and receives their rows. ``payonce.stores._postgres`` and ``_postgres_async`` drive the flows on
a sync or an async connection, so the two twins differ only in how they execute a statement (the
shape of the guard's effect flows). Every statement is a module constant; no text in it comes
from input.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import psycopg

from payonce._chain import from_micros, to_micros
from payonce._errors import (
    ConfigurationError,
    ConflictError,
    LeaseLostError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from payonce._model import (
    Checkpoint,
    Claimed,
    Entry,
    Event,
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
from payonce.stores._postgres_schema import (
    APPLIED,
    CLAIM,
    DELETE_FENCED,
    DELETE_RECORD,
    DURABILITY,
    HAS_MIGRATION_TABLE,
    INSERT_CHECKPOINT,
    INSERT_ENTRY,
    LOCK_MIGRATIONS,
    MIGRATION_LOCK,
    MIGRATION_TABLE,
    MIGRATIONS,
    RECORD_MIGRATION,
    SELECT_CHECKPOINTS,
    SELECT_DUE,
    SELECT_ENTRIES,
    SELECT_HEADS_AFTER,
    SELECT_HEADS_FIRST,
    SELECT_HORIZON,
    SELECT_NEWEST,
    SELECT_ONE,
    SELECT_PURGEABLE,
    SELECT_VIEW,
    SET_LOCK_TIMEOUT,
    UPDATE_FENCED,
)

__all__ = ["Flow", "Flows", "Query"]

_T = TypeVar("_T")
_log = logging.getLogger("payonce.stores.postgres")
_LOOPS: Final = 16  # compare-and-set rounds before a flow gives up (a livelock, not a race)
_REMEMBERED: Final = 4096  # records kept for one-round-trip fenced writes
_UNSAFE_COMMIT: Final = frozenset({"off", "local"})
_STATUSES: Final = {status.value: status for status in Status}
_EVENTS: Final = {event.value: event for event in Event}

# -- rows ------------------------------------------------------------------------------------------


def _record(row: Sequence[Any]) -> Record:
    (scope, key, status, fingerprint, intent, provider_key, operation, amount, currency, token,
     attempt, lease, outcome, reason, head, created, updated, family, generation) = row  # fmt: skip
    return Record(
        scope, key, _STATUSES[status], fingerprint, intent, provider_key, operation, amount,
        currency, token, attempt, None if lease is None else from_micros(lease), outcome, reason,
        head, from_micros(created), from_micros(updated), family, generation,
    )  # fmt: skip


def _entry(row: Sequence[Any]) -> Entry:
    seq, at, scope, key, event, status_from, status_to, *rest = row
    return Entry(
        seq, from_micros(at), scope, key, _EVENTS[event],
        None if status_from is None else _STATUSES[status_from],
        None if status_to is None else _STATUSES[status_to], *rest,
    )  # fmt: skip


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    number, at, *rest = row
    return Checkpoint(number, from_micros(at), *rest)


def _entry_params(entry: Entry) -> tuple[Any, ...]:
    """The 13 values of ``INSERT_ENTRY`` (``_postgres_schema``): an entry without its seq."""
    return (
        to_micros(entry.at), entry.scope, entry.key, entry.event.value,
        None if entry.status_from is None else entry.status_from.value,
        None if entry.status_to is None else entry.status_to.value,
        entry.token, entry.attempt, entry.amount, entry.currency, entry.detail,
        entry.prev_hash, entry.hash,
    )  # fmt: skip


def _mutable_params(record: Record) -> tuple[Any, ...]:
    lease = record.lease_expires_at
    return (
        record.status.value, record.token, record.attempt,
        None if lease is None else to_micros(lease), record.outcome, record.reason,
        record.ledger_head, to_micros(record.updated_at),
    )  # fmt: skip


# -- flows -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """One statement a flow needs; ``many`` runs it once per parameter tuple in ``params``."""

    text: str
    params: Sequence[Any] | None = None
    many: bool = False


# A flow yields statements, receives their rows (or has the driver's exception thrown in) and
# returns the operation's result.
Flow = Generator[Query, list[tuple[Any, ...]], _T]


class _Remembered:
    """The CLAIMED and UNKNOWN records this store last returned, by key, so that a fenced write
    or a takeover can skip its read.

    Bounded (oldest first out) and only a hint: every write it feeds is a compare-and-set on the
    ledger head, and a stale hint costs one read, never a wrong write. Only CLAIMED and UNKNOWN
    records are kept (the ones a complete or a takeover starts from): a finished record is
    never fenced again, so a completed call or a replay leaves nothing behind and the memory
    holds the calls in flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: OrderedDict[tuple[str, str], Record] = OrderedDict()

    def get(self, scope: str, key: str) -> Record | None:
        with self._lock:
            return self._records.get((scope, key))

    def put(self, record: Record) -> None:
        where = (record.scope, record.key)
        with self._lock:
            if record.status.terminal:
                self._records.pop(where, None)
                return
            self._records[where] = record
            self._records.move_to_end(where)
            if len(self._records) > _REMEMBERED:
                self._records.popitem(last=False)

    def forget(self, scope: str, key: str) -> None:
        with self._lock:
            self._records.pop((scope, key), None)


def lock_millis(wait: timedelta) -> str:
    """``wait`` as a lock_timeout value: whole milliseconds, at least one (0 waits for ever)."""
    return f"{max(wait // timedelta(milliseconds=1), 1)}ms"


class Flows:
    """Every operation of the store as a flow; shared by both twins."""

    def __init__(self) -> None:
        self._remembered = _Remembered()

    def _claim_flow(self, new: NewRecord, now: datetime, lease_for: timedelta) -> Flow[Claimed]:
        head: str | None = None
        prev_token = 0
        for _ in range(_LOOPS):
            record, entry = claim_transition(
                new, now=now, lease_for=lease_for, seq=0, prev_hash=head, prev_token=prev_token
            )
            lease = record.lease_expires_at
            assert lease is not None  # a claim always starts a lease
            rows = yield Query(
                CLAIM,
                (
                    new.scope, new.key, new.fingerprint, new.intent, new.provider_key,
                    new.operation, new.amount, new.currency, new.family, new.generation,
                    record.token, to_micros(lease), to_micros(now), entry.detail,
                    entry.prev_hash, entry.hash, head,
                ),
            )  # fmt: skip
            verdict, *stored = rows[0]
            if verdict == "claimed":
                self._remembered.put(record)
                return Claimed(record, record.lease)
            if verdict == "existing":
                existing = _record((new.scope, new.key, *stored))
                self._remembered.put(existing)
                return Claimed(existing, None)
            if verdict == "history":
                # The key lived before: continue its chain and its tokens (they only grow).
                head, prev_token = stored[12], stored[7]
            # "retry": the holder released the key between our conflict and our read.
        raise _livelock("claim")

    def _read_flow(self, scope: str, key: str) -> Flow[Record | None]:
        rows = yield Query(SELECT_ONE, (scope, key))
        if not rows:
            self._remembered.forget(scope, key)
            return None
        record = _record(rows[0])
        self._remembered.put(record)
        return record

    def _fenced_flow(
        self,
        operation: str,
        scope: str,
        key: str,
        token: int,
        step: Callable[[Record | None], tuple[Record | None, Entry]],
        *,
        sent: list[str],
    ) -> Flow[Record | None]:
        """Apply ``step`` (a fenced transition; a None record deletes) by compare-and-set.

        ``sent`` collects the hash of every entry this flow sends, so that ``_landed_flow`` can
        tell afterwards whether a write whose answer was lost committed."""
        current = self._remembered.get(scope, key)
        fresh = False
        for _ in range(_LOOPS):
            if current is None:
                current = yield from self._read_flow(scope, key)
                fresh = True
            try:
                record, entry = step(current)
            except LeaseLostError:
                if fresh:
                    raise
                current = None  # the remembered record may be stale: read the row
                continue
            assert current is not None  # step fences: it refuses a missing record
            where = (scope, key, current.token, current.ledger_head)
            sent.append(entry.hash)
            if record is None:
                rows = yield Query(DELETE_FENCED, (*where, *_entry_params(entry)))
            else:
                rows = yield Query(
                    UPDATE_FENCED, (*_mutable_params(record), *where, *_entry_params(entry))
                )
            if rows:
                if record is None:
                    self._remembered.forget(scope, key)
                else:
                    self._remembered.put(record)
                return record
            current, fresh = None, False  # the record moved on since we computed: look again
        raise _livelock(operation)

    def _takeover_flow(
        self,
        scope: str,
        key: str,
        *,
        token: int,
        now: datetime,
        lease_for: timedelta,
    ) -> Flow[Claimed]:
        current = self._remembered.get(scope, key)
        fresh = False
        for _ in range(_LOOPS):
            if current is None:
                current = yield from self._read_flow(scope, key)
                fresh = True
                if current is None:
                    raise LeaseLostError(key=key, token=token)
            if not takeover_eligible(current, token=token, now=now):
                if fresh:
                    return Claimed(current, None)
                current = None
                continue
            record, entry = takeover_transition(current, now=now, lease_for=lease_for, seq=0)
            rows = yield Query(
                UPDATE_FENCED,
                (
                    *_mutable_params(record), scope, key, current.token, current.ledger_head,
                    *_entry_params(entry),
                ),
            )  # fmt: skip
            if rows:
                self._remembered.put(record)
                return Claimed(record, record.lease)
            current, fresh = None, False
        raise _livelock("takeover")

    def _complete_flow(
        self,
        scope: str,
        key: str,
        *,
        token: int,
        status: Status,
        outcome: str,
        now: datetime,
        sent: list[str],
    ) -> Flow[Record]:
        def step(current: Record | None) -> tuple[Record | None, Entry]:
            return complete_transition(
                current, key=key, token=token, status=status, outcome=outcome, now=now, seq=0
            )

        record = yield from self._fenced_flow("complete", scope, key, token, step, sent=sent)
        assert record is not None
        return record

    def _unknown_flow(
        self,
        scope: str,
        key: str,
        *,
        token: int,
        reason: str,
        now: datetime,
        sent: list[str],
    ) -> Flow[Record]:
        def step(current: Record | None) -> tuple[Record | None, Entry]:
            return unknown_transition(current, key=key, token=token, reason=reason, now=now, seq=0)

        record = yield from self._fenced_flow("mark_unknown", scope, key, token, step, sent=sent)
        assert record is not None
        return record

    def _release_flow(
        self,
        scope: str,
        key: str,
        *,
        token: int,
        reason: str,
        now: datetime,
        sent: list[str],
    ) -> Flow[None]:
        def step(current: Record | None) -> tuple[Record | None, Entry]:
            entry = release_transition(current, key=key, token=token, reason=reason, now=now, seq=0)
            return None, entry

        yield from self._fenced_flow("release", scope, key, token, step, sent=sent)

    def _landed_flow(
        self, scope: str, key: str, sent: list[str], *, deletes: bool
    ) -> Flow[tuple[bool, Record | None]]:
        """Whether a fenced write whose answer was lost (R15c) committed, from a fresh read.

        For complete and mark_unknown: the write landed when the record's ledger head is an
        entry it sent. Only the lease holder computes entries with its fencing token, so no
        other writer produces that head. (A takeover is not checked this way: two workers taking
        one record over at the same instant compute the same entry.) A release (``deletes``)
        landed when the record is gone; if another worker took it over and released it since,
        the answer is the same for the caller: the key is free. Anything else means it did not
        land, or the record moved on: the caller keeps the original error.
        """
        record = yield from self._read_flow(scope, key)
        if deletes:
            return record is None, record
        return record is not None and record.ledger_head in sent, record

    def _view_flow(self, scope: str, key: str) -> Flow[ReplayView | None]:
        rows = yield Query(SELECT_VIEW, (scope, key))
        if not rows:
            return None
        status, fingerprint, outcome, attempt, provider_key = rows[0]
        return ReplayView(key, _STATUSES[status], fingerprint, outcome, attempt, provider_key)

    def _newest_flow(self, scope: str, family: str) -> Flow[Record | None]:
        rows = yield Query(SELECT_NEWEST, (scope, family))
        return _record(rows[0]) if rows else None

    def _scan_flow(self, now: datetime, limit: int) -> Flow[list[Record]]:
        rows = yield Query(SELECT_DUE, (to_micros(now), limit))
        return [_record(row) for row in rows]

    def _purge_flow(self, now: datetime, retention: timedelta, limit: int) -> Flow[int]:
        # Runs in one transaction: the rows stay locked from the SELECT to the DELETE, and a
        # concurrent purger skips them instead of purging them twice.
        rows = yield Query(SELECT_PURGEABLE, (to_micros(now - retention), limit))
        records = [_record(row) for row in rows]
        if not records:
            return 0
        entries = [_entry_params(purge_transition(r, now=now, seq=0)) for r in records]
        yield Query(INSERT_ENTRY, entries, many=True)
        yield Query(DELETE_RECORD, [(r.scope, r.key) for r in records], many=True)
        for record in records:
            self._remembered.forget(record.scope, record.key)
        return len(records)

    def _entries_flow(self, after: int, limit: int) -> Flow[list[Entry]]:
        rows = yield Query(SELECT_ENTRIES, (after, limit))
        return [_entry(row) for row in rows]

    def _heads_flow(
        self, after: tuple[str, str] | None, limit: int
    ) -> Flow[list[tuple[str, str, str]]]:
        if after is None:
            rows = yield Query(SELECT_HEADS_FIRST, (limit,))
        else:
            rows = yield Query(SELECT_HEADS_AFTER, (after[0], after[1], limit))
        return [(scope, key, head) for scope, key, head in rows]

    def _checkpoints_flow(self) -> Flow[list[Checkpoint]]:
        rows = yield Query(SELECT_CHECKPOINTS)
        return [_checkpoint(row) for row in rows]

    def _append_checkpoint_flow(self, checkpoint: Checkpoint) -> Flow[None]:
        c = checkpoint
        params = (c.number, to_micros(c.at), c.first_seq, c.last_seq, c.count, c.digest,
                  c.prev_hash, c.hash, c.number)  # fmt: skip
        try:
            rows = yield Query(INSERT_CHECKPOINT, params)
        except psycopg.errors.UniqueViolation as exc:
            raise _checkpoint_conflict(c.number) from exc
        if not rows:
            raise _checkpoint_conflict(c.number)

    def _horizon_flow(self, lock_wait: timedelta) -> Flow[int]:
        """The highest seq at or below which every ledger entry is final; run in one transaction.

        ``seq`` is drawn at INSERT time, not at commit: an uncommitted 41 can sit below a
        visible 42. Once ``payonce_ledger_horizon()`` holds its SHARE lock, every transaction
        that drew a seq has committed or rolled back (see ``SELECT_HORIZON`` for why), so every
        number up to the largest present is final. The lock ends with this transaction's commit,
        right after one ``max(seq)`` index lookup.
        """
        yield Query(SET_LOCK_TIMEOUT, (lock_millis(lock_wait),))
        try:
            ((horizon,),) = yield Query(SELECT_HORIZON)
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            # A hot standby refuses the lock: not an outage to wait out (verify_ledger then
            # reads to the newest entry instead; a seal or an audit fails with this).
            raise StoreError(
                "the ledger's horizon cannot be taken on this PostgreSQL server: it is a hot "
                "standby (in recovery). Seal, audit and verify against the primary.",
                operation="ledger_horizon",
            ) from exc
        except psycopg.errors.LockNotAvailable as exc:
            raise ConflictError(
                "the PostgreSQL ledger stayed busy with writers for "
                f"{lock_wait.total_seconds():g} s, so nothing was sealed; seal again later. If "
                "this repeats, a long transaction is holding payonce_ledger (find it in "
                "pg_locks and pg_stat_activity) and should be ended.",
                operation="ledger_horizon",
                waited=lock_wait,
            ) from exc
        return int(horizon)

    def _open_flow(self, allow_unsafe_durability: bool, create: bool) -> Flow[None]:
        """Check durability, then apply missing migrations (with ``create``; without, refuse a
        database that needs any); run in one transaction."""
        ((server, fsync, commit, isolation),) = yield Query(DURABILITY)
        _check_durability(str(server), fsync, commit, allow_unsafe_durability)
        _check_isolation(str(server), isolation)
        # Concurrent starters queue here; each re-reads the applied versions under the lock. A
        # migration may take longer than the store's lock_timeout (set on the pool's
        # connections for the writes): this transaction waits for it without a bound, as a
        # starter must, not fail telling to end the migrating session.
        yield Query(SET_LOCK_TIMEOUT, ("0",))
        yield Query(LOCK_MIGRATIONS, (MIGRATION_LOCK,))
        ((has_table,),) = yield Query(HAS_MIGRATION_TABLE)
        if not has_table and create:
            yield from _migrating(Query(MIGRATION_TABLE), 1)
        rows = (yield Query(APPLIED)) if has_table else []
        applied = {int(version) for (version,) in rows}
        if not create and not applied:
            raise StoreMissingError(
                "this PostgreSQL database has no payonce tables, and the store was opened with "
                "create=False (as every payonce command but migrate and demo): check the "
                "database in the URL, or create the store with `payonce migrate --store URL`.",
                option="conninfo",
            )
        known = MIGRATIONS[-1][0]
        if applied and max(applied) > known:
            raise ConfigurationError(
                f"this PostgreSQL database has payonce schema version {max(applied)} but this "
                f"payonce knows only up to {known}: upgrade payonce, or point it at another "
                "database.",
                option="conninfo",
            )
        for number, script in MIGRATIONS:
            if number not in applied:
                if not create:
                    raise ConfigurationError(
                        f"this PostgreSQL database needs payonce schema migration {number}, and "
                        "the store was opened with create=False, which changes no schema: run "
                        "`payonce migrate --store URL` first.",
                        option="conninfo",
                    )
                yield from _migrating(Query(script), number)
                yield Query(RECORD_MIGRATION, (number,))


def _check_durability(version: str, fsync: str | None, commit: str | None, allow: bool) -> None:
    if "cockroachdb" in version.lower():
        return  # every CockroachDB commit is replicated through Raft before it is acknowledged
    problems = []
    if fsync is not None and fsync.lower() == "off":
        problems.append("fsync is off (set fsync = on in postgresql.conf)")
    if commit is not None and commit.lower() in _UNSAFE_COMMIT:
        problems.append(
            f"synchronous_commit is {commit} (set it to on, remote_write or remote_apply for "
            "this role or database, e.g. ALTER ROLE ... SET synchronous_commit = on)"
        )
    if not problems:
        return
    message = (
        "PostgreSQL may lose acknowledged commits: " + "; ".join(problems) + ". A claim must be "
        "durable before the gateway is called, or a crash can let a payment run twice."
    )
    if not allow:
        raise ConfigurationError(
            message + " Fix the setting, or pass allow_unsafe_durability=True to accept the risk.",
            option="allow_unsafe_durability",
        )
    _log.warning("%s Continuing because allow_unsafe_durability=True.", message)


def _migrating(query: Query, number: int) -> Flow[None]:
    """Run one step of migration ``number``; a role without the privilege it needs is told
    which role to run it as instead of getting the driver's error."""
    try:
        yield query
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigurationError(
            f"this PostgreSQL database needs payonce schema migration {number}, and the role "
            f"connected may not apply it ({exc.diag.message_primary}). Run `payonce migrate "
            "--store postgresql://<the role owning the payonce tables>@…` once, then start "
            "again (docs/stores-postgres.md, roles).",
            option="conninfo_or_pool",
        ) from exc


def _check_isolation(version: str, isolation: str | None) -> None:
    """Refuse sessions whose statements run stricter than READ COMMITTED.

    ``payonce_claim`` re-reads the winner of a conflicting insert in a new statement, which sees
    it only under READ COMMITTED (READ UNCOMMITTED is the same in PostgreSQL); under REPEATABLE
    READ or SERIALIZABLE every contested claim would answer "retry" until it gave up. The store's
    own pool sets it per connection; a pool passed in must do the same.
    """
    if "cockroachdb" in version.lower() or isolation is None:
        return
    if isolation.lower() not in ("read committed", "read uncommitted"):
        raise ConfigurationError(
            f"the PostgreSQL session's default_transaction_isolation is {isolation!r}; payonce's "
            "claim needs 'read committed'. Give the pool configure=<a function running SET "
            "default_transaction_isolation TO 'read committed'>, or pass a connection string "
            "and let the store build its pool.",
            option="conninfo_or_pool",
        )


def _livelock(operation: str) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"the record kept changing under {_LOOPS} attempts of {operation}",
        operation=operation,
    )


def _checkpoint_conflict(number: int) -> ConflictError:
    # The same message as the reference store: the caller's remedy is identical.
    return ConflictError(
        f"checkpoint {number} was sealed concurrently by another worker; "
        "read the checkpoints again and seal from the newest one.",
        number=number,
    )

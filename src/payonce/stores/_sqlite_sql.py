"""The SQLite store's schema, statements and row conversion (L4), apart from its connections.

Column names equal the dataclass field names and the statements are generated from the
dataclasses, so SELECT, INSERT, UPDATE and the row conversion cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any, Final, TypeVar

from payonce._chain import from_micros, to_micros
from payonce._errors import (
    ConfigurationError,
)
from payonce._model import (
    Checkpoint,
    Entry,
    Event,
    Record,
    Status,
)

__all__ = ["MIGRATIONS"]

# OFF is refused: a claim that is not durable before the gateway call breaks I4.
_SYNCHRONOUS: Final = ("FULL", "NORMAL", "EXTRA")
_IN_MEMORY: Final = (":memory:", "")
_PRIMARY_KEY_VIOLATION: Final = sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
_WAL_RETRY: Final = timedelta(milliseconds=5)

# Numbered, append-only: never edit a shipped migration, add the next number.
MIGRATIONS: Final[tuple[tuple[int, str], ...]] = (
    (
        1,
        """
        CREATE TABLE payonce_records (
            scope TEXT NOT NULL, key TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('CLAIMED', 'SUCCEEDED', 'FAILED', 'UNKNOWN')),
            fingerprint TEXT NOT NULL, intent TEXT NOT NULL, provider_key TEXT NOT NULL,
            operation TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
            family TEXT, generation INTEGER NOT NULL,
            token INTEGER NOT NULL, attempt INTEGER NOT NULL, lease_expires_at INTEGER,
            outcome TEXT, reason TEXT, ledger_head TEXT NOT NULL,
            created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        CREATE INDEX payonce_records_newest ON payonce_records (scope, family, generation)
            WHERE family IS NOT NULL;
        CREATE INDEX payonce_records_scan ON payonce_records (created_at)
            WHERE status IN ('CLAIMED', 'UNKNOWN');
        CREATE INDEX payonce_records_purge ON payonce_records (updated_at)
            WHERE status IN ('SUCCEEDED', 'FAILED');

        CREATE TABLE payonce_ledger (
            seq INTEGER PRIMARY KEY, at INTEGER NOT NULL,
            scope TEXT NOT NULL, key TEXT NOT NULL, event TEXT NOT NULL,
            status_from TEXT, status_to TEXT, token INTEGER NOT NULL, attempt INTEGER NOT NULL,
            amount INTEGER NOT NULL, currency TEXT NOT NULL, detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL, hash TEXT NOT NULL
        );
        CREATE INDEX payonce_ledger_key ON payonce_ledger (scope, key, seq);
        CREATE TRIGGER payonce_ledger_no_update BEFORE UPDATE ON payonce_ledger
        BEGIN SELECT RAISE(ABORT, 'payonce_ledger is append-only'); END;
        CREATE TRIGGER payonce_ledger_no_delete BEFORE DELETE ON payonce_ledger
        BEGIN SELECT RAISE(ABORT, 'payonce_ledger is append-only'); END;

        CREATE TABLE payonce_checkpoints (
            number INTEGER PRIMARY KEY, at INTEGER NOT NULL,
            first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL,
            digest TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
        );
        CREATE TRIGGER payonce_checkpoints_no_update BEFORE UPDATE ON payonce_checkpoints
        BEGIN SELECT RAISE(ABORT, 'payonce_checkpoints is append-only'); END;
        CREATE TRIGGER payonce_checkpoints_no_delete BEFORE DELETE ON payonce_checkpoints
        BEGIN SELECT RAISE(ABORT, 'payonce_checkpoints is append-only'); END;
        """,
    ),
)

# Column names equal the dataclass field names, and the statements are generated from the
# dataclasses: SELECT, INSERT, UPDATE and the row conversion cannot drift apart, and a field added
# without a migration fails loudly at the first query. Nothing in the generated SQL is input.
_Row = TypeVar("_Row", Record, Entry, Checkpoint)
_FIELDS: Final[dict[type[Any], tuple[str, ...]]] = {
    cls: tuple(field.name for field in dataclasses.fields(cls))
    for cls in (Record, Entry, Checkpoint)
}
_TIMES: Final = frozenset({"at", "lease_expires_at", "created_at", "updated_at"})
_ENUMS: Final[dict[str, type[enum.Enum]]] = {
    "status": Status, "status_from": Status, "status_to": Status, "event": Event,
}  # fmt: skip


def _select_sql(table: str, cls: type[Any]) -> str:
    return f"SELECT {', '.join(_FIELDS[cls])} FROM {table}"  # noqa: S608 (constants only)


def _insert_sql(table: str, cls: type[Any]) -> str:
    names = _FIELDS[cls]
    values = ", ".join("?" for _ in names)
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({values})"  # noqa: S608 (constants)


_SELECT_RECORDS: Final = _select_sql("payonce_records", Record)
_SELECT_ONE: Final = _SELECT_RECORDS + " WHERE scope = ? AND key = ?"
_INSERT_RECORD: Final = _insert_sql("payonce_records", Record)
# Transitions change only these columns; the intent and its digests are written once, at claim.
# _update_record converts by position: status (0), lease_expires_at (3), updated_at (7).
_MUTABLE: Final = (
    "status", "token", "attempt", "lease_expires_at", "outcome", "reason", "ledger_head",
    "updated_at",
)  # fmt: skip
_UPDATE_RECORD: Final = (
    "UPDATE payonce_records SET "  # noqa: S608 (constants only)
    + ", ".join(f"{name} = ?" for name in _MUTABLE)
    + " WHERE scope = ? AND key = ?"
)
_SELECT_VIEW: Final = (
    "SELECT status, fingerprint, outcome, attempt, provider_key FROM payonce_records"
    " WHERE scope = ? AND key = ?"
)
_STATUSES: Final = {status.value: status for status in Status}
_DELETE_RECORD: Final = "DELETE FROM payonce_records WHERE scope = ? AND key = ?"
# A fenced write computed from the record this store handed to the lease holder: it applies only
# if the row is still exactly that record (every transition changes ledger_head).
_UPDATE_HELD: Final = _UPDATE_RECORD + " AND token = ? AND status = 'CLAIMED' AND ledger_head = ?"
_SELECT_ENTRIES: Final = (
    _select_sql("payonce_ledger", Entry) + " WHERE seq > ? ORDER BY seq LIMIT ?"
)
_INSERT_ENTRY: Final = _insert_sql("payonce_ledger", Entry)
# seq left to SQLite: the rowid it assigns is MAX(seq) + 1 under the write lock (no row is ever
# deleted), and seq is not part of the entry's hash.
_INSERT_ENTRY_AUTO: Final = _INSERT_ENTRY.replace("(seq, ", "(", 1).replace(
    "VALUES (?, ", "VALUES (", 1
)
_HELD_LIMIT: Final = 1024
_SELECT_CHECKPOINTS: Final = _select_sql("payonce_checkpoints", Checkpoint) + " ORDER BY number"
_INSERT_CHECKPOINT: Final = _insert_sql("payonce_checkpoints", Checkpoint)
# The write lock held since BEGIN IMMEDIATE makes MAX(seq) + 1 race-free: no other writer can
# append between this read and our INSERT. Each transition reads it in the same statement as
# the row it changes, to keep every transaction at one read.
_NEXT_SEQ: Final = "(SELECT COALESCE(MAX(seq), 0) + 1 FROM payonce_ledger)"
_SELECT_FOR_WRITE: Final = (
    _SELECT_RECORDS.replace(" FROM ", f", {_NEXT_SEQ} FROM ", 1) + " WHERE scope = ? AND key = ?"
)
# For a claim: the next seq and the key's newest entry (a released or purged key keeps its
# chain and its tokens), through the (scope, key, seq) index.
_CLAIM_HEAD: Final = (
    f"SELECT {_NEXT_SEQ}, "  # noqa: S608 (constants only)
    "(SELECT hash FROM payonce_ledger WHERE scope = ?1 AND key = ?2 ORDER BY seq DESC LIMIT 1), "
    "(SELECT token FROM payonce_ledger WHERE scope = ?1 AND key = ?2 ORDER BY seq DESC LIMIT 1), "
    "EXISTS (SELECT 1 FROM payonce_records WHERE scope = ?1 AND key = ?2)"
)
_NEXT_SEQ_ONLY: Final = f"SELECT {_NEXT_SEQ}"


def _applied(conn: sqlite3.Connection, *, create: bool) -> set[int]:
    """The schema versions applied to the database ``conn`` opened, or a ConfigurationError for
    one newer than this payonce knows, or (without ``create``) one that needs a migration. The
    newer schema is named first: a migration would not help there."""
    applied = {version for (version,) in conn.execute("SELECT version FROM payonce_migrations")}
    known = MIGRATIONS[-1][0]
    if applied and max(applied) > known:
        raise ConfigurationError(
            f"this SQLite database has schema version {max(applied)} but this payonce knows only "
            f"up to {known}: upgrade payonce, or point it at another file.",
            option="path",
        )
    missing = [version for version, _ in MIGRATIONS if version not in applied]
    if missing and not create:
        raise ConfigurationError(
            f"this SQLite database needs payonce schema migration {missing[0]}, and the store "
            "was opened with create=False, which changes no schema: run `payonce migrate "
            "--store URL` first.",
            option="path",
        )
    return applied


def _migrate(conn: sqlite3.Connection, *, create: bool = True) -> None:
    """Apply the missing migrations (with ``create``; without, refuse a database that needs
    any); ``conn`` holds the write lock (BEGIN IMMEDIATE).

    Processes opening the same new file at once queue on that lock, and each re-reads the applied
    versions under it, so every migration runs exactly once.
    """
    if create:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS payonce_migrations "
            "(version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
    applied = _applied(conn, create=create)
    for version, script in MIGRATIONS:
        if version in applied:
            continue
        # executescript() would COMMIT first and drop the write lock, letting two openers both
        # apply the migration; the statements run one by one inside our transaction instead.
        for statement in _statements(script):
            conn.execute(statement)
        # applied_at is bookkeeping for operators, never compared with a lease or window, so
        # SQLite's own clock is acceptable here (microseconds, like every time column).
        conn.execute(
            "INSERT INTO payonce_migrations (version, applied_at) "
            "VALUES (?, CAST(strftime('%s', 'now') AS INTEGER) * 1000000)",
            (version,),
        )


def _statements(script: str) -> Iterator[str]:
    # complete_statement() keeps a trigger body (with its inner ';') together.
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \n;"):
                yield buffer.strip()
            buffer = ""
    if buffer.strip(" \n;"):
        raise ValueError(f"a migration ends in an incomplete statement: {buffer.strip()[:80]!r}")


def _next_seq(conn: sqlite3.Connection) -> int:
    (seq,) = conn.execute(_NEXT_SEQ_ONLY).fetchall()[0]
    return int(seq)


def _select_for_write(conn: sqlite3.Connection, scope: str, key: str) -> tuple[Record | None, int]:
    """The record and the next ledger seq, in one statement; (None, 0) if there is no record
    (every transition then refuses before it would need a seq)."""
    rows = conn.execute(_SELECT_FOR_WRITE, (scope, key)).fetchall()
    if not rows:
        return None, 0
    return _load(Record, rows[0][:-1]), int(rows[0][-1])


def _select_record(conn: sqlite3.Connection, scope: str, key: str) -> Record | None:
    # fetchall() runs the statement to completion, so no read snapshot outlives the call: a
    # lingering one would make the next BEGIN IMMEDIATE fail with SQLITE_BUSY_SNAPSHOT.
    rows = conn.execute(_SELECT_ONE, (scope, key)).fetchall()
    return _load(Record, rows[0]) if rows else None


# Per dataclass: the column positions that hold times and enums; every other column is loaded
# as stored. Positions, not a per-column loop, because loading a row is on the replay path.
_TIME_COLUMNS: Final = {
    cls: tuple(i for i, name in enumerate(names) if name in _TIMES)
    for cls, names in _FIELDS.items()
}
_ENUM_COLUMNS: Final = {
    cls: tuple(
        (i, {member.value: member for member in _ENUMS[name]})
        for i, name in enumerate(names)
        if name in _ENUMS
    )
    for cls, names in _FIELDS.items()
}


def _load(cls: type[_Row], row: Sequence[Any]) -> _Row:
    """A row of a ``_select_sql`` statement as the dataclass it was generated from."""
    values = list(row)
    for i in _TIME_COLUMNS[cls]:
        if values[i] is not None:
            values[i] = from_micros(values[i])
    for i, members in _ENUM_COLUMNS[cls]:
        if values[i] is not None:
            values[i] = members[values[i]]
    return cls(*values)


# Per dataclass: all field values at once, in column order (one C call).
_GETTERS: Final = {cls: operator.attrgetter(*names) for cls, names in _FIELDS.items()}


def _params(value: Record | Entry | Checkpoint) -> list[Any]:
    """A dataclass as positional SQL parameters: times in microseconds, enums as their text."""
    cls = type(value)
    values = list(_GETTERS[cls](value))
    for i in _TIME_COLUMNS[cls]:
        if values[i] is not None:
            values[i] = to_micros(values[i])
    for i, _kind in _ENUM_COLUMNS[cls]:
        if values[i] is not None:
            values[i] = values[i].value
    return values


_MUTABLE_GETTER: Final = operator.attrgetter(*_MUTABLE, "scope", "key")


def _update_params(record: Record) -> list[Any]:
    params = list(_MUTABLE_GETTER(record))
    params[0] = record.status.value
    if record.lease_expires_at is not None:
        params[3] = to_micros(record.lease_expires_at)
    params[7] = to_micros(record.updated_at)
    return params


def _update_record(conn: sqlite3.Connection, record: Record) -> None:
    conn.execute(_UPDATE_RECORD, _update_params(record))


def _insert_entry(conn: sqlite3.Connection, entry: Entry) -> None:
    conn.execute(_INSERT_ENTRY, _params(entry))

"""The PostgreSQL store (L4): several service instances on one database (DESIGN §7).

``PostgresStore`` runs on psycopg 3 with a ``psycopg_pool.ConnectionPool``; ``AsyncPostgresStore``
(``payonce.stores._postgres_async``) is its native-async twin on ``AsyncConnectionPool`` (no
threads); it reuses this module's error mapping and checks. Both install with the
``postgres`` extra. Each operation is a flow of ``payonce.stores._postgres_sql``; this module only
drives flows on pooled connections and maps driver errors, once, at this boundary.

Round trips. While most calls find their intent finished (``read_first``, adaptive by default)
the guard first reads five columns of the record: a retry of a finished intent is answered by
that one ``SELECT``, the cheapest replay there is. A
claim is one call of the server-side function ``payonce_claim``: it inserts with ``ON CONFLICT DO
NOTHING`` and, in a new statement, reads the winner, so with ``read_first=False`` a replay is
still one round trip that never writes (a heavier one), and a fresh call saves the read. The
claim's ledger entry is hashed in Python against the chain head the caller expects; for a key
never seen that is the genesis, and the function refuses (writing nothing) when the key has
earlier lives, answering with their head: a second round trip, only for a key released or purged
before.

Fenced writes (complete, mark_unknown, release, takeover) are one statement each: an UPDATE (or
DELETE) conditional on the token and on the record's ledger head, with the ledger INSERT fed by
its RETURNING. The next record and entry are computed from the record this store last returned
for the key, kept in a small bounded in-process map; the ledger head names exactly that state,
so the compare-and-set cannot apply a transition to any other. When the map has no record, or
the compare-and-set matches nothing (another process moved the record on), the flow reads the
row and decides: ``LeaseLostError``, a refused takeover, or one more compare-and-set.

Serialization failures and deadlocks (SQLSTATE 40001, 40P01) restart the flow, a bounded number
of times with jittered backoff; a flow is only ever database work, never the gateway call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import re
import select
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar, cast

from payonce._errors import (
    ConfigurationError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)
from payonce._model import Checkpoint, Claimed, Entry, NewRecord, Record, ReplayView, Status

try:
    import psycopg
    import psycopg_pool
    from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigurationError(
        "the PostgreSQL store needs psycopg 3 and psycopg-pool: install them with "
        "pip install 'payonce[postgres]'",
        option="store",
    ) from exc

from payonce.stores._postgres_schema import MIGRATIONS
from payonce.stores._postgres_sql import Flow, Flows, Query, lock_millis
from payonce.stores._read_first import ReadFirst

__all__ = ["MIGRATIONS", "PostgresStore"]

_T = TypeVar("_T")
_TUPLES_OK: Final = psycopg.pq.ExecStatus.TUPLES_OK
_CURSOR: Final = "_payonce_cursor"  # the attribute a pooled connection keeps its cursor in
_RETURNED: Final = "_payonce_returned"  # and when it last went back to the pool (monotonic)
# A pooled connection idle at least this long is checked for having been ended by the server
# before use (``_closed_by_server``).
_PROBE_IDLE: Final = timedelta(milliseconds=100)

_RETRY_STATES: Final = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_LOCK_NOT_AVAILABLE: Final = "55P03"  # lock_timeout ran out (see _LOCK_WAIT)
# Connection, resources, operator intervention (shutdown, cancel), system, and a read-only
# transaction (connected to a standby after a failover): conditions that pass or that an operator
# fixes, after which the same intent is retried.
_UNAVAILABLE_CLASSES: Final = frozenset({"08", "53", "57", "58", "25", "40"})
_ATTEMPTS: Final = 5
# After a write's answer was lost, how long to wait for a connection to read whether it
# committed; past it the write's own StoreUnavailableError stands (the outage is real).
_LANDED_WAIT: Final = timedelta(seconds=2)
_LANDED: Final = (
    "the answer to a PostgreSQL %s was lost (connection failure), and a fresh read shows it "
    "committed; it counts as done"
)
# How long a seal's ledger_horizon waits for the transactions writing to the ledger (the
# server's lock_timeout); past it the seal gives up with ConflictError and nothing is sealed.
_HORIZON_WAIT: Final = timedelta(seconds=5)
_log = logging.getLogger("payonce.stores.postgres")
_DEAD: Final = (
    "PostgreSQL had closed a pooled connection while it sat idle (a restart, a failover, an "
    "idle timeout); it was replaced before use"
)
_BACKOFF: Final = timedelta(milliseconds=10)


def _retryable(exc: psycopg.Error) -> bool:
    return exc.sqlstate in _RETRY_STATES


def _backoff(attempt: int) -> float:
    # Jitter spreads retries of transactions that collided once; not security-relevant.
    base = _BACKOFF.total_seconds() * 2.0**attempt
    return base * (0.5 + random.random())  # noqa: S311


def _translate(exc: psycopg.Error, operation: str) -> StoreError:
    state = exc.sqlstate or ""
    summary = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if state == _LOCK_NOT_AVAILABLE:
        return StoreUnavailableError(
            f"a lock held by another database session kept this {operation} waiting past the "
            "store's lock_timeout, so it did not happen (an open transaction in psql, a "
            "long-running migration or maintenance on payonce's tables); find that session in "
            "pg_stat_activity and end its transaction",
            operation=operation,
        )
    if isinstance(exc, psycopg_pool.PoolTimeout):
        # Not the server's answer: the pool had no connection to hand out in time.
        return StoreUnavailableError(
            f"no connection of the store's PostgreSQL pool came free in time ({summary}): every "
            "connection was in use, or new ones could not reach the server. If the server "
            "answers, raise the store's max_size or timeout, or lower the concurrency",
            operation=operation,
        )
    what = f"PostgreSQL reported {type(exc).__name__}" + (f" ({state})" if state else "")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) or (
        state[:2] in _UNAVAILABLE_CLASSES
    ):
        return StoreUnavailableError(f"{what}: {summary}", operation=operation)
    return StoreError(
        f"the payonce store failed during {operation}: {what}: {summary}. This is not transient: "
        "the payonce tables may have been changed outside payonce or the role lacks a "
        "privilege; check the database before retrying.",
        operation=operation,
    )


def _not_run(error: StoreUnavailableError) -> bool:
    """Whether the server answered that the write did not run (its lock wait ran out): then
    there is no lost answer to look for, and the lost-answer read would wait on that lock too."""
    cause = error.__cause__
    return isinstance(cause, psycopg.Error) and cause.sqlstate == _LOCK_NOT_AVAILABLE


def _masked(conninfo: str) -> str:
    """The connection target without secrets, for repr (never the password)."""
    if not conninfo:
        return "<pool>"
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "<unparsable conninfo>"
    shown = ("host", "port", "dbname", "user")
    return " ".join(f"{name}={params[name]}" for name in shown if params.get(name))


def _checked_conninfo(conninfo: object, pool_type: str) -> str:
    """A connection string libpq accepts, refused before any connection is tried (the pool would
    otherwise retry a malformed one until its timeout)."""
    if not isinstance(conninfo, str):
        raise ConfigurationError(
            f"pass a libpq connection string or URL ('postgresql://app@db/payments'), or an open "
            f"psycopg_pool.{pool_type}; got {type(conninfo).__name__}",
            option="conninfo_or_pool",
        )
    if "\x00" in conninfo:
        # libpq reads C strings: it would silently cut the string there and could connect to
        # another database than the one named. Not quoted: the string may hold a password.
        raise ConfigurationError(
            "the PostgreSQL connection string holds a NUL character (\\x00), which libpq would "
            "read as its end, connecting elsewhere than the string names: remove it (check "
            "where the string is built or read from). Nothing was connected to.",
            option="conninfo_or_pool",
        )
    try:
        params = conninfo_to_dict(conninfo)
        timeout_from_conninfo(params)  # psycopg reads connect_timeout itself
    except psycopg.Error as exc:
        # Only the error's type: its text may quote the string, password included.
        raise ConfigurationError(
            f"the PostgreSQL connection string is not one libpq accepts "
            f"({type(exc).__name__}): check its spelling, quoting and parameter names, and that "
            "connect_timeout is a number of seconds.",
            option="conninfo_or_pool",
        ) from None
    misread = _misread_url(conninfo, params)
    if misread is not None:
        # No value is quoted: each of these is most likely a piece of the password.
        raise ConfigurationError(
            f"the PostgreSQL connection string {misread}. In a URL, percent-encode a '/' in "
            "the password as %2F and an '@' as %40: libpq ends the password at the first '@' "
            "and the host part at the first '/'. Nothing was connected to.",
            option="conninfo_or_pool",
        )
    return conninfo


_PORT: Final = re.compile(r"\s*[+-]?[0-9]+\s*")


def _misread_url(conninfo: str, params: dict[str, Any]) -> str | None:
    """What in ``conninfo`` no server can answer to, as libpq reads it, or None.

    A password holding an unescaped '/' or '@' makes libpq read its pieces as a port, a host or
    a database name. The pool would retry such a string as an unreachable server until its
    timeout, and every message about it would show those pieces.
    """
    ports = str(params.get("port") or "").split(",")
    if any(port.strip() and not _PORT.fullmatch(port) for port in ports):
        return "has a port that is not a number"
    # libpq reads a host beginning with '/' as a socket directory and '@' as an abstract socket.
    hosts = str(params.get("host") or "").split(",")
    if any("@" in host and not host.startswith(("/", "@")) for host in hosts):
        return "has an '@' in a host name"
    scheme, sep, rest = conninfo.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        authority, slash, path = rest.partition("/")
        if slash and "@" not in authority and "@" in path.partition("?")[0]:
            return (
                "names a database holding an '@' and no user (if the database name really "
                "holds one, write it %40)"
            )
    return None


def _with_pool_defaults(conninfo: str) -> str:
    """``conninfo`` with the connect timeout, TCP keepalive and user timeout settings
    (``_POOL_DEFAULTS``) it does not set itself, for the pools the stores build."""
    given = conninfo_to_dict(conninfo)
    missing = {name: value for name, value in _POOL_DEFAULTS.items() if name not in given}
    if os.environ.get("PGCONNECT_TIMEOUT"):  # libpq's own default, set by the deployment
        missing.pop("connect_timeout", None)
    if psycopg.pq.version() < 120000:  # tcp_user_timeout is libpq 12's; older ones refuse it
        missing.pop("tcp_user_timeout", None)
    return make_conninfo(conninfo, **missing) if missing else conninfo


def _unopened(pool_type: str, how: str) -> ConfigurationError:
    return ConfigurationError(
        f"the psycopg_pool.{pool_type} given to the PostgreSQL store is not open: open it "
        f"before the store uses it ({how}) and keep it open while the store is in use. A pool "
        "that was closed cannot be opened again: build a new one.",
        option="conninfo_or_pool",
    )


def _unreachable(target: str, timeout: timedelta, reason: str) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"could not connect to PostgreSQL ({target}) within {timeout.total_seconds():g} s: "
        f"{reason} (check that the server runs and accepts connections from here, and the "
        "host, port, database, user and password of the connection string; a longer timeout "
        "waits for a server that is still starting)",
        operation="open",
    )


def _libpq_says(exc: psycopg.Error) -> str:
    """libpq's reason on one line (it names host, port, user and database, never a password)."""
    return " ".join(str(exc).split())


def _refused_option(conninfo: str) -> ConfigurationError | None:
    """The error for an option value libpq refuses (``sslmode=bogus``, ``port=abc``), or None.

    libpq checks values only when a connection starts, before any traffic, and a pool retries
    such a string until its timeout as if the server were down. This asks libpq directly. Only
    its refusal of a value is bad input: a connection it fails at once for a missing socket or a
    name that does not resolve yet is an outage to wait out. Any other is abandoned before its
    start-up packet (the server logs nothing for it).
    """
    pgconn = psycopg.pq.PGconn.connect_start(conninfo.encode())
    try:
        if pgconn.status != psycopg.pq.ConnStatus.BAD:
            return None
        says = pgconn.get_error_message()
    finally:
        pgconn.finish()
    # A value libpq checks as it parses the options ("invalid sslmode value"), or as it sets up
    # a socket ('… failed: invalid integer value "x" for connection option "keepalives_idle"').
    if not (says.lstrip().startswith("invalid ") or 'for connection option "' in says):
        return None
    return ConfigurationError(
        "the PostgreSQL connection string has an option libpq refuses: "
        f"{_without_password(says, conninfo)}. Correct that option (libpq's documentation lists "
        "each option's values) and open the store again; nothing was connected to or written.",
        option="conninfo_or_pool",
    )


def _without_password(says: str, conninfo: str) -> str:
    """libpq's text on one line, any quoted password in it masked (libpq quotes the option
    values it refuses)."""
    password = conninfo_to_dict(conninfo).get("password")
    if password:
        says = says.replace(f'"{password}"', '"***"')
    return " ".join(says.split())


def _probe(conninfo: str) -> psycopg.Error | None:
    """Why a connection fails, from one direct connection, or None if it succeeds: the pool
    only reports that it timed out (refused, unknown database or role, authentication failed)."""
    try:
        psycopg.connect(conninfo, connect_timeout=_PROBE_SECONDS).close()
    except psycopg.Error as exc:
        return exc
    return None


def _failure_reason(failure: psycopg.Error | None) -> str:
    """``_unreachable``'s reason for what ``_probe`` found."""
    if failure is None:
        return "it answered only after the pool had given up"
    return _libpq_says(failure)


# A server's refusal of the login or of the database named: the connection string is wrong.
# psycopg has no SQLSTATE for a failed connection (libpq keeps only the text), so libpq's and the
# server's English texts are matched too; a server answering in another language is reported as
# an outage. A wrong or missing password, or no pg_hba.conf entry, is refused at once. A role or
# database that does not exist yet may be created meanwhile (an init job), and a failure of an
# external authentication service (LDAP, RADIUS, PAM: "authentication failed for user") may pass:
# the first are refused only once the whole timeout has passed, the last are outages.
_LOGIN_STATES: Final = frozenset({"28P01"})  # invalid_password
_LOGIN_TEXTS: Final = re.compile(
    r"password authentication failed|no password supplied|no pg_hba\.conf entry"
)
_MISSING_STATES: Final = frozenset({"3D000"})  # invalid_catalog_name
_MISSING_TEXTS: Final = re.compile(r'\b(?:role|database) "[^"]*" does not exist')


def _refused_login(
    target: str, conninfo: str, failure: psycopg.Error | None, *, waited: bool
) -> ConfigurationError | None:
    """The error for a connection the server refused for its credentials or (once the store
    ``waited`` its whole timeout) for a role or database that does not exist (see
    ``_LOGIN_TEXTS``), or None for any other failure."""
    if failure is None:
        return None
    state = failure.sqlstate or ""
    says = _without_password(str(failure), conninfo)
    if state in _LOGIN_STATES or (not state and _LOGIN_TEXTS.search(says)):
        return ConfigurationError(
            f"PostgreSQL refused to authenticate the connection string's user ({target}): "
            f"{says}. This is not an outage, and retrying will not help: fix the user and "
            "password in the connection string (or the role, or the server's pg_hba.conf), then "
            "open the store again. Nothing was written.",
            option="conninfo",
        )
    if waited and (state in _MISSING_STATES or (not state and _MISSING_TEXTS.search(says))):
        return ConfigurationError(
            f"the role or the database named in the PostgreSQL connection string does not exist "
            f"({target}): {says}. Fix the name in the connection string, or create that role or "
            "database (CREATE DATABASE, then `payonce migrate --store URL`), then open the store "
            "again. Nothing was written.",
            option="conninfo",
        )
    return None


def _closed_by_server(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server ended ``conn`` while it sat idle in the pool.

    A restart, a failover, ``pg_terminate_backend`` or ``idle_session_timeout`` end a pooled
    connection without the pool noticing, and the next statement on it would fail. Each of them
    makes the server write its farewell (a FATAL error) and close the socket. An idle
    autocommit connection is otherwise sent nothing (payonce never LISTENs), so a socket with
    something to read means the connection is gone; a rare false alarm costs a reconnect.

    Only a connection idle for ``_PROBE_IDLE`` or more is polled: the poll is a system call that
    lets other threads take the GIL, which cost a third of the throughput of 8 threads
    replaying. Under load every connection is back in use within milliseconds; a server that
    restarted or failed over was down for longer than that, so what it ended is polled.
    """
    returned = getattr(conn, _RETURNED, None)
    if returned is not None and time.monotonic() - returned < _PROBE_IDLE.total_seconds():
        return False
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return True  # already closed
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])  # Windows has no poll


def _returned(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Note when ``conn`` goes back to the pool (see ``_closed_by_server``)."""
    setattr(conn, _RETURNED, time.monotonic())


def _not_autocommit() -> ConfigurationError:
    return ConfigurationError(
        "the connection pool given to the PostgreSQL store hands out connections without "
        "autocommit: every payonce write would stay in an open transaction and be rolled back "
        "when the connection goes back to the pool, so a claim would not hold. Build the pool "
        "with kwargs={'autocommit': True}, or pass a connection string and let the store build "
        "its own pool.",
        option="conninfo_or_pool",
    )


def _closed(operation: str, store: str = "PostgresStore") -> StoreClosedError:
    return StoreClosedError(store=store, operation=operation)


def _validate(
    min_size: int,
    max_size: int,
    timeout: timedelta,
    *,
    allow_unsafe_durability: bool,
    create: bool,
) -> None:
    """Refuse bad options before anything connects."""
    for name, size, example in (("min_size", min_size, 1), ("max_size", max_size, 10)):
        if not isinstance(size, int) or isinstance(size, bool):
            raise ConfigurationError(
                f"{name} must be a whole number (int), e.g. {name}={example}; got a "
                f"{type(size).__name__}. Nothing was connected to.",
                option=name,
            )
    # A string such as "false" would count as true: accept only the two bools.
    for name, flag in (("allow_unsafe_durability", allow_unsafe_durability), ("create", create)):
        if type(flag) is not bool:
            raise ConfigurationError(
                f"{name} must be True or False; got a {type(flag).__name__} (pass the bool "
                "itself, not a string such as 'false'). Nothing was connected to.",
                option=name,
            )
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ConfigurationError(
            f"min_size={min_size}, max_size={max_size}: need 0 <= min_size <= max_size and "
            "max_size >= 1.",
            option="max_size",
        )
    if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
        raise ConfigurationError(
            "timeout must be a positive timedelta, e.g. timedelta(seconds=30)", option="timeout"
        )
    if timeout > _LONGEST_TIMEOUT:
        raise ConfigurationError(
            f"timeout must be at most {_LONGEST_TIMEOUT.total_seconds():g} s (a day), as a store "
            f"URL's timeout option; got {timeout.total_seconds():g} s. Pass a shorter timedelta.",
            option="timeout",
        )


async def _configure_async(
    conn: psycopg.AsyncConnection[Any],
    connected: asyncio.Event | None = None,
    lock_wait: timedelta | None = None,
) -> None:
    await conn.execute(_SESSION)
    if lock_wait is not None:
        await conn.execute(_LOCK_WAIT, (lock_millis(lock_wait),))
    if connected is not None:
        connected.set()


def _configure(
    conn: psycopg.Connection[Any],
    connected: threading.Event | None = None,
    lock_wait: timedelta | None = None,
) -> None:
    """Set up a new pooled connection; ``connected`` is set once one is (see ``_open_owned``)."""
    conn.execute(_SESSION)
    if lock_wait is not None:
        conn.execute(_LOCK_WAIT, (lock_millis(lock_wait),))
    if connected is not None:
        connected.set()


# The claim relies on each statement of payonce_claim taking a new snapshot, which is READ
# COMMITTED; a database whose default is stricter would answer "retry" forever instead.
_SESSION: Final = "SET default_transaction_isolation TO 'read committed'"
# How long a statement of the store waits for a row or table lock another session holds (an
# operator's open transaction, a stuck migration): the store's timeout, unless the role, the
# database or the connection string set a lock_timeout of their own. Without it a claim or a
# complete waited for ever, and the pool's connections with it. Past it the write did not
# happen (55P03), and the caller is told which session to look for.
_LOCK_WAIT: Final = (
    "SELECT set_config('lock_timeout', %s, false) WHERE current_setting('lock_timeout') = '0'"
)
_KWARGS: Final = {"autocommit": True}
# libpq defaults for the connections of a pool the store builds; a connection string's own
# values win. Without them a connection whose peer vanished without a word (a firewall dropping
# it, a partitioned host) blocks the claim or complete on it for the kernel's ~15 minutes of
# retransmissions. Keepalive probes end a wait for an answer after about 10 + 3 * 5 = 25 s of
# silence, tcp_user_timeout a send left unacknowledged for 30 s (on Linux it governs the probes
# too: both about 30 s, measured as docs/stores-postgres.md says). connect_timeout bounds a
# connection attempt to a server that accepts and never answers (hung): without it (and without
# PGCONNECT_TIMEOUT) psycopg holds the pool's worker thread for its default of 130 s, past a
# store that gave up opening.
_POOL_DEFAULTS: Final = {
    "connect_timeout": "10",  # seconds
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",  # milliseconds
}
_PROBE_SECONDS: Final = 2  # libpq's smallest connect_timeout
# How long a store waits for the first connection of the pool it builds before it asks libpq
# whether the connection string is bad input (``_refused_option``); it then waits out the rest
# of its timeout for a server that may be starting.
_FIRST_WAIT: Final = timedelta(seconds=1)
# The longest timeout a store takes: the cap of a store URL's timeout option
# (``payonce.stores._open``); the pool would overflow converting a much longer one.
_LONGEST_TIMEOUT: Final = timedelta(seconds=86_400)


# -- the sync store --------------------------------------------------------------------------------


class PostgresStore(Flows):
    """Records and ledger in PostgreSQL, shared by any number of processes and hosts.

    Args:
        conninfo_or_pool: a libpq connection string or URL (``"postgresql://app@db/payments"``),
            or an open ``psycopg_pool.ConnectionPool`` you own (the store never closes it; give it
            ``kwargs={"autocommit": True}``, and keep PostgreSQL's READ COMMITTED default). The
            pool built from a string gets TCP keepalives and a 30 s ``tcp_user_timeout`` where
            the string sets none; give a pool you own the same in its connection string.
        min_size / max_size: the size of the pool the store creates from a connection string.
        read_first: whether the guard reads five columns before it claims. True: a replay is
            that one ``SELECT``, a fresh call pays it as an extra round trip. False: a fresh
            call is the claim function alone, a replay gets its record from that heavier call.
            None (the default) adapts: it reads first while most recent calls found their
            intent finished, and claims first otherwise. The claim, never the read, decides
            who calls, so every order gives the same answers.
        allow_unsafe_durability: accept a server with ``fsync`` off or ``synchronous_commit``
            off/local (logged as a warning) instead of refusing it.
        timeout: how long to wait for a connection (at start and from the pool).
        create: False opens only a database payonce has set up already, changing nothing: one
            without payonce's tables is refused with ``StoreMissingError``, one that needs a
            migration with ``ConfigurationError`` (run ``payonce migrate``). For read-only
            tools pointed at a database that may be mistyped.

    Raises:
        StoreMissingError: with ``create=False``, a database without payonce's tables.
        ConfigurationError: bad options (a size that is not an int, a flag that is not a bool,
            a timeout over a day), a connection string with an option value libpq refuses or
            holding a NUL, credentials or a database the server refuses (each after about a
            second), unsafe durability settings, a schema newer than this
            version of payonce, a pool passed in that is not open, or one whose connections are
            not in autocommit or run stricter than READ COMMITTED.
        StoreUnavailableError: the server could not be reached in ``timeout``.
        StoreError: the schema could not be created (e.g. a missing privilege).
    """

    # seq comes from an identity column: a rolled-back insert leaves a gap.
    gapless_ledger = False

    @property
    def read_before_claim(self) -> bool:
        """Whether the guard should read before its next claim (see ``read_first``)."""
        return self._read_first.now

    def __init__(
        self,
        conninfo_or_pool: str | psycopg_pool.ConnectionPool[Any],
        *,
        min_size: int = 1,
        max_size: int = 10,
        read_first: bool | None = None,
        allow_unsafe_durability: bool = False,
        timeout: timedelta = timedelta(seconds=30),
        create: bool = True,
    ) -> None:
        super().__init__()
        _validate(
            min_size,
            max_size,
            timeout,
            allow_unsafe_durability=allow_unsafe_durability,
            create=create,
        )
        self._read_first = ReadFirst(read_first)
        self._closed = False
        if isinstance(conninfo_or_pool, psycopg_pool.ConnectionPool):
            if conninfo_or_pool.closed:
                raise _unopened("ConnectionPool", "pool.open(), or build it with open=True")
            self._pool = conninfo_or_pool
            self._owned = False
            conninfo = self._pool.conninfo if isinstance(self._pool.conninfo, str) else ""
        else:
            conninfo = _checked_conninfo(conninfo_or_pool, "ConnectionPool")
            connected = threading.Event()
            self._pool = psycopg_pool.ConnectionPool(
                _with_pool_defaults(conninfo),
                min_size=min_size, max_size=max_size, open=False, kwargs=_KWARGS,
                configure=functools.partial(_configure, connected=connected, lock_wait=timeout),
                timeout=timeout.total_seconds(), name="payonce",
            )  # fmt: skip
            self._owned = True
        self._target = _masked(conninfo)
        try:
            if self._owned:
                self._open_owned(conninfo, timeout, connected if min_size else None)
            self._run(
                "open", lambda: self._open_flow(allow_unsafe_durability, create), transaction=True
            )
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self._target!r})"

    def _open_owned(
        self, conninfo: str, timeout: timedelta, connected: threading.Event | None
    ) -> None:
        """Open the pool this store built, waiting up to ``timeout`` for its ``min_size``
        connections; a string libpq refuses, or credentials or a database the server refuses,
        fail after ``_FIRST_WAIT`` instead.

        ``connected`` is set when the pool has set up a first connection (None with min_size 0:
        nothing to wait for, and no early check: a bad value then fails the first call after
        the pool's timeout). Still unset after ``_FIRST_WAIT``, the store asks libpq about the
        string (``_refused_option``), then connects once itself to see whether the server
        refuses the login or the database (``_refused_login``). Waiting on it rather than on
        the pool keeps the pool open: ``open(wait=True)`` and ``wait`` close a pool that times
        out.
        """
        deadline = time.monotonic() + timeout.total_seconds()
        try:
            self._pool.open(wait=False)
            first = min(timeout, _FIRST_WAIT).total_seconds()
            if connected is not None and not connected.wait(first):
                refused = _refused_option(conninfo) or _refused_login(
                    self._target, conninfo, _probe(conninfo), waited=False
                )
                if refused is not None:
                    raise refused
            with contextlib.suppress(psycopg_pool.PoolTimeout):  # it closed the pool
                self._pool.wait(timeout=max(deadline - time.monotonic(), 0.0))
                return
        except psycopg.Error as exc:
            raise _translate(exc, "open") from exc
        failure = _probe(conninfo)
        refused = _refused_login(self._target, conninfo, failure, waited=True)
        if refused is not None:
            raise refused
        raise _unreachable(self._target, timeout, _failure_reason(failure))

    def _run(
        self,
        operation: str,
        flow: Callable[[], Flow[_T]],
        *,
        transaction: bool = False,
        timeout: float | None = None,
    ) -> _T:
        """Drive a flow on one pooled connection; retry it whole on 40001/40P01."""
        if self._closed:
            raise _closed(operation)
        for attempt in range(_ATTEMPTS):
            try:
                # getconn/putconn rather than pool.connection(): its ``with conn`` adds a commit
                # step that an autocommit connection never needs, on every statement.
                conn = self._live(self._pool.getconn(timeout=timeout), timeout)
                try:
                    if not conn.autocommit:
                        raise _not_autocommit()
                    if not transaction:
                        return _drive(conn, flow())
                    with conn.transaction():
                        return _drive(conn, flow())
                finally:
                    _returned(conn)
                    self._pool.putconn(conn)
            except psycopg.Error as exc:
                if _retryable(exc) and attempt + 1 < _ATTEMPTS:
                    time.sleep(_backoff(attempt))
                    continue
                raise (_closed(operation) if self._closed else _translate(exc, operation)) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _live(
        self, conn: psycopg.Connection[Any], timeout: float | None
    ) -> psycopg.Connection[Any]:
        """``conn``, or if the server ended it while idle another one (see ``_closed_by_server``).

        Every dead one is closed and handed back, so the pool replaces it. After a restart the
        pool may hold nothing but dead connections: this takes at most one more than it can hold.
        """
        for _ in range(self._pool.max_size):
            if not _closed_by_server(conn):
                break
            _log.info(_DEAD)
            conn.close()
            self._pool.putconn(conn)
            conn = self._pool.getconn(timeout=timeout)
        return conn

    def _write(
        self,
        operation: str,
        scope: str,
        key: str,
        flow: Callable[[list[str]], Flow[_T]],
        *,
        deletes: bool = False,
    ) -> _T:
        """Run a fenced write; if its answer was lost, read whether it committed (R15c)."""
        sent: list[str] = []
        try:
            return self._run(operation, lambda: flow(sent))
        except StoreUnavailableError as error:
            if self._closed or not sent or _not_run(error):
                raise
            try:
                done, record = self._read_landed(
                    operation, lambda: self._landed_flow(scope, key, sent, deletes=deletes)
                )
            except StoreError:
                raise error from error.__cause__  # the read failed too: the first error stands
            if not done:
                raise
            _log.warning(_LANDED, operation)
            # What the write returns when it lands: the record it wrote, or None for a release.
            return cast(_T, record)

    def _read_landed(
        self, operation: str, flow: Callable[[], Flow[tuple[bool, Record | None]]]
    ) -> tuple[bool, Record | None]:
        """The lost-answer read, on a fresh connection: twice, since after a server restart the
        pool may hand out another dead idle connection first."""
        try:
            return self._run(operation, flow, timeout=_LANDED_WAIT.total_seconds())
        except StoreUnavailableError:
            return self._run(operation, flow, timeout=_LANDED_WAIT.total_seconds())

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """Create the record as CLAIMED, first writer wins; see ``Store.claim``.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        claimed = self._run("claim", lambda: self._claim_flow(new, now, lease_for))
        self._read_first.claimed(claimed)
        return claimed

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """Take an UNKNOWN or lease-expired record over; see ``Store.takeover``.

        Raises:
            LeaseLostError: the record no longer exists (released or purged meanwhile).
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        # No lost-answer check here (unlike the fenced writes): two workers taking the same
        # record over at the same instant compute the same entry, so a head equal to ours does
        # not prove the takeover was ours. Failing closed costs one lease, never a second call.
        return self._run(
            "takeover",
            lambda: self._takeover_flow(scope, key, token=token, now=now, lease_for=lease_for),
        )

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """CLAIMED → SUCCEEDED or FAILED, fenced on ``token``; see ``Store.complete``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            ValueError: ``status`` is neither SUCCEEDED nor FAILED.
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._write(
            "complete",
            scope,
            key,
            lambda sent: self._complete_flow(
                scope, key, token=token, status=status, outcome=outcome, now=now, sent=sent
            ),
        )

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """CLAIMED → UNKNOWN, fenced on ``token``; see ``Store.mark_unknown``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._write(
            "mark_unknown",
            scope,
            key,
            lambda sent: self._unknown_flow(
                scope, key, token=token, reason=reason, now=now, sent=sent
            ),
        )

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        """CLAIMED → (none), fenced on ``token``; see ``Store.release``.

        Raises:
            LeaseLostError: the record is gone or no longer CLAIMED under ``token``.
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        self._write(
            "release",
            scope,
            key,
            lambda sent: self._release_flow(
                scope, key, token=token, reason=reason, now=now, sent=sent
            ),
            deletes=True,
        )

    def get(self, scope: str, key: str) -> Record | None:
        """The record, or None. Never writes.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("get", lambda: self._read_flow(scope, key))

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """The columns a replay needs, or None. Never writes.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        view = self._run("replay_view", lambda: self._view_flow(scope, key))
        self._read_first.viewed(view)
        return view

    def newest(self, scope: str, family: str) -> Record | None:
        """The record of ``family`` with the highest generation, or None.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("newest", lambda: self._newest_flow(scope, family))

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """UNKNOWN and lease-expired CLAIMED records, oldest first, skipping rows another
        worker is writing at this moment (``FOR UPDATE SKIP LOCKED``).

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("scan", lambda: self._scan_flow(now, limit))

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """Delete terminal records past retention, one ``purged`` entry each.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("purge", lambda: self._purge_flow(now, retention, limit), transaction=True)

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """Up to ``limit`` ledger entries with ``seq > after``, in sequence order.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("entries", lambda: self._entries_flow(after, limit))

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        """``(scope, key, ledger_head)`` of records in (scope, key) order, after ``after``.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("heads", lambda: self._heads_flow(after, limit))

    def checkpoints(self) -> Sequence[Checkpoint]:
        """Every sealed checkpoint, in order.

        Raises:
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run("checkpoints", self._checkpoints_flow)

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store the next checkpoint.

        Raises:
            ConflictError: its number is not the next one (another worker sealed it first).
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        self._run("append_checkpoint", lambda: self._append_checkpoint_flow(checkpoint))

    def ledger_horizon(self) -> int:
        """The highest ledger seq at or below which every entry is final; ``seal_checkpoint``
        seals no further (see ``Store``).

        ``seq`` is drawn at INSERT time, so an uncommitted entry can sit below a visible one.
        One short transaction locks ``payonce_ledger`` in SHARE mode: it waits for the
        transactions writing to the ledger at this moment (at most 5 s; writers arriving
        meanwhile queue behind it), holds new writers back for one ``max(seq)`` lookup, and
        commits. The lock is taken inside ``payonce_ledger_horizon()``, a SECURITY DEFINER
        function of the tables' owner: the role needs only EXECUTE on it.

        Raises:
            ConflictError: the ledger stayed busy with writers for 5 s; nothing was sealed, so
                seal again later.
            StoreError: the role may not execute ``payonce_ledger_horizon()``.
            StoreUnavailableError: the database could not be reached or did not answer.
        """
        return self._run(
            "ledger_horizon", lambda: self._horizon_flow(_HORIZON_WAIT), transaction=True
        )

    def close(self) -> None:
        """Close the pool this store created (a pool passed in stays open)."""
        self._closed = True
        if self._owned:
            self._pool.close()


def _drive(conn: psycopg.Connection[Any], flow: Flow[_T]) -> _T:
    try:
        query = next(flow)
        while True:
            try:
                rows = _execute(conn, query)
            except psycopg.Error as exc:
                query = flow.throw(exc)  # a flow may turn it into a payonce error
            else:
                query = flow.send(rows)
    except StopIteration as stop:
        result: _T = stop.value
        return result


def _has_rows(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    # Not ``cur.description``: it builds a Column object per column on every call, a measurable
    # share of a replay's client time (18 columns on a claim).
    result = cur.pgresult
    return result is not None and result.status == _TUPLES_OK


def _cursor(conn: psycopg.Connection[Any]) -> psycopg.Cursor[Any]:
    """The connection's own reusable cursor: building a cursor per statement costs a tenth of
    a replay's client time. Only the thread holding the connection uses it."""
    cur: psycopg.Cursor[Any] | None = getattr(conn, _CURSOR, None)
    if cur is None or cur.closed:
        cur = conn.cursor()
        setattr(conn, _CURSOR, cur)
    return cur


def _execute(conn: psycopg.Connection[Any], query: Query) -> list[tuple[Any, ...]]:
    cur = _cursor(conn)
    if query.many:
        cur.executemany(query.text, query.params or ())
        return []
    cur.execute(query.text, query.params)
    return cur.fetchall() if _has_rows(cur) else []

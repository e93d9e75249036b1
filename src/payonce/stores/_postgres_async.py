"""The native-async PostgreSQL store (L4): ``AsyncPostgresStore`` on ``AsyncConnectionPool``.

The twin of ``PostgresStore`` in ``payonce.stores._postgres``: the same flows of
``payonce.stores._postgres_sql``, driven awaited on pooled async connections, with the same error
mapping, retries and lost-answer checks. Installs with the ``postgres`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar, cast

import psycopg
import psycopg_pool

from payonce._errors import StoreError, StoreUnavailableError
from payonce._model import Checkpoint, Claimed, Entry, NewRecord, Record, ReplayView, Status
from payonce.stores._postgres import (
    _ATTEMPTS,
    _CURSOR,
    _DEAD,
    _FIRST_WAIT,
    _HORIZON_WAIT,
    _KWARGS,
    _LANDED,
    _LANDED_WAIT,
    _PROBE_SECONDS,
    _backoff,
    _checked_conninfo,
    _closed,
    _closed_by_server,
    _configure_async,
    _failure_reason,
    _has_rows,
    _log,
    _masked,
    _not_autocommit,
    _not_run,
    _refused_login,
    _refused_option,
    _retryable,
    _returned,
    _translate,
    _unopened,
    _unreachable,
    _validate,
    _with_pool_defaults,
)
from payonce.stores._postgres_sql import Flow, Flows, Query
from payonce.stores._read_first import ReadFirst

__all__ = ["AsyncPostgresStore"]

_T = TypeVar("_T")


async def _aprobe(conninfo: str) -> psycopg.Error | None:
    """The async twin of ``_postgres._probe``."""
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, connect_timeout=_PROBE_SECONDS)
    except psycopg.Error as exc:
        return exc
    await conn.close()
    return None


async def _close_quietly(pool: psycopg_pool.AsyncConnectionPool[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        await pool.close()


class AsyncPostgresStore(Flows):
    """The native-async twin of ``PostgresStore`` on ``psycopg_pool.AsyncConnectionPool``.

    The pool opens, the durability check runs and migrations apply on the first call (or on
    ``await store.open()``, to fail at start-up); a pool passed in must be open by then.

    Args:
        conninfo_or_pool: a libpq connection string or URL, or an open ``AsyncConnectionPool``
            you own (give it ``kwargs={"autocommit": True}``; READ COMMITTED, as for
            ``PostgresStore``).
        min_size / max_size / read_first / allow_unsafe_durability / timeout / create: as for
            ``PostgresStore``.

    Raises:
        StoreMissingError: (at ``open``) with ``create=False``, a database without payonce's
            tables.
        ConfigurationError: bad options (at construction); an option value libpq refuses,
            credentials or a database the server refuses, unsafe durability settings, a newer
            schema, or a pool that is not open, not in autocommit or runs stricter than READ
            COMMITTED (at ``open``; a refused ``open`` closes the connections of the pool the
            store built).
    """

    gapless_ledger = False

    @property
    def read_before_claim(self) -> bool:
        """See ``PostgresStore.read_before_claim``."""
        return self._read_first.now

    def __init__(
        self,
        conninfo_or_pool: str | psycopg_pool.AsyncConnectionPool[Any],
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
        self._opened = False
        self._allow_unsafe = allow_unsafe_durability
        self._create = create
        self._timeout = timeout
        self._open_lock = asyncio.Lock()
        self._detached: set[asyncio.Task[None]] = set()  # see _uncancelled
        self._sizes = (min_size, max_size)
        if isinstance(conninfo_or_pool, psycopg_pool.AsyncConnectionPool):
            self._pool = conninfo_or_pool
            self._owned = False
            conninfo = self._pool.conninfo if isinstance(self._pool.conninfo, str) else ""
        else:
            conninfo = _checked_conninfo(conninfo_or_pool, "AsyncConnectionPool")
            self._pool = self._new_pool(conninfo)
            self._owned = True
        self._conninfo = conninfo
        self._target = _masked(conninfo)

    def __repr__(self) -> str:
        return f"AsyncPostgresStore({self._target!r})"

    def _new_pool(self, conninfo: str) -> psycopg_pool.AsyncConnectionPool[Any]:
        """A pool, and the event its first connection sets (see ``_open_owned``)."""
        min_size, max_size = self._sizes
        self._connected = asyncio.Event()
        return psycopg_pool.AsyncConnectionPool(
            _with_pool_defaults(conninfo),
            min_size=min_size, max_size=max_size, open=False, kwargs=_KWARGS,
            configure=functools.partial(
                _configure_async, connected=self._connected, lock_wait=self._timeout
            ),
            timeout=self._timeout.total_seconds(), name="payonce",
        )  # fmt: skip

    async def open(self) -> Self:
        """Open the pool, check durability and migrate, once; later calls return at once.

        Raises:
            ConfigurationError: an option value libpq refuses, credentials or a database the
                server refuses, unsafe durability settings, a newer schema, or a pool passed in
                that is not open (``await pool.open()`` first).
            StoreUnavailableError: the server could not be reached in ``timeout``.
        """
        if self._opened:
            return self
        async with self._open_lock:
            if self._opened:
                return self
            if self._closed:
                raise _closed("open", "AsyncPostgresStore")
            if not self._owned and self._pool.closed:
                raise _unopened("AsyncConnectionPool", "await pool.open(), or async with pool")
            try:
                if self._owned:
                    await self._open_owned()
                opening = functools.partial(self._open_flow, self._allow_unsafe, self._create)
                await self._run_opened("open", opening, transaction=True)
            except BaseException:
                if self._owned:
                    # Close the connections it opened; a later call opens a new pool and
                    # checks again (the sync store's constructor closes its pool the same way).
                    # The new pool goes in first: a cancellation (an anyio cancel scope cancels
                    # every await in it) must not leave the store holding the closed one.
                    closing, self._pool = self._pool, self._new_pool(self._conninfo)
                    await self._uncancelled(_close_quietly(closing))
                raise
            self._opened = True
        return self

    async def _open_owned(self) -> None:
        """The async twin of ``PostgresStore._open_owned``."""
        deadline = time.monotonic() + self._timeout.total_seconds()
        try:
            await self._pool.open(wait=False)
            if self._sizes[0]:
                first = min(self._timeout, _FIRST_WAIT).total_seconds()
                try:
                    await asyncio.wait_for(self._connected.wait(), first)
                except TimeoutError:
                    # libpq's check may resolve the host name: off the event loop.
                    refused = await asyncio.to_thread(_refused_option, self._conninfo)
                    if refused is None:
                        failure = await _aprobe(self._conninfo)
                        refused = _refused_login(
                            self._target, self._conninfo, failure, waited=False
                        )
                    if refused is not None:
                        raise refused from None
            with contextlib.suppress(psycopg_pool.PoolTimeout):  # it closed the pool
                await self._pool.wait(timeout=max(deadline - time.monotonic(), 0.0))
                return
        except psycopg.Error as exc:
            raise _translate(exc, "open") from exc
        failure = await _aprobe(self._conninfo)
        refused = _refused_login(self._target, self._conninfo, failure, waited=True)
        if refused is not None:
            raise refused
        raise _unreachable(self._target, self._timeout, _failure_reason(failure))

    async def _run(
        self,
        operation: str,
        flow: Callable[[], Flow[_T]],
        *,
        transaction: bool = False,
        timeout: float | None = None,
    ) -> _T:
        if not self._opened and not self._closed:  # closed: refused below, by the operation
            await self.open()
        return await self._run_opened(operation, flow, transaction=transaction, timeout=timeout)

    async def _run_opened(
        self,
        operation: str,
        flow: Callable[[], Flow[_T]],
        *,
        transaction: bool = False,
        timeout: float | None = None,
    ) -> _T:
        """Drive a flow on one pooled connection; retry it whole on 40001/40P01."""
        if self._closed:
            raise _closed(operation, "AsyncPostgresStore")
        for attempt in range(_ATTEMPTS):
            try:
                # getconn/putconn, as the sync twin: no commit step on an autocommit connection.
                conn = await self._live(await self._pool.getconn(timeout=timeout), timeout)
                try:
                    if not conn.autocommit:
                        raise _not_autocommit()
                    if not transaction:
                        return await _adrive(conn, flow())
                    async with conn.transaction():
                        return await _adrive(conn, flow())
                finally:
                    _returned(conn)
                    await self._give_back(conn)
            except psycopg.Error as exc:
                if _retryable(exc) and attempt + 1 < _ATTEMPTS:
                    await asyncio.sleep(_backoff(attempt))
                    continue
                raise (
                    _closed(operation, "AsyncPostgresStore")
                    if self._closed
                    else _translate(exc, operation)
                ) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _live(
        self, conn: psycopg.AsyncConnection[Any], timeout: float | None
    ) -> psycopg.AsyncConnection[Any]:
        """See ``PostgresStore._live``."""
        for _ in range(self._pool.max_size):
            if not _closed_by_server(conn):
                break
            _log.info(_DEAD)
            await self._give_back(conn, close=True)
            conn = await self._pool.getconn(timeout=timeout)
        return conn

    async def _give_back(self, conn: psycopg.AsyncConnection[Any], *, close: bool = False) -> None:
        """Hand ``conn`` back to the pool (closed first with ``close``), even if the caller is
        cancelled meanwhile.

        The pool counts a connection it handed out until it comes back: one whose return was
        cut off by a cancellation (a request's deadline, under load, as ``putconn`` waits for
        the pool's lock) would be lost for good, and after ``max_size`` of them every call
        would time out waiting for a connection. So the return runs uncancelled.
        """
        pool = self._pool  # the pool it came from, even if open() swaps in another meanwhile

        async def give_back() -> None:
            if close:
                await conn.close()
            await pool.putconn(conn)

        await self._uncancelled(give_back())

    async def _uncancelled(self, work: Coroutine[Any, Any, None]) -> None:
        """Await ``work`` as a task of its own, which a cancellation of the caller does not
        stop: the caller stops waiting, the work runs to its end."""
        task = asyncio.ensure_future(work)
        self._detached.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._finished)
        await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._detached.discard(task)
        if not task.cancelled():
            # Read, so that a failure nobody awaited any more (its caller was cancelled) is not
            # logged as never retrieved; a caller still waiting gets it from the shield.
            task.exception()

    async def _write(
        self,
        operation: str,
        scope: str,
        key: str,
        flow: Callable[[list[str]], Flow[_T]],
        *,
        deletes: bool = False,
    ) -> _T:
        """See ``PostgresStore._write``."""
        sent: list[str] = []
        try:
            return await self._run(operation, lambda: flow(sent))
        except StoreUnavailableError as error:
            if self._closed or not sent or _not_run(error):
                raise
            try:
                done, record = await self._read_landed(
                    operation, lambda: self._landed_flow(scope, key, sent, deletes=deletes)
                )
            except StoreError:
                raise error from error.__cause__  # the read failed too: the first error stands
            if not done:
                raise
            _log.warning(_LANDED, operation)
            # What the write returns when it lands: the record it wrote, or None for a release.
            return cast(_T, record)

    async def _read_landed(
        self, operation: str, flow: Callable[[], Flow[tuple[bool, Record | None]]]
    ) -> tuple[bool, Record | None]:
        """See ``PostgresStore._read_landed``."""
        try:
            return await self._run(operation, flow, timeout=_LANDED_WAIT.total_seconds())
        except StoreUnavailableError:
            return await self._run(operation, flow, timeout=_LANDED_WAIT.total_seconds())

    async def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """See ``PostgresStore.claim``."""
        claimed = await self._run("claim", lambda: self._claim_flow(new, now, lease_for))
        self._read_first.claimed(claimed)
        return claimed

    async def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """See ``PostgresStore.takeover``."""
        # No lost-answer check here (unlike the fenced writes): two workers taking the same
        # record over at the same instant compute the same entry, so a head equal to ours does
        # not prove the takeover was ours. Failing closed costs one lease, never a second call.
        return await self._run(
            "takeover",
            lambda: self._takeover_flow(scope, key, token=token, now=now, lease_for=lease_for),
        )

    async def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """See ``PostgresStore.complete``."""
        return await self._write(
            "complete",
            scope,
            key,
            lambda sent: self._complete_flow(
                scope, key, token=token, status=status, outcome=outcome, now=now, sent=sent
            ),
        )

    async def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """See ``PostgresStore.mark_unknown``."""
        return await self._write(
            "mark_unknown",
            scope,
            key,
            lambda sent: self._unknown_flow(
                scope, key, token=token, reason=reason, now=now, sent=sent
            ),
        )

    async def release(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> None:
        """See ``PostgresStore.release``."""
        await self._write(
            "release",
            scope,
            key,
            lambda sent: self._release_flow(
                scope, key, token=token, reason=reason, now=now, sent=sent
            ),
            deletes=True,
        )

    async def get(self, scope: str, key: str) -> Record | None:
        """See ``PostgresStore.get``."""
        return await self._run("get", lambda: self._read_flow(scope, key))

    async def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """See ``PostgresStore.replay_view``."""
        view = await self._run("replay_view", lambda: self._view_flow(scope, key))
        self._read_first.viewed(view)
        return view

    async def newest(self, scope: str, family: str) -> Record | None:
        """See ``PostgresStore.newest``."""
        return await self._run("newest", lambda: self._newest_flow(scope, family))

    async def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """See ``PostgresStore.scan``."""
        return await self._run("scan", lambda: self._scan_flow(now, limit))

    async def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """See ``PostgresStore.purge``."""
        return await self._run(
            "purge", lambda: self._purge_flow(now, retention, limit), transaction=True
        )

    async def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """See ``PostgresStore.entries``."""
        return await self._run("entries", lambda: self._entries_flow(after, limit))

    async def heads(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> Sequence[tuple[str, str, str]]:
        """See ``PostgresStore.heads``."""
        return await self._run("heads", lambda: self._heads_flow(after, limit))

    async def checkpoints(self) -> Sequence[Checkpoint]:
        """See ``PostgresStore.checkpoints``."""
        return await self._run("checkpoints", self._checkpoints_flow)

    async def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """See ``PostgresStore.append_checkpoint``."""
        await self._run("append_checkpoint", lambda: self._append_checkpoint_flow(checkpoint))

    async def ledger_horizon(self) -> int:
        """See ``PostgresStore.ledger_horizon``."""
        return await self._run(
            "ledger_horizon", lambda: self._horizon_flow(_HORIZON_WAIT), transaction=True
        )

    async def close(self) -> None:
        """Close the pool this store created (a pool passed in stays open)."""
        self._closed = True
        if self._owned:
            with contextlib.suppress(psycopg.Error):
                await self._pool.close()


async def _adrive(conn: psycopg.AsyncConnection[Any], flow: Flow[_T]) -> _T:
    try:
        query = next(flow)
        while True:
            try:
                rows = await _aexecute(conn, query)
            except psycopg.Error as exc:
                query = flow.throw(exc)
            else:
                query = flow.send(rows)
    except StopIteration as stop:
        result: _T = stop.value
        return result


def _acursor(conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[Any]:
    """See ``payonce.stores._postgres._cursor``."""
    cur: psycopg.AsyncCursor[Any] | None = getattr(conn, _CURSOR, None)
    if cur is None or cur.closed:
        cur = conn.cursor()
        setattr(conn, _CURSOR, cur)
    return cur


async def _aexecute(conn: psycopg.AsyncConnection[Any], query: Query) -> list[tuple[Any, ...]]:
    cur = _acursor(conn)
    if query.many:
        await cur.executemany(query.text, query.params or ())
        return []
    await cur.execute(query.text, query.params)
    return await cur.fetchall() if _has_rows(cur) else []

"""PostgreSQL connections: ended by the server while idle, silent peers, and pools passed in by
the caller.

A restart, a failover or ``pg_terminate_backend`` ends pooled connections while they sit idle;
the store replaces each before use, so the first write after it still lands. A peer that
vanishes without a word is bounded by the TCP keepalive and user timeout the store sets on the
connections of the pools it builds. A pool the caller builds must be open and hand out
autocommit connections at READ COMMITTED, or a claim would not hold: the store refuses any other
before it writes anything.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg.conninfo import make_conninfo

from payonce import AsyncGuard, ConfigurationError, Guard, Status, StoreUnavailableError
from payonce.stores import _postgres
from payonce.stores._postgres import PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.testing import ManualClock
from tests.faults import pg_worker, worker
from tests.faults.pg_worker import Outage

Admin = psycopg.Connection[tuple[Any, ...]]
LEASE = timedelta(seconds=30)


def _sessions(admin: Admin, tag: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (tag,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def _records(admin: Admin) -> int:
    row = admin.execute("SELECT count(*) FROM payonce_records").fetchone()
    assert row is not None
    return int(row[0])


# -- connections the server ended while they sat idle ----------------------------------------------


@pytest.fixture
def probe_every_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Poll every connection at checkout, however briefly it was idle: the tests end
    connections milliseconds after their last use, a real restart or failover takes longer than
    the store's threshold (``_PROBE_IDLE``)."""
    monkeypatch.setattr(_postgres, "_PROBE_IDLE", timedelta(0))


@pytest.mark.usefixtures("probe_every_checkout")
def test_a_call_whose_connections_died_during_the_gateway_call_records_its_outcome(
    database: str, admin: Admin, tmp_path: Path
) -> None:
    state = Outage(database, tmp_path, "payonce-idle-sync", lease=LEASE)
    try:
        ended: list[int] = []
        # The money moves, then the server ends every connection of the store (all idle: the
        # claim's went back to the pool). The complete must land on a fresh one.
        fn = state.provider(after=lambda: ended.append(pg_worker.terminate_idle(admin, state.tag)))

        outcome = state.guard.run(state.intent, fn)

        assert ended
        assert ended[0] >= 1
        assert not outcome.replayed
        record = state.store.get(worker.SCOPE, state.key)
        assert record is not None
        assert record.status is Status.SUCCEEDED
        assert len(worker.read_movements(state.movements)) == 1
        assert state.guard.run(state.intent, state.provider()).replayed
    finally:
        state.close()


@pytest.mark.usefixtures("probe_every_checkout")
def test_the_async_store_replaces_connections_the_server_ended(database: str, admin: Admin) -> None:
    tag = "payonce-idle-async"
    intent = worker.intent_for(tag)
    ended: list[int] = []

    def charge(attempt: object) -> dict[str, str]:
        ended.append(pg_worker.terminate_idle(admin, tag))
        return {"id": "ch_1"}

    async def scenario() -> None:
        store = AsyncPostgresStore(make_conninfo(database, application_name=tag))
        try:
            guard = AsyncGuard(
                store, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock(), lease=LEASE
            )
            outcome = await guard.run(intent, charge)
            assert not outcome.replayed
            record = await store.get(worker.SCOPE, await guard.key_for(intent))
            assert record is not None
            assert record.status is Status.SUCCEEDED
            assert ended
            assert ended[0] >= 1
            pg_worker.terminate_idle(admin, tag)  # and a plain read after it
            assert (await guard.run(intent, charge)).replayed
        finally:
            await store.close()

    asyncio.run(scenario())
    assert len(ended) == 1  # the replay did not call


def test_a_connection_back_in_use_within_the_threshold_is_not_polled(
    database: str, admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other side of the threshold: a connection ended while the store was using it
    # moments ago is not polled, so the call that picks it up fails once, as an outage, and
    # the pool replaces it.
    monkeypatch.setattr(_postgres, "_PROBE_IDLE", timedelta(hours=1))
    state = Outage(database, tmp_path, "payonce-idle-recent", lease=LEASE)
    try:
        assert state.store.get(worker.SCOPE, state.key) is None
        assert pg_worker.terminate_idle(admin, state.tag) == 1  # min_size 1: one connection
        with pytest.raises(StoreUnavailableError):
            state.store.get(worker.SCOPE, state.key)
        assert state.store.get(worker.SCOPE, state.key) is None
    finally:
        state.close()


# -- pools passed in by the caller -----------------------------------------------------------------


def test_a_pool_without_autocommit_is_refused_before_anything_is_written(
    database: str, admin: Admin
) -> None:
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        database, min_size=1, max_size=2, open=True
    )
    try:
        with pytest.raises(ConfigurationError) as caught:
            PostgresStore(pool)
        message = str(caught.value)
        assert "autocommit" in message
        assert "kwargs={'autocommit': True}" in message
        assert caught.value.to_dict()["option"] == "conninfo_or_pool"
        assert not pool.closed  # the caller's pool is the caller's
    finally:
        pool.close()
    assert _records(admin) == 0


def test_the_async_store_refuses_a_pool_without_autocommit_at_open(
    database: str, admin: Admin
) -> None:
    async def scenario() -> None:
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            database, min_size=1, max_size=2, open=False
        )
        await pool.open()
        try:
            store = AsyncPostgresStore(pool)
            with pytest.raises(ConfigurationError, match="autocommit"):
                await store.open()
            guard = AsyncGuard(store, secret=worker.SECRET, scope=worker.SCOPE)
            with pytest.raises(ConfigurationError, match="autocommit"):
                await guard.run(worker.intent_for("async-pool"), lambda attempt: {"id": "x"})
        finally:
            await pool.close()

    asyncio.run(scenario())
    assert _records(admin) == 0


def test_a_pool_stricter_than_read_committed_is_refused(database: str, admin: Admin) -> None:
    def serializable(conn: psycopg.Connection[Any]) -> None:
        conn.execute("SET default_transaction_isolation TO 'serializable'")

    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        database,
        min_size=1,
        max_size=2,
        kwargs={"autocommit": True},
        configure=serializable,
        open=True,
    )
    try:
        with pytest.raises(ConfigurationError) as caught:
            PostgresStore(pool)
    finally:
        pool.close()
    assert "default_transaction_isolation is 'serializable'" in str(caught.value)
    assert "read committed" in str(caught.value)
    assert _records(admin) == 0


def test_a_pool_built_as_documented_works(database: str, admin: Admin) -> None:
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        database, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True
    )
    try:
        store = PostgresStore(pool)
        guard = Guard(store, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock())
        intent = worker.intent_for("own-pool")
        assert not guard.run(intent, lambda attempt: {"id": "ch_1"}).replayed
        assert guard.run(intent, lambda attempt: {"id": "ch_2"}).replayed
        store.close()
        assert not pool.closed  # close() leaves a pool passed in open
    finally:
        pool.close()
    assert _records(admin) == 1


# -- the async store's pool when open fails ------------------------------------------------------


def test_the_async_store_closes_its_connections_when_open_fails_and_can_open_again(
    database: str, admin: Admin
) -> None:
    tag = "payonce-open-refused"
    store = AsyncPostgresStore(
        make_conninfo(database, application_name=tag, options="-c synchronous_commit=off"),
        min_size=2,
    )

    async def refused_twice() -> None:
        for _ in range(2):  # a later open tries again with a new pool, refused the same way
            with pytest.raises(ConfigurationError, match="synchronous_commit is off"):
                await store.open()

    asyncio.run(refused_twice())
    deadline = time.monotonic() + 30
    while _sessions(admin, tag):  # the closed pool's backends leave (polling, not timing)
        assert time.monotonic() < deadline, "the refused store left its connections open"
        time.sleep(0.005)
    assert _records(admin) == 0


# -- pools passed in unopened ----------------------------------------------------------------------


def test_a_pool_that_was_never_opened_is_a_configuration_error(database: str, admin: Admin) -> None:
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        database, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    try:
        # Not StoreUnavailableError ("retry the same intent"): retrying never opens the pool.
        with pytest.raises(
            ConfigurationError, match=r"not open: open it .*pool\.open\(\)"
        ) as caught:
            PostgresStore(pool)
        assert caught.value.option == "conninfo_or_pool"
        pool.open()
        store = PostgresStore(pool)  # the same pool, once opened, is taken
        store.close()
        with pytest.raises(StoreUnavailableError, match="PostgresStore was closed"):
            store.get(worker.SCOPE, "k1_absent")  # a store closed itself: as before
    finally:
        pool.close()
    assert _records(admin) == 0


def test_the_async_store_refuses_a_pool_that_was_never_opened_at_open(
    database: str, admin: Admin
) -> None:
    async def scenario() -> None:
        pool: psycopg_pool.AsyncConnectionPool[Any] = psycopg_pool.AsyncConnectionPool(
            database, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
        )
        store = AsyncPostgresStore(pool)
        try:
            with pytest.raises(ConfigurationError, match=r"await pool\.open\(\)"):
                await store.open()
            with pytest.raises(ConfigurationError, match="not open"):
                await store.get(worker.SCOPE, "k1_absent")
            await pool.open()
            assert await store.get(worker.SCOPE, "k1_absent") is None  # opened later: taken
            await store.close()
            with pytest.raises(StoreUnavailableError, match="AsyncPostgresStore was closed"):
                await store.get(worker.SCOPE, "k1_absent")
        finally:
            await pool.close()

    asyncio.run(scenario())
    assert _records(admin) == 0


# -- TCP keepalives and user timeout on the connections of the pools the store builds -------------

# libpq's parameter: the socket option it sets (Linux).
_SOCKET_OPTIONS = {
    "keepalives": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "keepalives_idle": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    "keepalives_interval": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    "keepalives_count": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    "tcp_user_timeout": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
}
_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}


def _socket_options(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """What libpq set on the connection's TCP socket, read from the socket itself."""
    # fromfd duplicates the descriptor: closing the duplicate leaves the connection alone.
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        found = {name: sock.getsockopt(*option) for name, option in _SOCKET_OPTIONS.items()}
    found["keepalives"] = int(bool(found["keepalives"]))
    return found


def test_the_store_s_connections_end_a_silent_peer_and_the_caller_s_values_win(
    database: str,
) -> None:
    # A peer that vanished without a word (a firewall drop, a partitioned host) would otherwise
    # block a claim or complete for the kernel's ~15 minutes; checked by parameter, on the socket.
    store = PostgresStore(database)
    try:
        with store._pool.connection() as conn:
            assert _socket_options(conn) == _DEFAULTS
    finally:
        store.close()
    own = PostgresStore(make_conninfo(database, keepalives_idle=42, tcp_user_timeout=0))
    try:
        with own._pool.connection() as conn:
            assert _socket_options(conn) == {
                **_DEFAULTS,
                "keepalives_idle": 42,
                "tcp_user_timeout": 0,
            }
    finally:
        own.close()


def test_the_store_s_connection_attempts_end_at_a_hung_server_and_the_caller_s_value_wins(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that accepts and never answers would hold a pool worker's connection attempt for
    # psycopg's default of 130 s (past a store that gave up opening). PGCONNECT_TIMEOUT, the
    # deployment's own default, is left to libpq.
    async def async_timeout(conninfo: str) -> str | None:
        store = await AsyncPostgresStore(conninfo).open()
        try:
            async with store._pool.connection() as conn:
                return conn.info.get_parameters().get("connect_timeout")
        finally:
            await store.close()

    cases = [(database, "10"), (make_conninfo(database, connect_timeout=3), "3"), (database, "25")]
    for conninfo, wanted in cases:
        if wanted == "25":
            monkeypatch.setenv("PGCONNECT_TIMEOUT", "25")
        store = PostgresStore(conninfo)
        try:
            with store._pool.connection() as conn:
                assert conn.info.get_parameters().get("connect_timeout") == wanted
        finally:
            store.close()
        assert asyncio.run(async_timeout(conninfo)) == wanted


def test_the_async_store_s_connections_end_a_silent_peer_and_the_caller_s_values_win(
    database: str,
) -> None:
    async def options(conninfo: str) -> dict[str, int]:
        store = await AsyncPostgresStore(conninfo).open()
        try:
            async with store._pool.connection() as conn:
                return _socket_options(conn)
        finally:
            await store.close()

    assert asyncio.run(options(database)) == _DEFAULTS
    own = make_conninfo(database, keepalives_count=7)
    assert asyncio.run(options(own)) == {**_DEFAULTS, "keepalives_count": 7}

"""Defects found in review of the Redis store, each pinned by the behaviour the caller sees.

* A burst of concurrent calls beyond the client's max_connections waits for a connection
  instead of failing on a healthy Redis; a pool at its limit (Redis Cluster has no blocking
  pool) or one that never frees a connection is named as such, not as an outage.
* The URL check never quotes part of a password (an unencoded '?' in it), and refuses locally
  the option values the first connection would fail on under another name.
* A call in flight while the store closes is told the store closed; a store reused from a
  second event loop is told so; a connection setup Redis refuses is not read as a refused
  CONFIG GET; a flag that is not a bool is refused.
"""

from __future__ import annotations

import asyncio
import threading
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import pytest
import redis
import redis.asyncio
from redis import exceptions as rexc

from payonce import (
    AsyncGuard,
    ConfigurationError,
    Guard,
    Intent,
    PayonceError,
    StoreClosedError,
    StoreUnavailableError,
)
from payonce.stores._redis import AsyncRedisStore, RedisStore, _translate
from payonce.testing import ManualClock
from tests.redis_cluster import redis_cluster, redis_server

LOCAL_URL: Final = "redis://127.0.0.1:6379/0"
SECRET: Final = b"payonce-review-redis-secret-0123456789"
TAIL: Final = "k7Wq2Xv9"  # the part of a password an unencoded '?' cuts off
CALLS: Final = 40
LIMIT: Final = 4  # max_connections, far below CALLS


@pytest.fixture
def prefix(local_prefix: str) -> str:
    """A fresh prefix on the local Redis (tests/faults/conftest.py)."""
    return local_prefix


def _intent(i: int) -> Intent:
    return Intent("charge", 100, "usd", customer="cus_review", reference=f"order-{i}")


# -- 1. connections: wait for one, or say the limit was reached ------------------------------------


def test_async_burst_beyond_max_connections_succeeds(prefix: str) -> None:
    """40 concurrent guarded calls through a client of 4 connections all succeed."""

    async def main() -> list[Any]:
        store = AsyncRedisStore(f"{LOCAL_URL}?max_connections={LIMIT}", prefix=prefix)
        guard = AsyncGuard(store, secret=SECRET, scope="review", clock=ManualClock())

        async def one(i: int) -> Any:
            async def gateway(attempt: Any) -> dict[str, str]:
                return {"id": f"ch_{i}"}

            return await guard.run(_intent(i), gateway)

        try:
            return await asyncio.gather(*(one(i) for i in range(CALLS)), return_exceptions=True)
        finally:
            await store.close()

    results = asyncio.run(main())
    assert [r for r in results if isinstance(r, BaseException)] == []


def test_sync_burst_beyond_max_connections_succeeds(prefix: str) -> None:
    """40 threads through a sync client of 4 connections, started together: all succeed."""
    store = RedisStore(f"{LOCAL_URL}?max_connections={LIMIT}", prefix=prefix)
    guard = Guard(store, secret=SECRET, scope="review", clock=ManualClock())
    start = threading.Barrier(CALLS)

    def one(i: int) -> Any:
        start.wait()
        return guard.run(_intent(i), lambda attempt: {"id": f"ch_{i}"})

    try:
        with ThreadPoolExecutor(CALLS) as pool:
            futures = [pool.submit(one, i) for i in range(CALLS)]
        errors = [f.exception() for f in futures if f.exception() is not None]
    finally:
        store.close()
    assert errors == []


def test_max_connections_error_is_named_not_an_outage() -> None:
    """What a cluster node's pool at its limit raises: the command was not sent, and what to
    change is said."""
    error = _translate(rexc.MaxConnectionsError("Too many connections"), "complete")
    assert isinstance(error, StoreUnavailableError)
    assert "NOT sent" in str(error)
    assert "max_connections" in str(error)
    assert "Redis was unavailable" not in str(error)


def test_cluster_pool_at_its_limit_is_named() -> None:
    """Redis Cluster has no blocking pool: 30 concurrent reads through one connection per node
    fail beyond it, each saying the command was not sent and what to change."""

    async def main(url: str) -> list[Any]:
        store = AsyncRedisStore(url, prefix="review", allow_unsafe_durability=True)
        try:
            await store.connect()
            calls = (store.get("review", f"k1_{i}") for i in range(30))
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await store.close()

    with redis_cluster() as cluster:
        url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}?max_connections=1"
        results = asyncio.run(main(url))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors, "one connection per node served 30 concurrent calls"
    for error in errors:
        assert isinstance(error, StoreUnavailableError)
        assert "connection limit was reached" in str(error)
        assert "NOT sent" in str(error)


def test_pool_wait_running_out_is_named(prefix: str) -> None:
    """A pool whose one connection stays taken: the caller waits its timeout, then is told no
    connection came free and the command was not sent."""
    store = RedisStore(f"{LOCAL_URL}?max_connections=1&socket_timeout=0.2", prefix=prefix)
    pool = store._client.connection_pool
    taken = pool.get_connection()
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            store.get("review", "k1_none")
    finally:
        pool.release(taken)
        store.close()
    assert "no connection of the Redis client's pool came free" in str(caught.value)
    assert "NOT sent" in str(caught.value)


# -- 2. a '?' in a password ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [RedisStore, AsyncRedisStore])
def test_password_with_question_mark_is_not_quoted(make: Any) -> None:
    url = f"redis://default:8841?{TAIL}@127.0.0.1:6379/0"
    with pytest.raises(ConfigurationError) as caught:
        make(url)
    assert TAIL not in str(caught.value)
    assert caught.value.to_dict()["option"] == "url"
    assert "%3F" in str(caught.value)


def test_port_error_mentions_question_mark_and_hash() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncRedisStore("redis://127.0.0.1:63a79/0")
    assert "%3F" in str(caught.value)
    assert "%23" in str(caught.value)


def test_unknown_option_that_is_no_name_is_not_quoted() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncRedisStore(f"redis://127.0.0.1:6379/0?{TAIL}!x=1")
    assert TAIL not in str(caught.value)
    assert "(not shown)" in str(caught.value)
    assert caught.value.to_dict()["option"] == "url"


def test_unknown_option_name_is_still_quoted() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncRedisStore("redis://127.0.0.1:6379/0?sockt_timeout=1")
    assert "'sockt_timeout'" in str(caught.value)
    assert caught.value.to_dict()["option"] == "sockt_timeout"


# -- 3. close while calls are in flight ------------------------------------------------------------


def test_sync_call_in_flight_at_close_is_told_the_store_closed(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection of a call in flight goes with the closing client: StoreClosedError."""
    client = redis.Redis.from_url(LOCAL_URL)
    store = RedisStore(client, prefix=prefix)

    def closed_under_it(*args: Any, **kwargs: Any) -> Any:
        store.close()
        raise rexc.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(client, "execute_command", closed_under_it)
    try:
        with pytest.raises(StoreClosedError):
            store.get("review", "k1_none")
    finally:
        client.close()


def test_async_call_in_flight_at_close_is_told_the_store_closed(prefix: str) -> None:
    async def main() -> None:
        client = redis.asyncio.Redis.from_url(LOCAL_URL)
        store = AsyncRedisStore(client, prefix=prefix)
        await store.connect()

        async def closed_under_it(*args: Any, **kwargs: Any) -> Any:
            await store.close()
            raise rexc.ConnectionError("Connection closed by server.")

        client.execute_command = closed_under_it  # type: ignore[method-assign]
        try:
            with pytest.raises(StoreClosedError):
                await store.get("review", "k1_none")
        finally:
            await client.aclose()

    asyncio.run(main())


# -- 4. a second event loop ------------------------------------------------------------------------


def test_async_store_from_a_second_event_loop_is_a_configuration_error(prefix: str) -> None:
    """The first loop stays open here, so that the store can be closed on it afterwards (a
    closed first loop fails alike: "Event loop is closed")."""
    store = AsyncRedisStore(LOCAL_URL, prefix=prefix)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(store.get("review", "k1_none")) is None
        with pytest.raises(ConfigurationError) as caught:
            second.run_until_complete(store.get("review", "k1_none"))
        assert "one store per event loop" in str(caught.value)
        assert caught.value.to_dict()["option"] == "store"
    finally:
        second.close()
        first.run_until_complete(store.close())
        first.close()


# -- 5. a connection setup Redis refuses -----------------------------------------------------------


def test_sync_refused_connection_setup_is_not_a_config_refusal(prefix: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisStore(f"{LOCAL_URL}?client_name=a%20b", prefix=prefix)
    assert "allow_unsafe_durability" not in str(caught.value)
    assert "client_name" in str(caught.value)
    assert caught.value.to_dict()["option"] == "url"


def test_async_refused_connection_setup_is_not_a_config_refusal(prefix: str) -> None:
    store = AsyncRedisStore(f"{LOCAL_URL}?client_name=a%20b", prefix=prefix)
    with pytest.raises(ConfigurationError) as caught:
        asyncio.run(store.connect())
    assert "allow_unsafe_durability" not in str(caught.value)
    assert "client_name" in str(caught.value)


# -- 6. option values the first connection would fail on ------------------------------------------


@pytest.mark.parametrize(
    ("query", "option", "accepted"),
    [
        ("encoding=bogus-codec", "encoding", "utf-8"),
        ("protocol=9", "protocol", "2 (RESP2"),
        ("ssl_cert_reqs=bogus-reqs", "ssl_cert_reqs", "none, optional or required"),
        ("ssl_ca_certs=/nonexistent/bogus-ca.pem", "ssl_ca_certs", "exists"),
    ],
)
@pytest.mark.parametrize("make", [RedisStore, AsyncRedisStore])
def test_bad_option_value_is_refused_locally(
    make: Any, query: str, option: str, accepted: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make(f"rediss://127.0.0.1:6379/0?{query}")
    assert caught.value.to_dict()["option"] == option
    assert accepted in str(caught.value)
    assert "bogus" not in str(caught.value)


# -- 7. flags that are not bools -------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["create", "allow_unsafe_durability"])
@pytest.mark.parametrize("make", [RedisStore, AsyncRedisStore])
def test_string_flag_is_refused_and_writes_nothing(make: Any, flag: str, prefix: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make(LOCAL_URL, prefix=prefix, **{flag: "false"})
    assert caught.value.to_dict()["option"] == flag
    with redis.Redis.from_url(LOCAL_URL) as client:
        assert client.exists(f"{prefix}:meta") == 0


@pytest.mark.parametrize("make", [RedisStore, AsyncRedisStore])
def test_bool_bucket_count_is_refused(make: Any, prefix: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make(LOCAL_URL, prefix=prefix, buckets=True)
    assert caught.value.to_dict()["option"] == "buckets"


# -- a password Redis quotes back ------------------------------------------------------------------


def test_a_password_redis_quotes_back_is_never_shown() -> None:
    # A Redis without HELLO (as before 6) answers the HELLO 3 AUTH of ?protocol=3 with "unknown
    # command 'HELLO', with args beginning with: '3' 'AUTH' 'default' '<password>'".
    secret = "Sup3r-quoted-secret"  # noqa: S105 - a throwaway server's password
    with redis_server("--requirepass", secret, "--rename-command", "HELLO", '""') as port:
        url = f"redis://:{secret}@127.0.0.1:{port}/0?protocol=3"
        with pytest.raises(PayonceError) as caught:
            RedisStore(url, prefix=f"payonce-review-{uuid.uuid4().hex[:8]}").close()
    assert secret not in str(caught.value)
    # Nor in a traceback or logging.exception, which print the chained cause too.
    assert secret not in "".join(traceback.format_exception(caught.value))
    assert "unknown command 'HELLO'" in str(caught.value)
    error = rexc.ResponseError(
        f"unknown command 'HELLO', with args beginning with: '3' 'AUTH' 'default' '{secret}' "
    )
    assert secret not in str(_translate(error, "claim"))

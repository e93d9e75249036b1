"""Opening a store from a URL: the forms the CLI and the service accept, and clear refusals."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from payonce import (
    ConfigurationError,
    MemoryStore,
    SQLiteStore,
    StoreError,
    StoreUnavailableError,
    open_store,
)

PASSWORD = "S3CRETpw"  # noqa: S105 - a test value: no error, repr or log line may show it


def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///payonce.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert (tmp_path / "payonce.db").exists()
    finally:
        store.close()


def test_sqlite_absolute_path_and_options(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/abs.db?synchronous=NORMAL&busy_timeout=2.5")
    try:
        assert isinstance(store, SQLiteStore)
        assert "NORMAL" in repr(store)
        assert (tmp_path / "abs.db").exists()
    finally:
        store.close()


def test_sqlite_in_memory_and_memory_store() -> None:
    sqlite = open_store("sqlite:///:memory:")
    try:
        assert isinstance(sqlite, SQLiteStore)
    finally:
        sqlite.close()
    assert isinstance(open_store("memory://"), MemoryStore)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("payonce.db", "looks like"),
        ("mysql://localhost/db", "unknown store URL scheme"),
        ("sqlite://payonce.db", "sqlite:///relative"),
        ("sqlite:///x.db?journal=off", "unknown SQLite URL option 'journal'"),
        ("sqlite:///x.db?busy_timeout=soon", r"is a number, e\.g\. busy_timeout=30 \(seconds\)"),
        ("sqlite:///x.db?busy_timeout=inf", "finite number of at most 86400"),
        ("sqlite:///x.db?busy_timeout=1e300", "finite number of at most 86400"),
        ("sqlite:///x.db?synchronous=OFF", "OFF is refused"),
    ],
)
def test_bad_urls_are_refused_with_what_to_use(url: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=says):
        open_store(url.replace("x.db", str(tmp_path / "x.db")))


def test_postgres_url_opens_a_postgres_store() -> None:
    # A throw-away database, so the default test database is left as it was.
    from tests.faults import pg_worker  # noqa: PLC0415 - needs psycopg, a dev dependency

    name, _ = pg_worker.create_database()
    try:
        store = open_store(f"postgresql://postgres@127.0.0.1:5432/{name}")
        try:
            assert type(store).__name__ == "PostgresStore"
            assert store.get("tenant-a", "k1_absent") is None
            assert store.read_before_claim is True  # type: ignore[attr-defined]  # adaptive start
        finally:
            store.close()
        # payonce's own options leave the query; libpq's (connect_timeout) pass through.
        store = open_store(
            f"postgresql://postgres@127.0.0.1:5432/{name}?connect_timeout=5&timeout=2"
            "&max_size=3&read_first=false"
        )
        try:
            assert store.read_before_claim is False  # type: ignore[attr-defined]
            assert store._pool.max_size == 3  # type: ignore[attr-defined]
            assert store._pool.timeout == 2  # type: ignore[attr-defined]
        finally:
            store.close()
    finally:
        pg_worker.drop_database(name)


def test_redis_url_opens_a_redis_store_with_its_options() -> None:
    import redis  # noqa: PLC0415 - a dev dependency

    from tests.redis_cluster import delete_prefix  # noqa: PLC0415

    store = open_store("redis://127.0.0.1:6379/0?prefix=payonce-open-test&buckets=4")
    try:
        assert type(store).__name__ == "RedisStore"
        assert store.get("tenant-a", "k1_absent") is None
    finally:
        store.close()
        client = redis.Redis()
        delete_prefix(client, "payonce-open-test")
        client.close()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://postgres@127.0.0.1/test?timeout=soon", "timeout in a store URL is a number"),
        ("postgresql://postgres@127.0.0.1/test?timeout=0", "must be a positive"),
        ("postgresql://postgres@127.0.0.1/test?max_size=ten", "max_size in a store URL"),
        ("postgresql://postgres@127.0.0.1/test?read_first=maybe", "true, false or auto"),
        ("redis://127.0.0.1:6379/0?read_first=1", "true, false or auto"),
        ("redis://127.0.0.1:6379/0?allow_unsafe_durability=yes", "true or false"),
        ("postgresql://postgres@127.0.0.1/test?timeout=nan", "finite"),
        ("postgresql://postgres@127.0.0.1/test?timeout=inf", "finite"),
        ("postgresql://postgres@127.0.0.1/test?timeout=1e300", "at most 86400"),
        ("redis://127.0.0.1:6379/0?socket_timeout=1e300", "at most 86400"),
        ("redis://127.0.0.1:6379/0?socket_connect_timeout=inf", "finite"),
        ("postgresql://postgres@127.0.0.1/test?READ_FIRST=true", "not one libpq accepts"),
        ("postgresql://postgres@127.0.0.1/test?colour=blue", "not one libpq accepts"),
    ],
)
def test_bad_backend_options_are_refused_before_connecting(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        open_store(url)


def test_redis_url_with_a_bad_bucket_count_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="whole number"):
        open_store("redis://127.0.0.1:6379/0?buckets=many")


def test_payonce_options_leave_the_rest_of_the_url_verbatim() -> None:
    from payonce.stores._open import _POSTGRES_OPTIONS, _take_options  # noqa: PLC0415

    # An empty host (the Unix-socket form) keeps its slashes; libpq's own percent-encoded and
    # empty values stay as written, since libpq decodes them itself.
    url = "postgresql:///payments?options=-c%20search_path%3Dfoo&timeout=2&sslmode=&read_first=auto"
    rest, ours = _take_options(url, _POSTGRES_OPTIONS)
    assert rest == "postgresql:///payments?options=-c%20search_path%3Dfoo&sslmode="
    assert ours == {"timeout": "2", "read_first": "auto"}
    assert _take_options("unix:///tmp/redis.sock", _POSTGRES_OPTIONS) == (
        "unix:///tmp/redis.sock",
        {},
    )
    assert _take_options("postgresql:///db?timeout=5", _POSTGRES_OPTIONS)[0] == "postgresql:///db"


# -- malformed URLs: refused with what to write instead, never quoted -----------------------------


@pytest.mark.parametrize(
    ("url", "says", "option"),
    [
        (f"postgresql//app:{PASSWORD}@db/payments", "has no '://'", "url"),
        (f"postgresql://app:{PASSWORD}@[::1/db", "IPv6 address goes in brackets", "url"),
        (f"redis://:{PASSWORD}@[::1:6379/0", "IPv6 address goes in brackets", "url"),
        (f"redis://:{PASSWORD}@127.0.0.1:notaport/0", "port of the Redis URL", "url"),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/notadb", "the database number", "db"),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0?socket_timeout=abc", "must be a number", None),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0?prefx=app", "unknown option 'prefx'", "prefx"),
        (f"redis+cluster://:{PASSWORD}@127.0.0.1:6379/2", "only database 0", "db"),
        (f"sqlite://{PASSWORD}.db", "three slashes", "url"),
    ],
    ids=[
        "no ://", "pg ipv6", "redis ipv6", "port", "db path", "redis value", "redis option",
        "cluster db", "sqlite slashes",
    ],
)  # fmt: skip
def test_a_malformed_url_is_refused_without_quoting_it(
    url: str, says: str, option: str | None
) -> None:
    with pytest.raises(ConfigurationError, match=says) as caught:
        open_store(url)
    assert caught.value.option == (option or url.rpartition("?")[2].partition("=")[0])
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value.to_dict())


@pytest.mark.parametrize(
    ("url", "says"),
    [
        # libpq ends the host part at the first '/': the password's first piece becomes a port,
        # or (digits) a valid port with the rest read as the database name.
        ("postgresql://app:Sec/RETpw@127.0.0.1/test", "port that is not a number"),
        ("postgresql://app:1234/5678@127.0.0.1/test", "names a database holding an '@'"),
        # and the password at the first '@': its second piece becomes the host
        ("postgresql://app:Sec@RETpw@127.0.0.1/test", "'@' in a host name"),
        ("host=127.0.0.1 port=5432,Sec/RETpw dbname=test", "port that is not a number"),
    ],
    ids=["slash", "digits and slash", "at", "keyword port list"],
)
def test_a_postgres_password_cut_by_an_unescaped_character_is_refused_unquoted(
    url: str, says: str
) -> None:
    # Before, the pieces went to the pool, which retried them as an unreachable server until
    # its timeout and then named them (a host, a port, a database) in a StoreUnavailableError.
    from payonce.stores import AsyncPostgresStore, PostgresStore  # noqa: PLC0415 - the extra

    pieces = ("Sec", "RETpw", "1234", "5678")
    for store in (PostgresStore, AsyncPostgresStore):
        with pytest.raises(ConfigurationError, match=says) as caught:
            store(url, timeout=timedelta(seconds=2))
        assert caught.value.option == "conninfo_or_pool"
        assert "%2F" in str(caught.value)
        assert "%40" in str(caught.value)
        assert not any(piece in str(caught.value) for piece in pieces), str(caught.value)


@pytest.mark.parametrize(
    "conninfo",
    [
        "postgresql://app:Sec%2FRET%40pw@127.0.0.1:5432/test",
        "postgresql://127.0.0.1/test?application_name=app@payments",
        "host=/var/run/postgresql port='' dbname=test",
        "host=127.0.0.1,127.0.0.2 port=5432,+5433 dbname=test",
    ],
    ids=["escaped", "at in the query", "socket directory", "host and port lists"],
)
def test_a_postgres_string_libpq_reads_as_meant_passes_the_check(conninfo: str) -> None:
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - the extra

    from payonce.stores._postgres import _misread_url  # noqa: PLC0415

    assert _misread_url(conninfo, conninfo_to_dict(conninfo)) is None


# -- Redis URLs: checked before any command, shown without secrets --------------------------------


def _redis_stores() -> tuple[Any, Any]:
    from payonce.stores._redis import AsyncRedisStore, RedisStore  # noqa: PLC0415 - the extra

    return RedisStore, AsyncRedisStore


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0?prefx=app",
        # payonce's own option is RedisStore's keyword argument, not the client's
        "redis://127.0.0.1:6379/0?prefix=app",
        "redis+cluster://127.0.0.1:6379?prefx=app",
    ],
)
def test_an_unknown_redis_url_option_is_refused_at_construction(url: str) -> None:
    # redis-py would hand it to each connection, a TypeError at the first one (from the first
    # call of an AsyncRedisStore), or drop it silently on a cluster.
    sync, asynchronous = _redis_stores()
    name = url.rpartition("?")[2].partition("=")[0]
    for cls in (sync, asynchronous):  # the async store does no I/O at construction
        with pytest.raises(ConfigurationError, match=f"unknown option '{name}'") as caught:
            cls(url)
        assert caught.value.option == name
        assert "keyword arguments" in str(caught.value)


def test_a_redis_password_in_the_query_is_never_shown(
    local_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.redis_cluster import delete_prefix  # noqa: PLC0415

    prefix = f"payonce-open-{uuid4().hex[:12]}"
    try:
        # The local server runs without persistence: opening logs the durability WARNING,
        # which names the server.
        with caplog.at_level(logging.WARNING, logger="payonce.stores.redis"):
            store = open_store(f"redis://127.0.0.1:6379/0?password={PASSWORD}&prefix={prefix}")
        try:
            assert repr(store) == f"RedisStore('redis://127.0.0.1:6379/0', prefix='{prefix}')"
        finally:
            store.close()
    finally:
        delete_prefix(local_redis, prefix)
    assert any("Redis at redis://127.0.0.1:6379/0 " in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_the_shown_redis_url_has_no_password_and_survives_an_unreadable_one() -> None:
    from payonce.stores._redis import _mask  # noqa: PLC0415 - the extra

    assert _mask(f"redis://app:{PASSWORD}@db:6379/2?ssl_password={PASSWORD}#{PASSWORD}") == (
        "redis://app:***@db:6379/2"
    )
    assert _mask("rediss://app@[::1]:6380/0") == "rediss://app@[::1]:6380/0"
    assert _mask(f"redis://:{PASSWORD}@[::1:6379/0") == "<unreadable Redis URL>"


def test_a_cluster_url_for_a_server_not_in_cluster_mode_says_so() -> None:
    sync, asynchronous = _redis_stores()
    url = "redis+cluster://127.0.0.1:6379"  # the local server is a single one
    with pytest.raises(ConfigurationError, match="not in cluster mode") as caught:
        sync(url)
    store = asynchronous(url)

    async def connect() -> None:
        try:
            await store.connect()
        finally:
            await store.close()

    with pytest.raises(ConfigurationError, match="not in cluster mode") as acaught:
        asyncio.run(connect())
    for refused in (caught.value, acaught.value):
        assert "use redis://host:port/0" in str(refused)
        assert not isinstance(refused, StoreError)


@pytest.mark.parametrize("allow_unsafe", [False, True])
def test_a_database_number_the_server_lacks_is_named_not_taken_for_a_config_refusal(
    allow_unsafe: bool,
) -> None:
    # Redis answers SELECT 99 with an error as the first connection starts: that is the URL's
    # database, not a CONFIG GET refusal that allow_unsafe_durability would let past.
    sync, asynchronous = _redis_stores()
    url = "redis://127.0.0.1:6379/99"
    with pytest.raises(ConfigurationError) as caught:
        sync(url, allow_unsafe_durability=allow_unsafe)
    store = asynchronous(url, allow_unsafe_durability=allow_unsafe)

    async def connect() -> None:
        try:
            await store.connect()
        finally:
            await store.close()

    with pytest.raises(ConfigurationError) as acaught:
        asyncio.run(connect())
    for refused in (caught.value, acaught.value):
        assert "no database with the number" in str(refused)
        assert refused.option == "db"


def test_a_refused_async_connect_closes_the_client_it_built(local_redis: Any) -> None:
    from tests.redis_cluster import delete_prefix  # noqa: PLC0415

    sync, asynchronous = _redis_stores()
    prefix = f"payonce-open-{uuid4().hex[:12]}"
    tag = f"payonce-refused-{uuid4().hex[:8]}"
    url = f"redis://127.0.0.1:6379/0?client_name={tag}"

    def connections() -> int:
        return sum(1 for client in local_redis.client_list() if client["name"] == tag)

    async def refused() -> None:
        store = asynchronous(url, prefix=prefix, buckets=4)
        try:
            for _ in range(2):  # a later call connects and is refused again, the same way
                with pytest.raises(ConfigurationError, match="created with buckets=2"):
                    await store.connect()
                deadline = time.monotonic() + 10
                while connections():  # the server sees the close (polling, not timing)
                    assert time.monotonic() < deadline, "the refused store left its client open"
                    await asyncio.sleep(0.005)
        finally:
            await store.close()

    try:
        sync(url, prefix=prefix, buckets=2).close()
        asyncio.run(refused())
    finally:
        delete_prefix(local_redis, prefix)


def test_create_false_refuses_a_missing_store_and_creates_nothing(
    tmp_path: Path, local_redis: Any
) -> None:
    from payonce import StoreMissingError  # noqa: PLC0415
    from payonce.stores import AsyncPostgresStore, AsyncRedisStore  # noqa: PLC0415
    from tests.faults import pg_worker  # noqa: PLC0415

    with pytest.raises(StoreMissingError, match="payonce migrate"):
        open_store(f"sqlite:///{tmp_path}/typo.db", create=False)
    assert not (tmp_path / "typo.db").exists()
    # A file that is not a payonce store (empty, or another application's) is left as it is.
    (tmp_path / "empty.db").touch()
    with sqlite3.connect(tmp_path / "other.db") as other:
        other.execute("CREATE TABLE users (id INTEGER)")
    for name in ("empty.db", "other.db"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(StoreMissingError, match="no SQLite file with payonce's tables"):
            open_store(f"sqlite:///{tmp_path}/{name}", create=False)
        assert (tmp_path / name).read_bytes() == before
    for url in ("memory://", "sqlite:///:memory:"):
        with pytest.raises(StoreMissingError, match=r"new and empty|no SQLite file"):
            open_store(url, create=False)
    # Another application's file, locked: waited for as a write would be (here not at all),
    # and never given payonce's tables.
    with closing(sqlite3.connect(tmp_path / "other.db", isolation_level=None)) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailableError, match="locked"):
            open_store(f"sqlite:///{tmp_path}/other.db?busy_timeout=0", create=False)
        holder.execute("ROLLBACK")
    with closing(sqlite3.connect(tmp_path / "other.db")) as other:
        tables = other.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("users",)]
    # A payonce file one migration behind is not migrated by a store that may not create.
    open_store(f"sqlite:///{tmp_path}/old.db").close()
    with closing(sqlite3.connect(tmp_path / "old.db")) as old, old:
        old.execute(
            "DELETE FROM payonce_migrations"
            " WHERE version = (SELECT max(version) FROM payonce_migrations)"
        )
    with pytest.raises(ConfigurationError, match="needs payonce schema migration"):
        open_store(f"sqlite:///{tmp_path}/old.db", create=False)

    prefix = f"payonce-nothing-{uuid4().hex[:12]}"
    with pytest.raises(StoreMissingError, match="no payonce keys under the Redis prefix"):
        open_store(f"redis://127.0.0.1:6379/0?prefix={prefix}", create=False)
    astore = AsyncRedisStore("redis://127.0.0.1:6379/0", prefix=prefix, create=False)
    with pytest.raises(StoreMissingError):
        asyncio.run(astore.connect())
    assert list(local_redis.scan_iter(match=f"*{prefix}*")) == []

    name, _ = pg_worker.create_database()
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        with pytest.raises(StoreMissingError, match="no payonce tables"):
            open_store(url, create=False)

        async def async_open() -> None:
            store = AsyncPostgresStore(url, create=False)
            try:
                await store.open()
            finally:
                await store.close()

        with pytest.raises(StoreMissingError):
            asyncio.run(async_open())
        with pg_worker.admin_connection(url) as conn:
            assert conn.execute("SELECT to_regclass('payonce_migrations')").fetchone() == (None,)
        open_store(url).close()  # created and migrated
        open_store(url, create=False).close()  # now it exists
        # A database one migration behind is not migrated by a store that may not create.
        with pg_worker.admin_connection(url) as conn:
            conn.execute("DELETE FROM payonce_migrations WHERE version = 2")
        with pytest.raises(ConfigurationError, match="needs payonce schema migration 2"):
            open_store(url, create=False)
    finally:
        pg_worker.drop_database(name)


def test_sqlite_paths_that_are_no_store_say_what_they_are_and_change_nothing(
    tmp_path: Path,
) -> None:
    from payonce import StoreMissingError  # noqa: PLC0415

    # A directory is a wrong path, not an outage to retry (it was SQLITE_CANTOPEN, "retry").
    for create in (True, False):
        with pytest.raises(ConfigurationError, match="is a directory") as caught:
            open_store(f"sqlite:///{tmp_path}", create=create)
        assert not isinstance(caught.value, StoreMissingError)
    # Nothing at a path whose directory is missing: no store there (it was "cannot create").
    with pytest.raises(StoreMissingError, match="no SQLite file with payonce's tables"):
        open_store(f"sqlite:///{tmp_path}/nosuchdir/x.db", create=False)
    # A newer schema is named as such, also where a migration is missing too (the next step
    # was "run payonce migrate", which then said "upgrade payonce"), and a refused open leaves
    # the file's journal mode as it was.
    open_store(f"sqlite:///{tmp_path}/newer.db").close()
    with closing(sqlite3.connect(tmp_path / "newer.db")) as db, db:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute("DELETE FROM payonce_migrations")
        db.execute("INSERT INTO payonce_migrations VALUES (99, 0)")
    before = (tmp_path / "newer.db").read_bytes()
    for create in (False, True):
        with pytest.raises(ConfigurationError, match=r"schema version 99.*upgrade payonce"):
            open_store(f"sqlite:///{tmp_path}/newer.db", create=create)
    with closing(sqlite3.connect(tmp_path / "newer.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert (tmp_path / "newer.db").read_bytes() == before

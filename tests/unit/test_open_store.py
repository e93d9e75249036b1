"""Opening a store from a URL: the forms the CLI and the service accept, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from payonce import ConfigurationError, MemoryStore, SQLiteStore, open_store


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
        ("sqlite:///x.db?busy_timeout=soon", "number of seconds"),
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

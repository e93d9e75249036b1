"""Shared fixtures: a manual clock, every embedded backend, a guard over each.

With CI=true a skipped test fails the run: a backend that did not run is not a pass.

redis-py parses replies in pure Python, or with hiredis (C) when that is importable, and the two
raise its errors by different code. ``make test`` runs the suite with the pure-Python parser, then
every Redis test again with hiredis on ``PYTHONPATH``; ``PAYONCE_TEST_REDIS_PARSER`` (``python`` or
``hiredis``) names the parser a run must have, and a run that has the other one stops at once.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from payonce import Guard, MemoryStore, SQLiteStore, Store
from payonce.testing import ManualClock

SECRET = b"payonce-test-secret-0123456789abcdef"
SCOPE = "tenant-a"
BACKENDS = ("memory", "sqlite", "postgres", "redis")


class _Postgres:
    """One throw-away database for the whole run, created on first use, emptied per store."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.conninfo = ""

    def fresh_store(self) -> Store:
        from payonce.stores._postgres import PostgresStore  # noqa: PLC0415 - only when used
        from tests.faults import pg_worker  # noqa: PLC0415

        if self.name is None:
            self.name, self.conninfo = pg_worker.create_database()
            PostgresStore(self.conninfo).close()  # applies the migrations once
        with pg_worker.admin_connection(self.conninfo) as conn:
            pg_worker.empty_tables(conn)
        return PostgresStore(self.conninfo, max_size=16)

    def drop(self) -> None:
        from tests.faults import pg_worker  # noqa: PLC0415

        if self.name is not None:
            pg_worker.drop_database(self.name)


_POSTGRES = _Postgres()


class _Redis:
    """A fresh key prefix per store on the loopback Redis; every prefix is deleted at the end."""

    url = "redis://127.0.0.1:6379/0"

    def __init__(self) -> None:
        self.prefixes: list[str] = []

    def fresh_store(self) -> Store:
        from payonce.stores._redis import RedisStore  # noqa: PLC0415 - only when used

        prefix = f"payonce-test-{uuid4().hex[:12]}"
        self.prefixes.append(prefix)
        return RedisStore(self.url, prefix=prefix)

    def clean(self) -> None:
        if not self.prefixes:
            return
        import redis  # noqa: PLC0415

        from tests.redis_cluster import delete_prefix  # noqa: PLC0415

        client = redis.Redis.from_url(self.url)
        try:
            for prefix in self.prefixes:
                delete_prefix(client, prefix)
        finally:
            client.close()


_REDIS = _Redis()


def make_store(backend: str, path: Path) -> Store:
    """A fresh, empty store of ``backend``; SQLite lives in ``path``."""
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        return SQLiteStore(path / "payonce.db")
    if backend == "postgres":
        return _POSTGRES.fresh_store()
    if backend == "redis":
        return _REDIS.fresh_store()
    raise ValueError(backend)


class _Captured(logging.Handler):
    """Every log record of the run, at DEBUG, for the secret scan at the end (S6, I8)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.getMessage()}")
        except Exception:  # a record that cannot format has nothing to scan
            return


# Keys the provider echoes censored ("sk_live_abc****xyz") are not leaks: a match that runs into
# a "*" is skipped.
_SECRET_PATTERNS = (
    re.compile(r"(?:sk|rk)_(?:test|live)_[A-Za-z0-9*]+"),
    re.compile(r"whsec_[A-Za-z0-9*]+"),
)


def _leaks(line: str) -> bool:
    return any("*" not in found for p in _SECRET_PATTERNS for found in p.findall(line))


@pytest.fixture(scope="session", autouse=True)
def _scan_logs_for_secrets() -> Iterator[None]:
    # The whole run logs at DEBUG, the stripe SDK included; nothing captured may hold an API
    # key or the HMAC secret (I8). payonce's own raw-id rules are checked by the S2/S6 tests.
    handler = _Captured()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    secrets_seen = [
        line
        for line in handler.lines
        if _leaks(line) or SECRET.hex() in line or SECRET.decode() in line
    ]
    assert not secrets_seen, f"secrets in the run's logs: {secrets_seen[:3]}"


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_database() -> Iterator[None]:
    yield
    _POSTGRES.drop()
    _REDIS.clean()


@pytest.fixture(scope="session")
def local_redis() -> Iterator[Any]:
    """A client of the loopback Redis; a server that is not running fails the test (never a
    skip)."""
    import redis  # noqa: PLC0415 - the redis extra, only when used

    client = redis.Redis.from_url(_Redis.url)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the local Redis at {_Redis.url} is not running (never skipped): {exc}")
    yield client
    client.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[Store]:
    s = make_store(backend, tmp_path)
    yield s
    s.close()


@pytest.fixture
def guard(store: Store, clock: ManualClock) -> Guard:
    return Guard(store, secret=SECRET, scope=SCOPE, clock=clock)


_PARSER_ENV = "PAYONCE_TEST_REDIS_PARSER"


def _redis_parser() -> str:
    """The reply parser redis-py uses here: ``hiredis X.Y.Z``, ``python`` or ``absent``."""
    try:
        from redis.utils import HIREDIS_AVAILABLE  # noqa: PLC0415 - redis is an extra
    except ImportError:
        return "absent"
    if not HIREDIS_AVAILABLE:
        return "python"
    from importlib.metadata import version  # noqa: PLC0415

    return f"hiredis {version('hiredis')}"


def pytest_configure(config: pytest.Config) -> None:
    wanted = os.environ.get(_PARSER_ENV, "")
    if wanted not in ("", "python", "hiredis"):
        raise pytest.UsageError(f"{_PARSER_ENV}={wanted!r}: use python or hiredis, or unset it.")
    found = _redis_parser()
    if wanted and found.split()[0] != wanted:
        raise pytest.UsageError(
            f"{_PARSER_ENV}={wanted} but redis-py's parser here is {found}. The main run wants "
            "hiredis not installed in the venv; the hiredis run puts it on PYTHONPATH "
            "(make pytest-hiredis)."
        )


def pytest_report_header(config: pytest.Config) -> str:
    return f"redis-py reply parser: {_redis_parser()}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(
                f"CI=true: {skipped} test(s) were skipped; in CI every backend must run.", red=True
            )

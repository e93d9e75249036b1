"""``payonce migrate``: creates or upgrades the schema and reports its version."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from uuid import uuid4

import pytest
import redis

from payonce.stores._postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from payonce.stores._sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from tests.cli.conftest import Cli, json_out
from tests.faults import pg_worker
from tests.redis_cluster import delete_prefix

REDIS = "redis://127.0.0.1:6379/0"
PASSWORD = "S3CRETpw"  # noqa: S105 - a test value: no output may show it

LATEST_SQLITE = SQLITE_MIGRATIONS[-1][0]
LATEST_POSTGRES = POSTGRES_MIGRATIONS[-1][0]


def test_migrate_creates_a_sqlite_store_then_has_nothing_to_do(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    first = json_out(cli("migrate", "--store", url, "--json"))
    assert first["backend"] == "sqlite"
    assert first["schema_version_before"] == 0
    assert first["schema_version"] == LATEST_SQLITE
    with closing(sqlite3.connect(tmp_path / "new.db")) as conn:
        applied = [v for (v,) in conn.execute("SELECT version FROM payonce_migrations")]
    assert applied == [v for v, _ in SQLITE_MIGRATIONS]
    again = cli("migrate", "--store", url)
    assert again.returncode == 0, again.stderr
    assert f"schema version {LATEST_SQLITE}, already up to date" in again.stdout


def test_migrate_uses_the_default_store_in_the_working_directory(cli: Cli, tmp_path: Path) -> None:
    done = cli("migrate")
    assert done.returncode == 0, done.stderr
    assert f"migrated from schema version 0 to {LATEST_SQLITE}" in done.stdout
    assert (tmp_path / "payonce.db").exists()


def test_a_newer_schema_is_refused(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'future.db'}"
    assert cli("migrate", "--store", url).returncode == 0
    with closing(sqlite3.connect(tmp_path / "future.db", isolation_level=None)) as conn:
        conn.execute("INSERT INTO payonce_migrations (version, applied_at) VALUES (999, 0)")
    done = cli("migrate", "--store", url)
    assert done.returncode == 2
    assert "schema version 999" in done.stderr
    assert "upgrade payonce" in done.stderr


def test_a_missing_directory_or_bad_url_exits_2(cli: Cli, tmp_path: Path) -> None:
    missing = cli("migrate", "--store", f"sqlite:///{tmp_path / 'no' / 'x.db'}")
    assert missing.returncode == 2
    assert "directory does not exist" in missing.stderr
    bad = cli("migrate", "--store", "mysql://localhost/db")
    assert bad.returncode == 2
    assert "unknown store URL scheme" in bad.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"postgresql//app:{PASSWORD}@db/payments", "has no '://'"),
        # urlsplit raised a ValueError here before: a traceback, password included
        (f"postgresql://app:{PASSWORD}@[::1/db", "IPv6 address goes in brackets"),
        (f"redis://:{PASSWORD}@127.0.0.1:notaport/0", "port of the Redis URL"),
    ],
)
def test_a_malformed_url_exits_2_without_quoting_it(cli: Cli, url: str, says: str) -> None:
    done = cli("migrate", "--store", url)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert PASSWORD not in done.stderr + done.stdout


def test_a_version_that_cannot_be_read_is_reported_unknown(cli: Cli) -> None:
    # An in-memory SQLite database has no version to read before or after.
    done = cli("migrate", "--store", "sqlite:///:memory:")
    assert done.returncode == 0, done.stderr
    assert "schema version unknown" in done.stdout
    assert "up to date" not in done.stdout


def test_migrate_memory_store_has_no_schema(cli: Cli) -> None:
    done = json_out(cli("migrate", "--store", "memory://", "--json"))
    assert done["backend"] == "memory"
    assert done["schema_version"] is None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    name, _ = pg_worker.create_database()
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        pg_worker.drop_database(name)


def test_migrate_postgres(cli: Cli, postgres_url: str) -> None:
    first = json_out(cli("migrate", "--store", postgres_url, "--json"))
    assert first["backend"] == "postgresql"
    assert first["schema_version_before"] == 0
    assert first["schema_version"] == LATEST_POSTGRES
    again = json_out(cli("migrate", "--store", postgres_url, "--json"))
    assert again["schema_version_before"] == again["schema_version"] == LATEST_POSTGRES


def test_migrate_postgres_with_payonce_options_in_the_url(cli: Cli, postgres_url: str) -> None:
    # payonce's options leave the URL before the version is read: libpq refuses them, and the
    # versions read as unknown (shown as "already up to date") after a real migration.
    url = f"{postgres_url}?max_size=2&timeout=5&read_first=auto&allow_unsafe_durability=false"
    first = json_out(cli("migrate", "--store", url, "--json"))
    assert first["schema_version_before"] == 0
    assert first["schema_version"] == LATEST_POSTGRES
    again = cli("migrate", "--store", url)
    assert again.returncode == 0, again.stderr
    assert f"schema version {LATEST_POSTGRES}, already up to date" in again.stdout


def test_migrate_redis_reports_its_layout(cli: Cli) -> None:
    prefix = f"payonce-cli-{uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS)
    try:
        done = json_out(cli("migrate", "--store", f"{REDIS}?prefix={prefix}", "--json"))
        assert done["backend"] == "redis"
        assert done["schema_version"] == int(client.hget(f"{prefix}:meta", "version"))
        # A password in the query is not shown either (the local server takes none).
        url = f"{REDIS}?password={PASSWORD}&prefix={prefix}"
        shown = cli("migrate", "--store", url, "--json")
        assert json_out(shown)["store"] == f"RedisStore('{REDIS}', prefix='{prefix}')"
        assert PASSWORD not in shown.stdout + shown.stderr
    finally:
        delete_prefix(client, prefix)
        client.close()


def test_an_unreachable_store_exits_3(cli: Cli) -> None:
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    done = cli("migrate", "--store", "redis://127.0.0.1:9/0")
    assert done.returncode == 3, done.stderr
    assert "Redis was unavailable" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_postgres_store_says_so_in_one_line(cli: Cli) -> None:
    # Before, the connection pool's own warning for each failed attempt came first, a dozen
    # stderr lines where docs/cli.md promises one line starting with "error:".
    done = cli("migrate", "--store", "postgresql://postgres@127.0.0.1:9/test?timeout=1")
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:")
    assert "could not connect to PostgreSQL" in lines[0]

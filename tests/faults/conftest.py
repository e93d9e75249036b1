"""Fixtures the fault tests share: one migrated PostgreSQL database per module, and a privileged
connection to it that empties the tables before each test (a module that needs another database,
a trigger of its own or one per test, defines its own ``database``; ``admin`` then follows it);
a fresh key prefix on the local Redis, deleted after the test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from tests.faults import pg_worker
from tests.redis_cluster import delete_prefix

LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh, migrated database for the module; yields its connection string."""
    with pg_worker.migrated_database() as conninfo:
        yield conninfo


@pytest.fixture
def admin(database: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with pg_worker.admin_connection(database) as conn:
        pg_worker.empty_tables(conn)
        yield conn


@pytest.fixture
def local_prefix() -> Iterator[str]:
    """A fresh key prefix on the local Redis (never skipped: a Redis that is down fails)."""
    client = redis.Redis.from_url(LOCAL_REDIS)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"the local Redis at {LOCAL_REDIS} is not running (never skipped): {exc}")
    prefix = f"payonce-faults-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(client, prefix)
    client.close()

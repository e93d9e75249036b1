"""Fixtures the PostgreSQL fault tests share: one migrated database per module, and a privileged
connection to it that empties the tables before each test. A module that needs another database
(a trigger of its own, one per test) defines its own ``database``; ``admin`` then follows it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.faults import pg_worker


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

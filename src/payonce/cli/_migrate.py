"""``payonce migrate``: create the store's schema or bring it up to date."""

import contextlib
import sqlite3
from typing import Any

from payonce.cli._common import (
    DEFAULT_STORE,
    JsonOption,
    Out,
    StoreOption,
    handled,
    sqlite_path,
)
from payonce.stores import open_store
from payonce.stores._open import _POSTGRES_OPTIONS, _take_options

__all__ = ["migrate"]


def migrate(store_url: StoreOption = DEFAULT_STORE, as_json: JsonOption = False) -> None:
    """Apply the store's missing migrations and print its schema version.

    Stores also migrate when they open, so this is for doing it ahead of a deployment, with
    the privileges the schema needs. A SQLite file is created if it does not exist. Running it
    twice changes nothing the second time. A schema newer than this payonce exits 2.
    """
    out = Out(as_json)
    backend = _backend(store_url)
    with handled(out):
        before = _applied(backend, store_url)
        store = open_store(store_url)  # opening applies what is missing, under a lock
        try:
            where = repr(store)
            after = _redis_layout() if backend == "redis" else _applied(backend, store_url)
        finally:
            store.close()
    data: dict[str, Any] = {
        "backend": backend,
        "store": where,
        "schema_version_before": before,
        "schema_version": after,
    }
    if out.json:
        out.emit(data)
        return
    if backend == "memory":
        out.console.print(f"{where}: an in-memory store has no schema; nothing to migrate.")
    elif backend == "redis":
        out.console.print(
            f"{where}: Redis key layout {after} (recorded under the prefix on first use)."
        )
    elif after is None:
        out.console.print(
            f"{where}: schema version unknown: the store opened, which applies any missing "
            "migration, but the version could not be read back."
        )
    elif before is None:
        out.console.print(
            f"{where}: schema version {after}; the version before is unknown (it could not be "
            "read), so whether this run migrated is unknown too."
        )
    elif before == after:
        out.console.print(f"{where}: schema version {after}, already up to date.")
    else:
        out.console.print(f"{where}: migrated from schema version {before or 0} to {after}.")


def _backend(url: str) -> str:
    # Not urlsplit: it raises on a malformed host, which open_store reports.
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "memory":
        return "memory"
    if scheme.startswith(("redis", "rediss", "unix")):
        return "redis"
    return scheme or "unknown"  # open_store explains what is wrong with the URL


def _applied(backend: str, url: str) -> int | None:
    """The newest applied migration read from the database itself (0 before the first one);
    None when it cannot be read (no schema table concept, or the database is unreachable,
    which opening the store then reports)."""
    if backend == "sqlite":
        return _sqlite_version(url)
    if backend == "postgresql":
        return _postgres_version(url)
    return None


def _sqlite_version(url: str) -> int | None:
    path = sqlite_path(url)
    if path is None:
        return None  # :memory: starts empty each time
    if not path.exists():
        return 0
    try:
        # Read-only: a version check must never create or change the file.
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        with contextlib.closing(conn.cursor()) as cur:
            cur.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                "AND name = 'payonce_migrations'"
            )
            if cur.fetchone()[0] == 0:
                return 0
            cur.execute("SELECT max(version) FROM payonce_migrations")
            (version,) = cur.fetchone()
            return int(version or 0)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _postgres_version(url: str) -> int | None:
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra is optional
    except ModuleNotFoundError:
        return None  # open_store names the extra to install
    # payonce's own options leave the URL first: libpq refuses parameters it does not know.
    conninfo, _ = _take_options(url, _POSTGRES_OPTIONS)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            row = conn.execute("SELECT to_regclass('payonce_migrations') IS NOT NULL").fetchone()
            if row is None or not row[0]:
                return 0
            found = conn.execute("SELECT max(version) FROM payonce_migrations").fetchone()
            return int(found[0] or 0) if found is not None else 0
    except psycopg.Error:
        return None


def _redis_layout() -> int | None:
    from payonce.stores._redis_core import _LAYOUT  # noqa: PLC0415 - only with the extra

    return int(_LAYOUT)

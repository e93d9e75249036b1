"""Store backends (L4). The embedded ones are re-exported from ``payonce``.

``PostgresStore``/``AsyncPostgresStore`` (extra ``postgres``) and ``RedisStore``/
``AsyncRedisStore`` (extra ``redis``) are loaded on first use, so that importing payonce never
imports a database driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from payonce.stores._memory import MemoryStore
from payonce.stores._open import open_store
from payonce.stores._sqlite import SQLiteStore
from payonce.stores._threaded import ThreadedAsyncStore

if TYPE_CHECKING:
    from payonce.stores._postgres import PostgresStore
    from payonce.stores._postgres_async import AsyncPostgresStore
    from payonce.stores._redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncPostgresStore",
    "AsyncRedisStore",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "ThreadedAsyncStore",
    "open_store",
]

_LAZY = {
    "PostgresStore": "payonce.stores._postgres",
    "AsyncPostgresStore": "payonce.stores._postgres_async",
    "RedisStore": "payonce.stores._redis",
    "AsyncRedisStore": "payonce.stores._redis",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

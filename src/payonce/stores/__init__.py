"""Store backends (L4). Public names are re-exported from ``payonce``."""

from payonce.stores._memory import MemoryStore
from payonce.stores._open import open_store
from payonce.stores._sqlite import SQLiteStore
from payonce.stores._threaded import ThreadedAsyncStore

__all__ = ["MemoryStore", "SQLiteStore", "ThreadedAsyncStore", "open_store"]

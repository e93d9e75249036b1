"""The store contract on SQLite: a file (WAL, one connection per thread) and ``:memory:``,
sync and through a worker thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from payonce import SQLiteStore, ThreadedAsyncStore
from payonce.testing import AsyncStoreContract, StoreContract


class TestSQLiteFileStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        s = SQLiteStore(tmp_path / "contract.db")
        yield s
        s.close()

    @pytest.fixture
    def second(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        s = SQLiteStore(tmp_path / "contract.db")
        yield s
        s.close()


class TestSQLiteFileStoreNormal(StoreContract):
    """synchronous=NORMAL changes durability on power loss, never the semantics."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        s = SQLiteStore(tmp_path / "contract.db", synchronous="NORMAL")
        yield s
        s.close()

    @pytest.fixture
    def second(self, tmp_path: Path) -> Iterator[SQLiteStore]:
        s = SQLiteStore(tmp_path / "contract.db", synchronous="NORMAL")
        yield s
        s.close()


class TestSQLiteMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[SQLiteStore]:
        s = SQLiteStore(":memory:")
        yield s
        s.close()


class TestThreadedSQLiteStore(AsyncStoreContract):
    @pytest.fixture
    def astore(self, tmp_path: Path) -> ThreadedAsyncStore:
        return ThreadedAsyncStore(SQLiteStore(tmp_path / "contract.db"))

    @pytest.fixture
    def asecond(self, tmp_path: Path) -> ThreadedAsyncStore:
        return ThreadedAsyncStore(SQLiteStore(tmp_path / "contract.db"))

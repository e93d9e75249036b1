"""The store contract on the reference in-memory store, sync and through a worker thread."""

from __future__ import annotations

import pytest

from payonce.stores._memory import MemoryStore
from payonce.stores._threaded import ThreadedAsyncStore
from payonce.testing import AsyncStoreContract, StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()


class TestThreadedMemoryStore(AsyncStoreContract):
    @pytest.fixture
    def astore(self) -> ThreadedAsyncStore:
        return ThreadedAsyncStore(MemoryStore())

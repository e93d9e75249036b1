"""SQLite-only behaviour the shared contract cannot see: two store instances on one file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from payonce import LeaseLostError, SQLiteStore, Status, verify_ledger
from payonce._model import NewRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = timedelta(seconds=30)
NEW = NewRecord(
    scope="tenant-a",
    key="k1_" + "a" * 64,
    fingerprint="f" * 64,
    intent='{"amount":5000}',
    provider_key="po1_" + "b" * 64,
    operation="charge",
    amount=5000,
    currency="usd",
)


def test_holder_on_another_instance_is_fenced_after_a_takeover(tmp_path: Path) -> None:
    # Instance A holds the record it claimed; instance B (another process, in production)
    # takes it over. A's write starts from its own copy and must still be refused.
    a = SQLiteStore(tmp_path / "shared.db")
    b = SQLiteStore(tmp_path / "shared.db")
    try:
        claimed = a.claim(NEW, now=T0, lease_for=LEASE)
        assert claimed.lease is not None
        taken = b.takeover(NEW.scope, NEW.key, token=1, now=T0 + LEASE, lease_for=LEASE)
        assert taken.lease is not None
        entries_before = len(a.entries(after=0, limit=100))

        with pytest.raises(LeaseLostError):
            a.complete(
                NEW.scope, NEW.key, token=1, status=Status.SUCCEEDED, outcome="{}", now=T0 + LEASE
            )

        assert a.get(NEW.scope, NEW.key) == taken.record
        assert len(a.entries(after=0, limit=100)) == entries_before
        done = b.complete(
            NEW.scope, NEW.key, token=2, status=Status.SUCCEEDED, outcome="{}", now=T0 + LEASE
        )
        assert a.get(NEW.scope, NEW.key) == done
        assert verify_ledger(a).entries == 3
    finally:
        a.close()
        b.close()

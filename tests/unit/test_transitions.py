"""The pure transitions (L1): what a complete changes, and nothing else."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from payonce import Status
from payonce._model import NewRecord
from payonce._transitions import claim_transition, complete_transition

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("family", [None, "f1_family"])
@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED])
def test_complete_changes_only_status_outcome_lease_head_and_time(
    family: str | None, status: Status
) -> None:
    # complete_transition builds its record field by field (for speed); this pins it to what
    # dataclasses.replace would give, so a field added to Record later cannot be dropped.
    new = NewRecord(
        scope="tenant-a", key="k1_abc", fingerprint="f" * 64, intent='{"amount":100}',
        provider_key="po1_abc", operation="charge", amount=100, currency="usd",
        family=family, generation=3 if family else 0,
    )  # fmt: skip
    claimed, _ = claim_transition(
        new, now=NOW, lease_for=timedelta(seconds=60), seq=0, prev_hash=None, prev_token=4
    )
    later = NOW + timedelta(seconds=2)
    done, entry = complete_transition(
        claimed, key="k1_abc", token=5, status=status, outcome='{"value":1}', now=later, seq=0
    )
    assert done == dataclasses.replace(
        claimed,
        status=status,
        outcome='{"value":1}',
        lease_expires_at=None,
        updated_at=later,
        ledger_head=entry.hash,
    )

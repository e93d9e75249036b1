"""The guard makes the fewest store calls the design allows (DESIGN §7: the replay path never
writes and takes one round trip)."""

from __future__ import annotations

from typing import Any

import pytest

from payonce import Guard, Intent, Store
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET

INTENT = Intent("charge", 5000, "usd", customer="cus_123", reference="order-42")


class CountingStore:
    """Forwards to a real store and records the name of every call."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.calls: list[str] = []
        self.read_before_claim = getattr(inner, "read_before_claim", False)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


@pytest.fixture
def counted(store: Store) -> CountingStore:
    return CountingStore(store)


def test_fresh_call_reads_at_most_once_claims_once_completes_once(
    counted: CountingStore, clock: ManualClock
) -> None:
    guard = Guard(counted, secret=SECRET, scope=SCOPE, clock=clock)  # type: ignore[arg-type]
    guard.run(INTENT, lambda attempt: {"id": "ch_1"})
    expected = ["claim", "complete"]
    if counted.read_before_claim:
        expected.insert(0, "replay_view")
    assert counted.calls == expected


def test_replay_is_one_read_and_no_write(counted: CountingStore, clock: ManualClock) -> None:
    guard = Guard(counted, secret=SECRET, scope=SCOPE, clock=clock)  # type: ignore[arg-type]
    guard.run(INTENT, lambda attempt: {"id": "ch_1"})
    counted.calls.clear()
    again = guard.run(INTENT, lambda attempt: {"id": "never"})
    assert again.replayed
    assert counted.calls == (["replay_view"] if counted.read_before_claim else ["claim"])


def test_a_reference_less_intent_reads_only_its_family(
    counted: CountingStore, clock: ManualClock
) -> None:
    # The family's newest record is the record at the key the window picks: no second read of
    # it. A fresh call is that read, the claim and the completion; a retry is the read alone.
    guard = Guard(counted, secret=SECRET, scope=SCOPE, clock=clock)  # type: ignore[arg-type]
    loose = Intent("charge", 5000, "usd", customer="cus_123")
    guard.run(loose, lambda attempt: {"id": "ch_1"})
    assert counted.calls == ["newest", "claim", "complete"]
    counted.calls.clear()
    again = guard.run(loose, lambda attempt: {"id": "never"})
    assert again.replayed
    assert counted.calls == ["newest"]

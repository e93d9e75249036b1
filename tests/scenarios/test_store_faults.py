"""SCENARIOS R15 (a, b and a lost UNKNOWN mark): the store fails around a gateway call, on G1 and
G2 over every store. No charge without a durable intent, no "failed" for a charged operation, and
convergence after the Reconciler (I1-I5).

The store fails through ``Failing``, a wrapper that raises ``StoreUnavailableError`` from the
named methods (the store itself stays intact, like a network partition to the database).
"""

from __future__ import annotations

from typing import Any

import pytest

from payonce import OutcomeUnknownError, RetryPolicy, Status, Store, StoreUnavailableError
from tests.scenarios.harness import DROP, World, check


class Failing:
    """A store whose ``methods`` raise ``StoreUnavailableError`` ``times`` times."""

    def __init__(self, inner: Store, *methods: str, times: int = 1) -> None:
        self._inner = inner
        self._failing = set(methods)
        self._left = times
        self.failed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._failing or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._left > 0:
                self._left -= 1
                self.failed.append(name)
                raise StoreUnavailableError("unreachable (injected)", operation=name)
            return attr(*args, **kwargs)

        return call

    # The Store protocol's methods, so that the guard accepts the wrapper as a Store.
    def claim(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("claim")(*args, **kwargs)

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("complete")(*args, **kwargs)

    def mark_unknown(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("mark_unknown")(*args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("get")(*args, **kwargs)

    def replay_view(self, *args: Any, **kwargs: Any) -> Any:
        return self.__getattr__("replay_view")(*args, **kwargs)


def test_r15a_store_down_at_claim_fails_closed(world: World) -> None:
    intent = world.intent("r15a")
    failing = Failing(world.store, "claim", "get", "replay_view", times=10)
    with pytest.raises(StoreUnavailableError):
        world.guard(store=failing).execute(intent)  # type: ignore[arg-type]
    assert failing.failed  # the store was asked and failed
    assert world.calls() == []  # 0 gateway calls
    assert world.record(intent) is None
    outcome = world.guard().execute(intent)  # once the store is back: one charge
    assert not outcome.replayed
    world.reconcile()
    assert len(world.charges()) == 1
    check(world, [outcome])


def test_r15b_store_fails_recording_after_the_gateway_charged(world: World) -> None:
    intent = world.intent("r15b")
    failing = Failing(world.store, "complete")
    with pytest.raises(OutcomeUnknownError) as caught:
        world.guard(store=failing).execute(intent)  # type: ignore[arg-type]
    assert failing.failed == ["complete"]
    assert "same intent" in str(caught.value)
    record = world.record(intent)
    assert record is not None
    assert record.status is Status.CLAIMED  # durable intent, never "failed"
    [charge] = world.charges(record.key)
    world.reconcile()  # lookup adopts it (G1 inside the window: the same key, replayed)
    outcome = world.guard().execute(intent)
    assert outcome.replayed
    assert outcome.value["id"] == charge["id"]
    assert len(world.charges()) == 1
    check(world, [outcome])


def test_r15_store_fails_marking_unknown_after_a_lost_answer(world: World) -> None:
    intent = world.intent("r15-mark")
    world.fault(DROP)
    failing = Failing(world.store, "mark_unknown")
    with pytest.raises(OutcomeUnknownError):
        world.guard(store=failing, retry=RetryPolicy.never()).execute(intent)  # type: ignore[arg-type]
    assert failing.failed == ["mark_unknown"]
    record = world.record(intent)
    assert record is not None
    assert record.status is Status.CLAIMED  # resolves after its lease
    world.reconcile()
    resolved = world.record(intent)
    assert resolved is not None
    assert resolved.status is Status.SUCCEEDED
    assert len(world.charges()) == 1
    outcome = world.guard().execute(intent)
    assert outcome.replayed
    check(world, [outcome])

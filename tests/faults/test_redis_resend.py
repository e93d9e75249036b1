"""R15c on Redis: a script's reply is lost and the client sends the script again.

redis-py re-sends a command after a connection error (its default retry), so a transition
script can run twice for one call: the first time it applies, its reply is lost, the second
time it finds its own work done. Each script must recognise that (a claim or takeover by its
lease id, a fenced write by its own ledger entry) and answer as if it ran once: no second
ledger entry, no LeaseLostError for a write that landed, and never a second call.

The fault is injected by running each script twice per call and discarding the first reply,
against the real Redis on loopback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

from payonce import (
    Attempt,
    Event,
    GatewayUnavailableError,
    Guard,
    OutcomeUnknownError,
    Status,
    seal_checkpoint,
    verify_ledger,
)
from payonce.stores._redis import RedisStore
from payonce.testing import ManualClock
from tests.conftest import _REDIS, SCOPE, SECRET
from tests.faults import worker

LEASE = timedelta(seconds=30)


class _NotSentError(Exception):
    """The provider refused the connection: provably not executed."""


@pytest.fixture
def store() -> Iterator[RedisStore]:
    s = _REDIS.fresh_store()
    assert isinstance(s, RedisStore)
    yield s
    s.close()


@pytest.fixture
def guard(store: RedisStore) -> Guard:
    return Guard(
        store,
        secret=SECRET,
        scope=SCOPE,
        clock=ManualClock(),
        lease=LEASE,
        wait=timedelta(0),
        not_executed=(_NotSentError,),
    )


def resend(store: RedisStore, name: str) -> list[Any]:
    """Make every call of script ``name`` run twice; the first reply is lost."""
    lost: list[Any] = []
    script = store._scripts[name]

    def twice(*, keys: list[str], args: list[str], client: Any = None) -> Any:
        lost.append(script(keys=keys, args=args, client=client))
        return script(keys=keys, args=args, client=client)

    store._scripts[name] = twice  # type: ignore[assignment]
    return lost


def events(store: RedisStore, key: str) -> list[Event]:
    return [e.event for e in store.entries(after=0, limit=100) if e.key == key]


def counting(calls: list[Attempt], fail: Exception | None = None) -> Callable[[Attempt], Any]:
    def fn(attempt: Attempt) -> dict[str, str]:
        calls.append(attempt)
        if fail is not None:
            raise fail
        return {"id": f"ch_{attempt.number}"}

    return fn


def test_a_resent_claim_recognises_its_own_lease(store: RedisStore, guard: Guard) -> None:
    lost = resend(store, "claim")
    intent = worker.intent_for("resend-claim")
    calls: list[Attempt] = []
    outcome = guard.run(intent, counting(calls))
    assert lost  # the fault fired
    assert (outcome.replayed, len(calls)) == (False, 1)
    assert events(store, outcome.key) == [Event.CLAIMED, Event.SUCCEEDED]
    verify_ledger(store)


def test_a_resent_complete_recognises_its_own_entry(store: RedisStore, guard: Guard) -> None:
    lost = resend(store, "apply")
    intent = worker.intent_for("resend-complete")
    calls: list[Attempt] = []
    outcome = guard.run(intent, counting(calls))
    assert lost
    assert (outcome.replayed, outcome.value, len(calls)) == (False, {"id": "ch_1"}, 1)
    record = store.get(SCOPE, outcome.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert events(store, outcome.key) == [Event.CLAIMED, Event.SUCCEEDED]
    assert guard.run(intent, counting(calls)).replayed
    assert len(calls) == 1
    verify_ledger(store)


def test_a_resent_unknown_mark_stays_one_mark(store: RedisStore, guard: Guard) -> None:
    lost = resend(store, "apply")
    intent = worker.intent_for("resend-unknown")
    calls: list[Attempt] = []
    with pytest.raises(OutcomeUnknownError):
        guard.run(intent, counting(calls, TimeoutError("the answer was lost")))
    assert lost
    key = guard.key_for(intent)
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert events(store, key) == [Event.CLAIMED, Event.MARKED_UNKNOWN]
    with pytest.raises(OutcomeUnknownError):
        guard.run(intent, counting(calls))
    assert len(calls) == 1  # never called again
    verify_ledger(store)


def test_a_resent_release_is_not_a_lost_lease(store: RedisStore, guard: Guard) -> None:
    lost = resend(store, "apply")
    intent = worker.intent_for("resend-release")
    calls: list[Attempt] = []
    with pytest.raises(GatewayUnavailableError):
        guard.run(intent, counting(calls, _NotSentError("connection refused")))
    assert lost
    key = guard.key_for(intent)
    assert store.get(SCOPE, key) is None
    assert events(store, key) == [Event.CLAIMED, Event.RELEASED]
    outcome = guard.run(intent, counting(calls))  # the released key is claimed afresh
    assert (outcome.replayed, len(calls)) == (False, 2)
    verify_ledger(store)


def test_a_resent_takeover_recognises_its_own_lease(store: RedisStore, guard: Guard) -> None:
    intent = worker.intent_for("resend-takeover")
    key = guard.key_for(intent)
    calls: list[Attempt] = []

    def abandoned(attempt: Attempt) -> dict[str, str]:
        calls.append(attempt)
        raise KeyboardInterrupt  # the worker dies mid-call; its claim is left behind

    with pytest.raises(KeyboardInterrupt):
        guard.run(intent, abandoned)
    lost = resend(store, "apply")
    guard.clock.advance(LEASE + timedelta(seconds=1))  # type: ignore[attr-defined]
    outcome = guard.run(intent, counting(calls), resumable=True)
    assert lost
    assert [a.number for a in calls] == [1, 2]
    assert len({a.provider_key for a in calls}) == 1
    assert outcome.value == {"id": "ch_2"}
    kinds = events(store, key)
    assert kinds.count(Event.TAKEN_OVER) == 1
    assert kinds[-1] is Event.SUCCEEDED
    verify_ledger(store)


def test_a_resent_checkpoint_is_stored_once_and_not_a_conflict(
    store: RedisStore, guard: Guard
) -> None:
    calls: list[Attempt] = []
    for n in range(3):
        guard.run(worker.intent_for(f"resend-seal-{n}"), counting(calls))
    lost = resend(store, "append_checkpoint")
    checkpoint = seal_checkpoint(store, now=guard.clock.now())
    assert lost == [1]  # the first run stored it; the resend found it there
    assert checkpoint is not None
    assert list(store.checkpoints()) == [checkpoint]
    assert verify_ledger(store).checkpoints == 1


def test_a_resent_purge_counts_the_records_it_purged(store: RedisStore, guard: Guard) -> None:
    calls: list[Attempt] = []
    keys = [
        guard.run(worker.intent_for(f"resend-purge-{n}"), counting(calls)).key for n in range(3)
    ]
    lost = resend(store, "purge")
    guard.clock.advance(timedelta(days=10))  # type: ignore[attr-defined]
    purged = store.purge(now=guard.clock.now(), retention=timedelta(days=3), limit=100)
    assert sum(len(reply[1]) for reply in lost) == 3  # the first runs purged them
    assert purged == 3
    assert [store.get(SCOPE, key) for key in keys] == [None, None, None]
    for key in keys:
        assert events(store, key).count(Event.PURGED) == 1
    verify_ledger(store)

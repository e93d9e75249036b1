"""Behaviour of ``AsyncGuard``: the mirror of ``test_sync.py``.

Each test runs its body with ``asyncio.run``. The sync stores of the ``store`` fixture run behind
``ThreadedAsyncStore`` (AsyncGuard wraps them); guarded functions are coroutines unless a test
says otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from payonce import (
    AsyncGuard,
    Attempt,
    ConfigurationError,
    GatewayRejectedError,
    GatewayUnavailableError,
    Guard,
    InProgressError,
    Intent,
    KeyReuseError,
    LeaseLostError,
    OutcomeUnknownError,
    SQLiteStore,
    Status,
    Store,
    StoreUnavailableError,
    ThreadedAsyncStore,
    once,
)
from payonce._keys import canonical_json, fingerprint
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.guard.test_sync import (
    INTENT,
    LEASE,
    LOOSE,
    UNRECORDABLE,
    FailingStore,
    HookClock,
    MyDeclineError,
    MyRefusedError,
    Recorder,
    claim_elsewhere,
    ledger,
    run_child,
)

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


class AsyncRecorder(Recorder):
    """The coroutine twin of ``Recorder``."""

    async def __call__(self, attempt: Attempt) -> Any:  # type: ignore[override]
        await asyncio.sleep(0)
        return Recorder.__call__(self, attempt)


class AsyncHookClock(HookClock):
    async def asleep(self, duration: timedelta) -> None:
        self.sleep(duration)
        await asyncio.sleep(0)


@pytest.fixture
def aguard(store: Store, clock: ManualClock) -> AsyncGuard:
    return AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock)


# -- first call and replay ---------------------------------------------------------------------


def test_first_call_runs_fn_once_and_succeeds(aguard: AsyncGuard, store: Store) -> None:
    fn = AsyncRecorder()
    outcome = run(lambda: aguard.run(INTENT, fn))
    assert fn.calls == 1
    assert outcome.status is Status.SUCCEEDED
    assert outcome.value == {"charge": "ch_1", "amount": 1000}
    assert outcome.replayed is False
    assert outcome.attempt == 1
    assert fn.attempts[0].number == 1
    assert fn.attempts[0].provider_key == outcome.provider_key
    assert outcome.body == '{"value":{"amount":1000,"charge":"ch_1"}}'
    record = store.get(SCOPE, outcome.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.outcome == outcome.body


def test_plain_sync_fn_under_async_guard(aguard: AsyncGuard, store: Store) -> None:
    fn = Recorder({"charge": "ch_sync"})
    outcome = run(lambda: aguard.run(INTENT, fn))
    assert fn.calls == 1
    assert outcome.value == {"charge": "ch_sync"}
    assert run(lambda: aguard.run(INTENT, fn)).replayed is True
    assert fn.calls == 1


def test_second_identical_call_replays(aguard: AsyncGuard, store: Store) -> None:
    fn = AsyncRecorder()

    async def main() -> tuple[Any, Any, int]:
        first = await aguard.run(INTENT, fn)
        entries = len(ledger(store))
        second = await aguard.run(Intent.from_dict(INTENT.canonical()), fn)
        return first, second, entries

    first, second, entries = run(main)
    assert fn.calls == 1
    assert second.replayed is True
    assert second.body == first.body
    assert second.value == first.value
    assert second.key == first.key
    assert second.provider_key == first.provider_key
    assert len(ledger(store)) == entries


def test_sync_and_async_guards_share_keys_and_records(
    aguard: AsyncGuard, guard: Guard, store: Store
) -> None:
    first = guard.run(INTENT, Recorder())
    fn = AsyncRecorder()
    second = run(lambda: aguard.run(INTENT, fn))
    assert run(lambda: aguard.key_for(INTENT)) == guard.key_for(INTENT)
    assert second.replayed is True
    assert second.body == first.body
    assert fn.calls == 0


_CHILD_ASYNC = """
import asyncio, json, sys
from pathlib import Path
from payonce import AsyncGuard, Intent, SQLiteStore

path, secret, scope, marker, intent = sys.argv[1:6]
async def fn(attempt):
    Path(marker).write_text("called")
    return {"child": True}
store = SQLiteStore(path)
guard = AsyncGuard(store, secret=bytes.fromhex(secret), scope=scope)
outcome = asyncio.run(guard.run(Intent.from_dict(json.loads(intent)), fn))
store.close()
print(json.dumps({"replayed": outcome.replayed, "value": outcome.value,
                  "body": outcome.body, "key": outcome.key}))
"""


def test_replay_from_new_process_on_same_sqlite_file(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "shared.db"
    store = SQLiteStore(db)
    try:
        aguard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock)
        first = run(lambda: aguard.run(INTENT, AsyncRecorder()))
    finally:
        store.close()
    marker = tmp_path / "child-called"
    child = run_child(_CHILD_ASYNC, db, marker, INTENT)
    assert child["replayed"] is True
    assert child["value"] == first.value
    assert child["body"] == first.body
    assert child["key"] == first.key
    assert not marker.exists(), "the child process called fn for a finished intent"


# -- key reuse ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"amount": 2000}, ("amount",)),
        ({"currency": "eur"}, ("currency",)),
        ({"customer": "cus_mallory"}, ("customer",)),
        ({"params": {"description": "hoodie"}}, ("params",)),
        ({"metadata": {"cart": "c-8"}}, ("metadata",)),
        ({"amount": 2000, "currency": "eur"}, ("amount", "currency")),
    ],
)
def test_key_reuse_names_changed_fields(
    aguard: AsyncGuard, store: Store, change: dict[str, Any], fields: tuple[str, ...]
) -> None:
    first = run(lambda: aguard.run(INTENT, AsyncRecorder()))
    before = store.get(SCOPE, first.key)
    entries = ledger(store)
    changed = Intent.from_dict({**INTENT.canonical(), **change})
    fn = AsyncRecorder()
    with pytest.raises(KeyReuseError) as caught:
        run(lambda: aguard.run(changed, fn))
    assert caught.value.fields == fields
    assert caught.value.key == first.key
    assert fn.calls == 0
    assert store.get(SCOPE, first.key) == before
    assert ledger(store) == entries


# -- outcome classes ---------------------------------------------------------------------------


def test_unclassified_exception_is_unknown_and_sticks(aguard: AsyncGuard, store: Store) -> None:
    fn = AsyncRecorder(raises=TimeoutError("read timed out"))
    with pytest.raises(OutcomeUnknownError) as caught:
        run(lambda: aguard.run(INTENT, fn))
    message = str(caught.value)
    assert "same intent" in message
    assert "never with a new one" in message
    key = caught.value.key
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.status is Status.UNKNOWN
    entries = len(ledger(store))

    again = AsyncRecorder()
    with pytest.raises(OutcomeUnknownError):
        run(lambda: aguard.run(INTENT, again))
    assert again.calls == 0
    assert store.get(SCOPE, key) == record
    assert len(ledger(store)) == entries


def test_resumable_retry_calls_again_with_same_provider_key(
    aguard: AsyncGuard, store: Store
) -> None:
    lost = AsyncRecorder(raises=ConnectionResetError("reset after send"))
    with pytest.raises(OutcomeUnknownError):
        run(lambda: aguard.run(INTENT, lost))
    retry = AsyncRecorder()
    outcome = run(lambda: aguard.run(INTENT, retry, resumable=True))
    assert retry.calls == 1
    assert retry.attempts[0].provider_key == lost.attempts[0].provider_key
    assert retry.attempts[0].number == 2
    assert outcome.attempt == 2
    record = store.get(SCOPE, outcome.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED


def test_definite_exception_fails_and_replays(store: Store, clock: ManualClock) -> None:
    aguard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock, definite=(MyDeclineError,))
    fn = AsyncRecorder(raises=MyDeclineError("card_declined"))
    with pytest.raises(GatewayRejectedError) as first:
        run(lambda: aguard.run(INTENT, fn))
    assert first.value.replayed is False
    record = store.get(SCOPE, first.value.key)
    assert record is not None
    assert record.status is Status.FAILED

    again = AsyncRecorder()
    with pytest.raises(GatewayRejectedError) as second:
        run(lambda: aguard.run(INTENT, again))
    assert second.value.replayed is True
    assert second.value.code == "MyDeclineError"
    assert again.calls == 0


def test_not_executed_exception_releases_key(store: Store, clock: ManualClock) -> None:
    aguard = AsyncGuard(
        store, secret=SECRET, scope=SCOPE, clock=clock, not_executed=(MyRefusedError,)
    )
    refused = AsyncRecorder(raises=MyRefusedError("connection refused"))
    with pytest.raises(GatewayUnavailableError) as caught:
        run(lambda: aguard.run(INTENT, refused))
    key = caught.value.key
    assert store.get(SCOPE, key) is None

    fn = AsyncRecorder()
    outcome = run(lambda: aguard.run(INTENT, fn))
    assert fn.calls == 1
    assert outcome.replayed is False
    assert outcome.key == key
    assert [e.event.value for e in ledger(store)] == [
        "claimed",
        "released",
        "claimed",
        "succeeded",
    ]


@UNRECORDABLE
def test_unserialisable_return_is_unknown(
    aguard: AsyncGuard, store: Store, value: Any, says: str
) -> None:
    fn = AsyncRecorder(value)
    with pytest.raises(OutcomeUnknownError) as caught:
        run(lambda: aguard.run(INTENT, fn))
    assert says in caught.value.reason
    record = store.get(SCOPE, caught.value.key)
    assert record is not None
    assert record.status is Status.UNKNOWN


def test_interrupt_mid_call_marks_unknown(aguard: AsyncGuard, store: Store) -> None:
    fn = AsyncRecorder(raises=asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        run(lambda: aguard.run(INTENT, fn))
    key = run(lambda: aguard.key_for(INTENT))
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.status is Status.UNKNOWN
    again = AsyncRecorder()
    with pytest.raises(OutcomeUnknownError):
        run(lambda: aguard.run(INTENT, again))
    assert again.calls == 0


# -- waiting and takeover ----------------------------------------------------------------------


def test_live_lease_elsewhere_waits_then_in_progress(
    aguard: AsyncGuard, store: Store, clock: ManualClock
) -> None:
    start = clock.now()
    held = claim_elsewhere(store, INTENT, now=start)
    fn = AsyncRecorder()
    with pytest.raises(InProgressError) as caught:
        run(lambda: aguard.run(INTENT, fn))
    assert fn.calls == 0
    assert caught.value.retry_after > timedelta(0)
    waited = clock.now() - start
    assert aguard.wait <= waited < LEASE
    assert store.get(SCOPE, held.record.key) == held.record


def test_zero_wait_raises_in_progress_at_once(store: Store, clock: ManualClock) -> None:
    aguard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock, wait=timedelta(0))
    start = clock.now()
    claim_elsewhere(store, INTENT, now=start)
    fn = AsyncRecorder()
    with pytest.raises(InProgressError) as caught:
        run(lambda: aguard.run(INTENT, fn))
    assert clock.now() == start
    assert timedelta(0) < caught.value.retry_after <= LEASE
    assert fn.calls == 0


def test_lease_expiring_while_waiting_takes_over(
    aguard: AsyncGuard, store: Store, clock: ManualClock
) -> None:
    start = clock.now()
    held = claim_elsewhere(store, INTENT, now=start, lease=timedelta(seconds=2))
    fn = AsyncRecorder()
    with pytest.raises(OutcomeUnknownError):
        run(lambda: aguard.run(INTENT, fn))
    assert fn.calls == 0
    assert timedelta(seconds=2) <= clock.now() - start < aguard.wait
    record = store.get(SCOPE, held.record.key)
    assert record is not None
    assert record.status is Status.UNKNOWN


def test_holder_completes_while_waiting_replays(store: Store) -> None:
    clock = AsyncHookClock()
    aguard = AsyncGuard(store, secret=SECRET, scope=SCOPE, clock=clock)
    held = claim_elsewhere(store, INTENT, now=clock.now())
    assert held.lease is not None
    token = held.lease.token
    body = canonical_json({"value": {"charge": "ch_other"}})
    clock.on_sleep = lambda: store.complete(
        SCOPE, held.record.key, token=token, status=Status.SUCCEEDED, outcome=body, now=clock.now()
    )
    fn = AsyncRecorder()
    outcome = run(lambda: aguard.run(INTENT, fn))
    assert clock.sleeps >= 1
    assert fn.calls == 0
    assert outcome.replayed is True
    assert outcome.body == body


def test_expired_lease_takeover_not_resumable_is_unknown(
    aguard: AsyncGuard, store: Store, clock: ManualClock
) -> None:
    held = claim_elsewhere(store, INTENT, now=clock.now())
    clock.advance(LEASE + timedelta(seconds=1))
    fn = AsyncRecorder()
    with pytest.raises(OutcomeUnknownError):
        run(lambda: aguard.run(INTENT, fn))
    assert fn.calls == 0
    record = store.get(SCOPE, held.record.key)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert [e.event.value for e in ledger(store)] == ["claimed", "taken_over", "marked_unknown"]


def test_expired_lease_takeover_resumable_calls_again(
    aguard: AsyncGuard, store: Store, clock: ManualClock
) -> None:
    held = claim_elsewhere(store, INTENT, now=clock.now())
    clock.advance(LEASE + timedelta(seconds=1))
    fn = AsyncRecorder()
    outcome = run(lambda: aguard.run(INTENT, fn, resumable=True))
    assert fn.calls == 1
    assert fn.attempts[0].number == 2
    assert fn.attempts[0].provider_key == held.record.provider_key
    assert outcome.attempt == 2


def test_zombie_complete_after_takeover_raises_lease_lost(
    aguard: AsyncGuard, store: Store, clock: ManualClock
) -> None:
    taker = AsyncRecorder({"charge": "ch_taker"})

    async def slow(attempt: Attempt) -> Any:
        clock.advance(LEASE + timedelta(seconds=1))
        await aguard.run(INTENT, taker, resumable=True)
        return {"charge": "ch_zombie"}

    with pytest.raises(LeaseLostError) as caught:
        run(lambda: aguard.run(INTENT, slow))
    assert caught.value.token == 1
    assert taker.calls == 1
    record = store.get(SCOPE, caught.value.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert json.loads(record.outcome or "") == {"value": {"charge": "ch_taker"}}
    assert [e.event.value for e in ledger(store)] == ["claimed", "taken_over", "succeeded"]


# -- once --------------------------------------------------------------------------------------


def _order_intent(order: str, amount: int = 1000) -> Intent:
    return Intent("charge", amount, "usd", customer="cus_alice", reference=order)


def test_once_decorator_with_attempt(aguard: AsyncGuard) -> None:
    seen: list[Attempt] = []

    @once(aguard, intent=_order_intent)
    async def charge(order: str, amount: int = 1000, *, attempt: Attempt) -> dict[str, Any]:
        seen.append(attempt)
        return {"charge": f"ch_{order}", "idempotency_key": attempt.provider_key}

    async def main() -> tuple[Any, Any]:
        first = await charge("order-1")
        second = await charge("order-1")
        with pytest.raises(KeyReuseError):
            await charge("order-1", 2000)
        return first, second

    first, second = run(main)
    assert first == second
    assert len(seen) == 1
    assert first["idempotency_key"] == seen[0].provider_key
    assert charge.__name__ == "charge"


def test_once_decorator_without_attempt(aguard: AsyncGuard) -> None:
    calls: list[str] = []

    @once(aguard, intent=_order_intent)
    async def charge(order: str, amount: int = 1000) -> str:
        calls.append(order)
        return f"ch_{order}_{amount}"

    async def main() -> list[str]:
        return [await charge("order-2"), await charge("order-2"), await charge("order-3")]

    assert run(main) == ["ch_order-2_1000", "ch_order-2_1000", "ch_order-3_1000"]
    assert calls == ["order-2", "order-3"]


def test_once_decorator_rejects_mismatched_guard(aguard: AsyncGuard) -> None:
    with pytest.raises(ConfigurationError, match="Guard"):

        @once(aguard, intent=_order_intent)
        def charge(order: str) -> str:
            return order


# -- keys, scopes and the dedup window ---------------------------------------------------------


def test_key_for_matches_outcome_and_store(aguard: AsyncGuard, store: Store) -> None:
    key = run(lambda: aguard.key_for(INTENT))
    assert key.startswith("k1_")
    outcome = run(lambda: aguard.run(INTENT, AsyncRecorder()))
    assert outcome.key == key
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.provider_key == outcome.provider_key
    assert record.fingerprint == fingerprint(INTENT)


def test_scopes_are_isolated(aguard: AsyncGuard, store: Store, clock: ManualClock) -> None:
    other = AsyncGuard(store, secret=SECRET, scope="tenant-b", clock=clock)
    fn_a = AsyncRecorder({"charge": "ch_a"})
    fn_b = AsyncRecorder({"charge": "ch_b"})
    changed = Intent.from_dict({**INTENT.canonical(), "amount": 2500})

    async def main() -> tuple[Any, Any, Any]:
        in_a = await aguard.run(INTENT, fn_a)
        in_b = await other.run(changed, fn_b)
        return in_a, in_b, await aguard.run(INTENT, AsyncRecorder())

    in_a, in_b, replay_a = run(main)
    assert fn_a.calls == 1
    assert fn_b.calls == 1
    assert in_b.value == {"charge": "ch_b"}
    assert in_a.key != in_b.key
    assert in_a.provider_key != in_b.provider_key
    assert store.get("tenant-b", in_a.key) is None
    assert replay_a.value == {"charge": "ch_a"}


def test_reference_less_window(aguard: AsyncGuard, store: Store, clock: ManualClock) -> None:
    fn = AsyncRecorder()
    first = run(lambda: aguard.run(LOOSE, fn))
    clock.advance(timedelta(minutes=5))
    second = run(lambda: aguard.run(LOOSE, fn))
    assert fn.calls == 1
    assert second.replayed is True
    assert second.key == first.key

    clock.advance(timedelta(minutes=6))
    third = run(lambda: aguard.run(LOOSE, fn))
    assert fn.calls == 2
    assert third.replayed is False
    assert third.key != first.key


def test_reference_less_unknown_is_never_bypassed(
    aguard: AsyncGuard, store: Store, clock: ManualClock
) -> None:
    with pytest.raises(OutcomeUnknownError) as caught:
        run(lambda: aguard.run(LOOSE, AsyncRecorder(raises=TimeoutError())))
    key = caught.value.key
    clock.advance(timedelta(hours=5))
    fn = AsyncRecorder()
    with pytest.raises(OutcomeUnknownError) as again:
        run(lambda: aguard.run(LOOSE, fn))
    assert fn.calls == 0
    assert again.value.key == key
    assert run(lambda: aguard.key_for(LOOSE)) == key


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"scope": ""},
        {"scope": "tenant a"},
        {"scope": "-tenant"},
        {"scope": "t" * 129},
        {"secret": b"too-short"},
        {"secret": "a-str-secret-that-is-long-enough-0123456789"},
        {"lease": timedelta(seconds=-1)},
        {"lease": timedelta(0)},
        {"wait": timedelta(seconds=-1)},
        {"window": timedelta(0)},
        {"definite": (ValueError, "not-a-type")},
    ],
    ids=lambda options: next(iter(options)),
)
def test_guard_rejects_bad_configuration(store: Store, options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"secret": SECRET, "scope": SCOPE, **options}
    with pytest.raises(ConfigurationError):
        AsyncGuard(store, **kwargs)


def test_guard_rejects_non_store(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="AsyncStore"):
        AsyncGuard(object(), secret=SECRET, scope=SCOPE)  # type: ignore[arg-type]
    native = ThreadedAsyncStore(store)
    assert AsyncGuard(native, secret=SECRET, scope=SCOPE).store is native


# -- store failures (R15) ----------------------------------------------------------------------


def test_store_failure_at_claim_calls_nothing(store: Store, clock: ManualClock) -> None:
    aguard = AsyncGuard(
        FailingStore(store, fail=["claim"]), secret=SECRET, scope=SCOPE, clock=clock
    )
    fn = AsyncRecorder()
    with pytest.raises(StoreUnavailableError) as caught:
        run(lambda: aguard.run(INTENT, fn))
    assert caught.value.operation == "claim"
    assert fn.calls == 0
    assert ledger(store) == []


def test_store_failure_at_complete_is_unknown_then_resolves(
    store: Store, clock: ManualClock
) -> None:
    flaky = FailingStore(store, fail=["complete"])
    aguard = AsyncGuard(flaky, secret=SECRET, scope=SCOPE, clock=clock)
    charged = AsyncRecorder({"charge": "ch_1"})
    with pytest.raises(OutcomeUnknownError) as caught:
        run(lambda: aguard.run(INTENT, charged))
    assert charged.calls == 1
    record = store.get(SCOPE, caught.value.key)
    assert record is not None
    assert record.status is Status.CLAIMED

    flaky.fail.clear()
    early = AsyncRecorder()
    with pytest.raises(InProgressError):
        run(lambda: aguard.run(INTENT, early, resumable=True))
    assert early.calls == 0

    clock.advance(LEASE)
    retry = AsyncRecorder({"charge": "ch_1"})
    outcome = run(lambda: aguard.run(INTENT, retry, resumable=True))
    assert retry.calls == 1
    assert retry.attempts[0].provider_key == charged.attempts[0].provider_key
    assert retry.attempts[0].number == 2
    assert outcome.value == {"charge": "ch_1"}


def test_store_failure_at_release_is_unknown(store: Store, clock: ManualClock) -> None:
    flaky = FailingStore(store, fail=["release"])
    aguard = AsyncGuard(
        flaky, secret=SECRET, scope=SCOPE, clock=clock, not_executed=(MyRefusedError,)
    )
    with pytest.raises(OutcomeUnknownError) as caught:
        run(lambda: aguard.run(INTENT, AsyncRecorder(raises=MyRefusedError())))
    record = store.get(SCOPE, caught.value.key)
    assert record is not None
    assert record.status is Status.CLAIMED

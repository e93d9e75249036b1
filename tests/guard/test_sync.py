"""Behaviour of ``Guard`` over every embedded store (mirrored by ``test_async.py``)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from payonce import (
    AsyncGuard,
    Attempt,
    ConfigurationError,
    Entry,
    GatewayAnswer,
    GatewayRejectedError,
    GatewayUnavailableError,
    Guard,
    InProgressError,
    Intent,
    KeyReuseError,
    LeaseLostError,
    OutcomeClass,
    OutcomeUnknownError,
    RetryPolicy,
    SQLiteStore,
    Status,
    Store,
    StoreUnavailableError,
    ThreadedAsyncStore,
    once,
    verify_ledger,
)
from payonce._keys import canonical_json, fingerprint
from payonce._model import Checkpoint, Claimed, NewRecord, Record, ReplayView
from payonce.testing import ManualClock
from payonce.testing._contract_support import _new as _new_record
from tests.conftest import SCOPE, SECRET

LEASE = timedelta(seconds=60)

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)
INTENT = Intent(
    "charge",
    1000,
    "usd",
    customer="cus_alice",
    reference="order-1001",
    params={"description": "t-shirt"},
    metadata={"cart": "c-7"},
)
# Reference-less: deduplicated by the sliding window over (customer, amount, currency).
LOOSE = Intent("charge", 1000, "usd", customer="cus_bob")


class MyDeclineError(Exception):
    """Declared definite: no money moved."""


class MyRefusedError(Exception):
    """Declared not executed: the call never left."""


class Recorder:
    """A guarded function that records every attempt it is called with."""

    def __init__(self, value: Any = None, *, raises: BaseException | None = None) -> None:
        self.value = {"charge": "ch_1", "amount": 1000} if value is None else value
        self.raises = raises
        self.attempts: list[Attempt] = []

    def __call__(self, attempt: Attempt) -> Any:
        self.attempts.append(attempt)
        if self.raises is not None:
            raise self.raises
        return self.value

    @property
    def calls(self) -> int:
        return len(self.attempts)


def ledger(store: Store) -> list[Entry]:
    return list(store.entries(after=0, limit=100_000))


def claim_elsewhere(
    store: Store, intent: Intent, *, now: datetime, lease: timedelta = LEASE
) -> Claimed:
    """Claim ``intent``'s key directly through the store, as another worker's guard would."""
    guard = Guard(store, secret=SECRET, scope=SCOPE)
    key = guard.key_for(intent)
    new = NewRecord(
        scope=SCOPE,
        key=key,
        fingerprint=fingerprint(intent),
        intent=canonical_json(intent.canonical()),
        provider_key=guard.keys.provider_key(SCOPE, key),
        operation=intent.operation,
        amount=intent.amount,
        currency=intent.currency,
    )
    claimed = store.claim(new, now=now, lease_for=lease)
    assert claimed.lease is not None
    return claimed


class FailingStore:
    """A real store whose named operations fail with StoreUnavailableError (R15)."""

    def __init__(self, inner: Store, *, fail: Sequence[str]) -> None:
        self.inner = inner
        self.fail = set(fail)

    def _check(self, operation: str) -> None:
        if operation in self.fail:
            raise StoreUnavailableError("injected outage", operation=operation)

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        self._check("claim")
        return self.inner.claim(new, now=now, lease_for=lease_for)

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        self._check("takeover")
        return self.inner.takeover(scope, key, token=token, now=now, lease_for=lease_for)

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        self._check("complete")
        return self.inner.complete(scope, key, token=token, status=status, outcome=outcome, now=now)

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        self._check("mark_unknown")
        return self.inner.mark_unknown(scope, key, token=token, reason=reason, now=now)

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        self._check("release")
        self.inner.release(scope, key, token=token, reason=reason, now=now)

    def get(self, scope: str, key: str) -> Record | None:
        return self.inner.get(scope, key)

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        return self.inner.replay_view(scope, key)

    def newest(self, scope: str, family: str) -> Record | None:
        return self.inner.newest(scope, family)

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        return self.inner.scan(now=now, limit=limit)

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        return self.inner.purge(now=now, retention=retention, limit=limit)

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        return self.inner.entries(after=after, limit=limit)

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        return self.inner.heads(after=after, limit=limit)

    def checkpoints(self) -> Sequence[Checkpoint]:
        return self.inner.checkpoints()

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.inner.append_checkpoint(checkpoint)

    def close(self) -> None:
        """The fixture closes the inner store."""


class HookClock(ManualClock):
    """A manual clock that runs ``on_sleep`` on its first sleep: another worker acting while we
    wait."""

    def __init__(self) -> None:
        super().__init__()
        self.on_sleep: Callable[[], None] | None = None
        self.sleeps = 0

    def sleep(self, duration: timedelta) -> None:
        super().sleep(duration)
        self.sleeps += 1
        if self.sleeps == 1 and self.on_sleep is not None:
            self.on_sleep()


# -- first call and replay ---------------------------------------------------------------------


def test_first_call_runs_fn_once_and_succeeds(guard: Guard, store: Store) -> None:
    fn = Recorder()
    outcome = guard.run(INTENT, fn)
    assert fn.calls == 1
    assert outcome.status is Status.SUCCEEDED
    assert outcome.value == {"charge": "ch_1", "amount": 1000}
    assert outcome.replayed is False
    assert outcome.attempt == 1
    assert fn.attempts[0].number == 1
    assert fn.attempts[0].provider_key == outcome.provider_key
    assert outcome.provider_key.startswith("po1_")
    assert outcome.body == '{"value":{"amount":1000,"charge":"ch_1"}}'
    record = store.get(SCOPE, outcome.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.outcome == outcome.body


def test_second_identical_call_replays(guard: Guard, store: Store) -> None:
    fn = Recorder()
    first = guard.run(INTENT, fn)
    entries = len(ledger(store))
    again = Intent.from_dict(INTENT.canonical())  # an equal intent, built anew
    second = guard.run(again, fn)
    assert fn.calls == 1
    assert second.replayed is True
    assert second.body == first.body
    assert second.value == first.value
    assert second.key == first.key
    assert second.provider_key == first.provider_key
    assert len(ledger(store)) == entries  # a replay never writes


_CHILD_SYNC = """
import json, sys
from pathlib import Path
from payonce import Guard, Intent, SQLiteStore

path, secret, scope, marker, intent = sys.argv[1:6]
def fn(attempt):
    Path(marker).write_text("called")
    return {"child": True}
store = SQLiteStore(path)
outcome = Guard(store, secret=bytes.fromhex(secret), scope=scope).run(
    Intent.from_dict(json.loads(intent)), fn
)
store.close()
print(json.dumps({"replayed": outcome.replayed, "value": outcome.value,
                  "body": outcome.body, "key": outcome.key}))
"""


def run_child(script: str, db: Path, marker: Path, intent: Intent) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(db),
            SECRET.hex(),
            SCOPE,
            str(marker),
            json.dumps(intent.canonical()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_replay_from_new_process_on_same_sqlite_file(tmp_path: Path, clock: ManualClock) -> None:
    db = tmp_path / "shared.db"
    store = SQLiteStore(db)
    try:
        first = Guard(store, secret=SECRET, scope=SCOPE, clock=clock).run(INTENT, Recorder())
    finally:
        store.close()
    marker = tmp_path / "child-called"
    child = run_child(_CHILD_SYNC, db, marker, INTENT)
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
    guard: Guard, store: Store, change: dict[str, Any], fields: tuple[str, ...]
) -> None:
    first = guard.run(INTENT, Recorder())
    before = store.get(SCOPE, first.key)
    entries = ledger(store)
    changed = Intent.from_dict({**INTENT.canonical(), **change})
    fn = Recorder()
    with pytest.raises(KeyReuseError) as caught:
        guard.run(changed, fn)
    assert caught.value.fields == fields
    assert caught.value.key == first.key
    assert fn.calls == 0
    assert store.get(SCOPE, first.key) == before
    assert ledger(store) == entries


# -- outcome classes ---------------------------------------------------------------------------


def test_unclassified_exception_is_unknown_and_sticks(guard: Guard, store: Store) -> None:
    fn = Recorder(raises=TimeoutError("read timed out"))
    with pytest.raises(OutcomeUnknownError) as caught:
        guard.run(INTENT, fn)
    message = str(caught.value)
    assert "same intent" in message
    assert "never with a new one" in message
    assert "TimeoutError" in caught.value.reason
    key = guard.key_for(INTENT)
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.status is Status.UNKNOWN
    entries = len(ledger(store))

    again = Recorder()
    with pytest.raises(OutcomeUnknownError):
        guard.run(INTENT, again)
    assert again.calls == 0
    assert store.get(SCOPE, key) == record
    assert len(ledger(store)) == entries


def test_resumable_retry_calls_again_with_same_provider_key(guard: Guard, store: Store) -> None:
    lost = Recorder(raises=ConnectionResetError("reset after send"))
    with pytest.raises(OutcomeUnknownError):
        guard.run(INTENT, lost)
    retry = Recorder()
    outcome = guard.run(INTENT, retry, resumable=True)
    assert retry.calls == 1
    assert retry.attempts[0].provider_key == lost.attempts[0].provider_key
    assert retry.attempts[0].number == 2
    assert outcome.replayed is False
    assert outcome.attempt == 2
    record = store.get(SCOPE, outcome.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.token == 2


def test_definite_exception_fails_and_replays(store: Store, clock: ManualClock) -> None:
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, definite=(MyDeclineError,))
    fn = Recorder(raises=MyDeclineError("card_declined"))
    with pytest.raises(GatewayRejectedError) as first:
        guard.run(INTENT, fn)
    assert first.value.replayed is False
    assert first.value.code == "MyDeclineError"
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.FAILED

    again = Recorder()
    with pytest.raises(GatewayRejectedError) as second:
        guard.run(INTENT, again)
    assert second.value.replayed is True
    assert second.value.code == "MyDeclineError"
    assert again.calls == 0


@pytest.mark.parametrize(
    "value",
    [{"id": "ch_1", "note": "half a pair \ud800"}, {"id": "ch_1", "at": object()}],
    ids=["lone-surrogate", "not-json"],
)
def test_a_definite_failure_whose_object_cannot_be_stored_keeps_its_code(
    guard: Guard, store: Store, value: Any
) -> None:
    # The failure is definite whatever the provider's object held: it is recorded with its
    # code alone, and the caller gets the typed failure, not an encoding error.
    fn = Recorder(GatewayAnswer(OutcomeClass.DEFINITE, code="card_declined", value=value))
    with pytest.raises(GatewayRejectedError) as caught:
        guard.run(INTENT, fn)
    assert caught.value.code == "card_declined"
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.FAILED
    assert json.loads(record.outcome or "") == {
        "error": {"code": "card_declined", "kind": "definite"}
    }
    with pytest.raises(GatewayRejectedError) as again:
        guard.run(INTENT, fn)
    assert again.value.replayed is True
    assert fn.calls == 1
    verify_ledger(store)


def test_not_executed_exception_releases_key(store: Store, clock: ManualClock) -> None:
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, not_executed=(MyRefusedError,))
    refused = Recorder(raises=MyRefusedError("connection refused"))
    with pytest.raises(GatewayUnavailableError) as caught:
        guard.run(INTENT, refused)
    assert caught.value.code == "MyRefusedError"
    key = guard.key_for(INTENT)
    assert store.get(SCOPE, key) is None

    fn = Recorder()
    outcome = guard.run(INTENT, fn)
    assert fn.calls == 1
    assert outcome.replayed is False
    assert outcome.key == key
    assert fn.attempts[0].provider_key == refused.attempts[0].provider_key
    assert [e.event.value for e in ledger(store)] == [
        "claimed",
        "released",
        "claimed",
        "succeeded",
    ]


# A lone surrogate passes json.dumps, but no store can write it and no entry can hash it.
UNRECORDABLE = pytest.mark.parametrize(
    ("value", "says"),
    [
        (object(), "JSON"),
        ({1.5}, "JSON"),
        (float("nan"), "JSON"),
        ({"id": "ch_1", "note": "half a pair \ud800"}, "not valid Unicode"),
    ],
    ids=["object", "set", "nan", "lone-surrogate"],
)


@UNRECORDABLE
def test_unserialisable_return_is_unknown(
    guard: Guard, store: Store, value: Any, says: str
) -> None:
    fn = Recorder(value)
    with pytest.raises(OutcomeUnknownError) as caught:
        guard.run(INTENT, fn)
    assert says in caught.value.reason
    assert fn.calls == 1
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.UNKNOWN
    verify_ledger(store)


@pytest.mark.parametrize("transition", ["mark_unknown", "release"])
def test_a_reason_any_store_can_hold(store: Store, transition: str) -> None:
    # Reasons often quote what a provider or an exception said: NUL (refused by PostgreSQL
    # text) and a lone surrogate (not UTF-8) are replaced, never a failed write.
    new = _new_record("reasons")
    lease = store.claim(new, now=T0, lease_for=timedelta(seconds=30)).lease
    assert lease is not None
    said = "the provider said \x00 and \ud800"
    if transition == "mark_unknown":
        record = store.mark_unknown(new.scope, new.key, token=lease.token, reason=said, now=T0)
        assert record.reason == "the provider said \ufffd and ?"
    else:
        store.release(new.scope, new.key, token=lease.token, reason=said, now=T0)
        assert store.get(new.scope, new.key) is None
    details = [e.detail for e in store.entries(after=0, limit=10)]
    assert "the provider said \ufffd and ?" in details[-1]
    verify_ledger(store)


def test_float_values_in_the_outcome_replay_exactly(guard: Guard) -> None:
    # Money in intents is integers; an outcome may still carry a provider's float.
    fn = Recorder({"id": "ch_1", "fee_rate": 0.029, "score": 1e-7})
    first = guard.run(INTENT, fn)
    again = guard.run(INTENT, fn)
    assert fn.calls == 1
    assert again.replayed
    assert again.value == first.value == {"id": "ch_1", "fee_rate": 0.029, "score": 1e-7}
    assert again.body == first.body


def test_interrupt_mid_call_marks_unknown(guard: Guard, store: Store) -> None:
    fn = Recorder(raises=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        guard.run(INTENT, fn)
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.UNKNOWN
    again = Recorder()
    with pytest.raises(OutcomeUnknownError):
        guard.run(INTENT, again)
    assert again.calls == 0


class InterruptedClock(ManualClock):
    """A manual clock whose sleeps are interrupted, as a worker stopped between two attempts."""

    def sleep(self, duration: timedelta) -> None:
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("raises", "left"),
    [(MyRefusedError("connection refused"), None), (TimeoutError("read timed out"), "UNKNOWN")],
    ids=["not-executed: released", "unknown: marked"],
)
def test_interrupt_between_attempts_records_what_the_last_attempt_left(
    store: Store, raises: Exception, left: str | None
) -> None:
    # Before, the interruption went through the retry's sleep and left the claim CLAIMED until
    # its lease ran out; a retry of a not-executed call then found it in flight.
    guard = Guard(
        store,
        secret=SECRET,
        scope=SCOPE,
        clock=InterruptedClock(),
        not_executed=(MyRefusedError,),
        resumable=True,
    )
    fn = Recorder(raises=raises)
    with pytest.raises(KeyboardInterrupt):
        guard.run(INTENT, fn, retry=RetryPolicy(max_attempts=3))
    assert fn.calls == 1
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert (record and record.status.value) == left
    events = [e.event.value for e in ledger(store)]
    assert events == ["claimed", "released" if left is None else "marked_unknown"]


# -- waiting and takeover ----------------------------------------------------------------------


def test_live_lease_elsewhere_waits_then_in_progress(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    start = clock.now()
    held = claim_elsewhere(store, INTENT, now=start)
    fn = Recorder()
    with pytest.raises(InProgressError) as caught:
        guard.run(INTENT, fn)
    assert fn.calls == 0
    assert caught.value.retry_after > timedelta(0)
    assert caught.value.key == held.record.key
    waited = clock.now() - start
    assert guard.wait <= waited < LEASE  # waited the full bound, never past the lease
    assert store.get(SCOPE, held.record.key) == held.record


def test_zero_wait_raises_in_progress_at_once(store: Store, clock: ManualClock) -> None:
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, wait=timedelta(0))
    start = clock.now()
    claim_elsewhere(store, INTENT, now=start)
    fn = Recorder()
    with pytest.raises(InProgressError) as caught:
        guard.run(INTENT, fn)
    assert clock.now() == start  # no sleep at all
    assert timedelta(0) < caught.value.retry_after <= LEASE
    assert fn.calls == 0


def test_lease_expiring_while_waiting_takes_over(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    start = clock.now()
    held = claim_elsewhere(store, INTENT, now=start, lease=timedelta(seconds=2))
    fn = Recorder()
    with pytest.raises(OutcomeUnknownError):  # not resumable: the holder may have called
        guard.run(INTENT, fn)
    assert fn.calls == 0
    assert timedelta(seconds=2) <= clock.now() - start < guard.wait
    record = store.get(SCOPE, held.record.key)
    assert record is not None
    assert record.status is Status.UNKNOWN


def test_holder_completes_while_waiting_replays(store: Store) -> None:
    clock = HookClock()
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock)
    held = claim_elsewhere(store, INTENT, now=clock.now())
    body = canonical_json({"value": {"charge": "ch_other"}})
    assert held.lease is not None
    token = held.lease.token
    clock.on_sleep = lambda: store.complete(
        SCOPE,
        held.record.key,
        token=token,
        status=Status.SUCCEEDED,
        outcome=body,
        now=clock.now(),
    )
    fn = Recorder()
    outcome = guard.run(INTENT, fn)
    assert clock.sleeps >= 1
    assert fn.calls == 0
    assert outcome.replayed is True
    assert outcome.value == {"charge": "ch_other"}
    assert outcome.body == body


def test_expired_lease_takeover_not_resumable_is_unknown(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    held = claim_elsewhere(store, INTENT, now=clock.now())
    clock.advance(LEASE + timedelta(seconds=1))
    fn = Recorder()
    with pytest.raises(OutcomeUnknownError):
        guard.run(INTENT, fn)
    assert fn.calls == 0
    record = store.get(SCOPE, held.record.key)
    assert record is not None
    assert record.status is Status.UNKNOWN
    assert record.token == 2
    assert [e.event.value for e in ledger(store)] == ["claimed", "taken_over", "marked_unknown"]


def test_expired_lease_takeover_resumable_calls_again(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    held = claim_elsewhere(store, INTENT, now=clock.now())
    clock.advance(LEASE + timedelta(seconds=1))
    fn = Recorder()
    outcome = guard.run(INTENT, fn, resumable=True)
    assert fn.calls == 1
    assert fn.attempts[0].number == 2
    assert fn.attempts[0].provider_key == held.record.provider_key
    assert outcome.attempt == 2
    record = store.get(SCOPE, held.record.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED


def test_zombie_complete_after_takeover_raises_lease_lost(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    taker = Recorder({"charge": "ch_taker"})

    def slow(attempt: Attempt) -> Any:
        # While A is still "in the call", its lease runs out and B takes the record over.
        clock.advance(LEASE + timedelta(seconds=1))
        guard.run(INTENT, taker, resumable=True)
        return {"charge": "ch_zombie"}

    with pytest.raises(LeaseLostError) as caught:
        guard.run(INTENT, slow)
    assert caught.value.token == 1
    assert taker.calls == 1
    assert taker.attempts[0].number == 2
    record = store.get(SCOPE, guard.key_for(INTENT))
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.token == 2
    assert json.loads(record.outcome or "") == {"value": {"charge": "ch_taker"}}
    assert [e.event.value for e in ledger(store)] == ["claimed", "taken_over", "succeeded"]


def test_zombie_store_complete_changes_nothing(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    held = claim_elsewhere(store, INTENT, now=clock.now())
    clock.advance(LEASE + timedelta(seconds=1))
    guard.run(INTENT, Recorder(), resumable=True)
    after = store.get(SCOPE, held.record.key)
    entries = ledger(store)
    with pytest.raises(LeaseLostError):
        store.complete(
            SCOPE,
            held.record.key,
            token=1,
            status=Status.SUCCEEDED,
            outcome=canonical_json({"value": "late"}),
            now=clock.now(),
        )
    assert store.get(SCOPE, held.record.key) == after
    assert ledger(store) == entries


# -- once --------------------------------------------------------------------------------------


def _order_intent(order: str, amount: int = 1000) -> Intent:
    return Intent("charge", amount, "usd", customer="cus_alice", reference=order)


def test_once_decorator_with_attempt(guard: Guard) -> None:
    seen: list[Attempt] = []

    @once(guard, intent=_order_intent)
    def charge(order: str, amount: int = 1000, *, attempt: Attempt) -> dict[str, Any]:
        seen.append(attempt)
        return {"charge": f"ch_{order}", "idempotency_key": attempt.provider_key}

    first = charge("order-1")
    second = charge("order-1")
    assert first == second
    assert len(seen) == 1
    assert first["idempotency_key"] == seen[0].provider_key
    assert charge.__name__ == "charge"
    with pytest.raises(KeyReuseError):
        charge("order-1", 2000)
    assert len(seen) == 1


def test_once_decorator_without_attempt(guard: Guard) -> None:
    calls: list[str] = []

    @once(guard, intent=_order_intent)
    def charge(order: str, amount: int = 1000) -> str:
        calls.append(order)
        return f"ch_{order}_{amount}"

    assert charge("order-2") == "ch_order-2_1000"
    assert charge("order-2") == "ch_order-2_1000"
    assert charge("order-3") == "ch_order-3_1000"
    assert calls == ["order-2", "order-3"]


def test_once_decorator_rejects_mismatched_guard(guard: Guard) -> None:
    with pytest.raises(ConfigurationError, match="AsyncGuard"):

        @once(guard, intent=_order_intent)
        async def charge(order: str) -> str:
            return order


# -- keys, scopes and the dedup window ---------------------------------------------------------


def test_key_for_matches_outcome_and_store(guard: Guard, store: Store) -> None:
    key = guard.key_for(INTENT)
    assert key.startswith("k1_")
    assert store.get(SCOPE, key) is None
    outcome = guard.run(INTENT, Recorder())
    assert outcome.key == key
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.provider_key == outcome.provider_key
    assert record.fingerprint == fingerprint(INTENT)


def test_scopes_are_isolated(guard: Guard, store: Store, clock: ManualClock) -> None:
    other = Guard(store, secret=SECRET, scope="tenant-b", clock=clock)
    fn_a = Recorder({"charge": "ch_a"})
    fn_b = Recorder({"charge": "ch_b"})
    in_a = guard.run(INTENT, fn_a)
    changed = Intent.from_dict({**INTENT.canonical(), "amount": 2500})
    in_b = other.run(changed, fn_b)  # same reference, other params: no reuse across scopes
    assert fn_a.calls == 1
    assert fn_b.calls == 1
    assert in_b.replayed is False
    assert in_b.value == {"charge": "ch_b"}
    assert in_a.key != in_b.key
    assert in_a.provider_key != in_b.provider_key
    assert store.get("tenant-b", in_a.key) is None
    assert store.get(SCOPE, in_b.key) is None
    assert guard.run(INTENT, Recorder()).value == {"charge": "ch_a"}


def test_reference_less_window(guard: Guard, store: Store, clock: ManualClock) -> None:
    fn = Recorder()
    first = guard.run(LOOSE, fn)
    clock.advance(timedelta(minutes=5))
    second = guard.run(LOOSE, fn)
    assert fn.calls == 1
    assert second.replayed is True
    assert second.key == first.key

    clock.advance(timedelta(minutes=6))  # 11 min after the newest record's creation
    third = guard.run(LOOSE, fn)
    assert fn.calls == 2
    assert third.replayed is False
    assert third.key != first.key
    assert third.provider_key != first.provider_key
    record = store.get(SCOPE, third.key)
    assert record is not None
    assert record.generation == 1


def test_reference_less_unknown_is_never_bypassed(
    guard: Guard, store: Store, clock: ManualClock
) -> None:
    with pytest.raises(OutcomeUnknownError) as caught:
        guard.run(LOOSE, Recorder(raises=TimeoutError()))
    key = caught.value.key
    clock.advance(timedelta(hours=5))
    fn = Recorder()
    with pytest.raises(OutcomeUnknownError) as again:
        guard.run(LOOSE, fn)
    assert fn.calls == 0
    assert again.value.key == key
    assert guard.key_for(LOOSE) == key
    record = store.get(SCOPE, key)
    assert record is not None
    assert record.status is Status.UNKNOWN


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
        Guard(store, **kwargs)


def test_guard_rejects_async_store(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="AsyncGuard"):
        Guard(ThreadedAsyncStore(store), secret=SECRET, scope=SCOPE)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Guard(object(), secret=SECRET, scope=SCOPE)  # type: ignore[arg-type]
    assert isinstance(AsyncGuard(store, secret=SECRET, scope=SCOPE), AsyncGuard)


# -- store failures (R15) ----------------------------------------------------------------------


def test_store_failure_at_claim_calls_nothing(store: Store, clock: ManualClock) -> None:
    flaky = FailingStore(store, fail=["claim"])
    guard = Guard(flaky, secret=SECRET, scope=SCOPE, clock=clock)
    fn = Recorder()
    with pytest.raises(StoreUnavailableError) as caught:
        guard.run(INTENT, fn)
    assert caught.value.operation == "claim"
    assert fn.calls == 0
    assert ledger(store) == []


def test_store_failure_at_complete_is_unknown_then_resolves(
    store: Store, clock: ManualClock
) -> None:
    flaky = FailingStore(store, fail=["complete"])
    guard = Guard(flaky, secret=SECRET, scope=SCOPE, clock=clock)
    charged = Recorder({"charge": "ch_1"})
    with pytest.raises(OutcomeUnknownError) as caught:
        guard.run(INTENT, charged)
    assert charged.calls == 1
    assert isinstance(caught.value.__cause__, StoreUnavailableError)
    record = store.get(SCOPE, caught.value.key)
    assert record is not None
    assert record.status is Status.CLAIMED  # not "failed": the charge may exist

    flaky.fail.clear()
    early = Recorder()
    with pytest.raises(InProgressError):  # its lease is still live: wait, never a second call
        guard.run(INTENT, early, resumable=True)
    assert early.calls == 0

    clock.advance(LEASE)
    retry = Recorder({"charge": "ch_1"})
    outcome = guard.run(INTENT, retry, resumable=True)
    assert retry.calls == 1
    assert retry.attempts[0].provider_key == charged.attempts[0].provider_key
    assert retry.attempts[0].number == 2
    assert outcome.value == {"charge": "ch_1"}
    assert guard.run(INTENT, Recorder()).replayed is True


def test_store_failure_at_release_is_unknown(store: Store, clock: ManualClock) -> None:
    flaky = FailingStore(store, fail=["release"])
    guard = Guard(flaky, secret=SECRET, scope=SCOPE, clock=clock, not_executed=(MyRefusedError,))
    with pytest.raises(OutcomeUnknownError) as caught:
        guard.run(INTENT, Recorder(raises=MyRefusedError()))
    record = store.get(SCOPE, caught.value.key)
    assert record is not None
    assert record.status is Status.CLAIMED  # never "free" unless the release was recorded


class _SleepLog(ManualClock):
    """A manual clock that keeps every sleep the guard asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[timedelta] = []

    def sleep(self, duration: timedelta) -> None:
        self.sleeps.append(duration)
        super().sleep(duration)


def test_a_seeded_jitter_makes_the_retries_reproducible(tmp_path: Path) -> None:
    def retries(seed: int, path: Path) -> list[timedelta]:
        clock = _SleepLog()
        store = SQLiteStore(path)
        try:
            guard = Guard(
                store,
                secret=SECRET,
                scope=SCOPE,
                clock=clock,
                not_executed=(MyRefusedError,),
                jitter=random.Random(seed),
            )
            refused = Recorder(raises=MyRefusedError("connection refused"))
            policy = RetryPolicy(max_attempts=4, deadline=timedelta(minutes=1))
            with pytest.raises(GatewayUnavailableError):
                guard.run(INTENT, refused, retry=policy)
            assert refused.calls == 4
        finally:
            store.close()
        return clock.sleeps

    first = retries(7, tmp_path / "a.db")
    assert len(first) == 3
    assert retries(7, tmp_path / "b.db") == first
    assert retries(8, tmp_path / "c.db") != first


def test_jitter_without_a_random_method_is_refused(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="random"):
        Guard(store, secret=SECRET, scope=SCOPE, jitter=7)  # type: ignore[arg-type]

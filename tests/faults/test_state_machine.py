"""The guard as a state machine (SCENARIOS R22): random runs, faults, time, purges and zombies.

Hypothesis drives two guards (two workers) over one store and one ManualClock, against a fake
provider that can succeed, decline, be unreachable, time out before or after acting, or be
interrupted mid-call; a worker can also "crash" at a guard fault point. After every step the
history checker asserts I1-I5 and that no record changed without a ledger entry; each run also
checks the guard's answer against a small model of what the store held before it. At the end of
every example a resolution step resumes every unresolved record and the checker runs strictly.

A crash is simulated by a fault hook raising a private BaseException. The guard calls its fault
hooks outside the call's exception handling, so the exception leaves the record exactly as a
dead process would: CLAIMED at ``after_claim`` and ``before_complete``, SUCCEEDED (but never
replied) at ``after_complete``. A BaseException raised inside the call is different: the guard
marks the record UNKNOWN before re-raising (an interrupt, not a crash).

Settings: 200 examples x 30 steps with CI set, 50 x 30 otherwise. Hypothesis prints the failing
steps and how to reproduce them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from payonce import (
    Attempt,
    GatewayRejectedError,
    GatewayUnavailableError,
    Guard,
    InProgressError,
    Intent,
    KeyReuseError,
    LeaseLostError,
    MemoryStore,
    Outcome,
    OutcomeUnknownError,
    Record,
    SQLiteStore,
    Status,
    Store,
)
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.faults.history import Ack, check_history, current_generation

_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
SETTINGS = settings(
    max_examples=200 if _CI else 50,
    stateful_step_count=30,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

LEASE = timedelta(seconds=60)
WAIT = timedelta(seconds=5)
RETENTION = timedelta(hours=1)
REFERENCES = ("order-0", "order-1", "order-2", "order-3")
AMOUNTS = (1000, 2500)
MODES = ("succeed", "decline", "unreachable", "timeout_before", "timeout_after", "interrupt")
CRASHES = (None, None, None, "after_claim", "before_complete", "after_complete")


class DeclinedError(Exception):
    """The provider declined: definite, no money moved."""


class UnreachableError(Exception):
    """The request never left: provably not executed."""


class ProviderTimeoutError(Exception):
    """The answer was lost: the provider may or may not have acted (undeclared: unknown)."""


class Interrupted(BaseException):
    """An interrupt inside the call (like KeyboardInterrupt); the guard marks UNKNOWN."""


class Crash(BaseException):
    """A simulated process death at a guard fault point: nothing after it runs."""


class Faults:
    """The fault hook both guards share; the machine arms it for one run at a time."""

    def __init__(self) -> None:
        self.point: str | None = None

    def __call__(self, point: str) -> None:
        if point == self.point:
            raise Crash(point)


class Provider:
    """A fake provider that deduplicates on the provider key within a record generation.

    Like Stripe, a key it has answered replays that answer (a success, or a decline) and moves
    nothing. A purge ends a generation, as the provider's own key window would have ended first
    in a deployment whose retention is longer than that window.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.movements: list[dict[str, Any]] = []
        self.answers: dict[tuple[str, int], dict[str, str] | None] = {}  # None: declined
        self.calls: list[Attempt] = []
        self.returned: dict[str, str] | None = None
        self.raised: BaseException | None = None

    def fn(self, mode: str) -> Callable[[Attempt], dict[str, str]]:
        def call(attempt: Attempt) -> dict[str, str]:
            self.calls.append(attempt)
            try:
                self.returned = self._answer(attempt, mode)
            except BaseException as exc:
                self.raised = exc
                raise
            return self.returned

        return call

    def _answer(self, attempt: Attempt, mode: str) -> dict[str, str]:
        if mode == "unreachable":
            raise UnreachableError
        if mode == "timeout_before":
            raise ProviderTimeoutError
        slot = (attempt.provider_key, current_generation(self.store, SCOPE, attempt.key))
        if slot not in self.answers:
            if mode == "decline":
                self.answers[slot] = None
            else:
                value = {"id": f"ch_{len(self.movements) + 1}"}
                self.answers[slot] = value
                self.movements.append(
                    {
                        "provider_key": attempt.provider_key,
                        "attempt": attempt.number,
                        "generation": slot[1],
                        "key": attempt.key,
                        "value": value,
                    }
                )
        answer = self.answers[slot]
        if answer is None:
            raise DeclinedError
        if mode == "timeout_after":
            raise ProviderTimeoutError
        if mode == "interrupt":
            raise Interrupted
        return answer


@dataclass(frozen=True)
class Zombie:
    """A worker that stopped after its call returned and before recording it; it may wake."""

    key: str
    token: int
    body: str


def _body(value: Any) -> str:
    return json.dumps({"value": value}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _predict(pre: Record | None, intent: Intent, now: Any, resumable: bool) -> str:
    """What the guard must do, from what the store held before the run (DESIGN §5)."""
    if pre is None:
        return "execute"
    if json.loads(pre.intent) != intent.canonical():
        return "reuse"
    if pre.status is Status.SUCCEEDED:
        return "replay"
    if pre.status is Status.FAILED:
        return "replay_failed"
    if pre.status is Status.UNKNOWN:
        return "execute" if resumable else "unknown"
    assert pre.lease_expires_at is not None
    if pre.lease_expires_at > now + WAIT:
        return "busy"  # the guard waits WAIT on the manual clock, then gives up
    return "execute" if resumable else "mark_unknown"


def machine_for(backend: str) -> type[RuleBasedStateMachine]:
    """A state machine class over a fresh store of ``backend`` per example."""

    class GuardMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store: Store = MemoryStore() if backend == "memory" else SQLiteStore(":memory:")
            self.clock = ManualClock()
            self.faults = Faults()
            self.guards = [
                Guard(
                    self.store,
                    secret=SECRET,
                    scope=SCOPE,
                    clock=self.clock,
                    lease=LEASE,
                    wait=WAIT,
                    definite=(DeclinedError,),
                    not_executed=(UnreachableError,),
                    faults=self.faults,
                )
                for _worker in range(2)
            ]
            self.provider = Provider(self.store)
            self.acknowledged: list[Outcome | Ack] = []
            self.zombies: list[Zombie] = []
            self.snapshot: dict[str, Record] = {}

        def _records(self) -> dict[str, Record]:
            keys = {self.guards[0].key_for(Intent.from_dict(_intent(r))) for r in REFERENCES}
            found = {k: self.store.get(SCOPE, k) for k in keys}
            return {k: r for k, r in found.items() if r is not None}

        def _run(
            self, intent: Intent, *, worker: int, resumable: bool, mode: str, crash: str | None
        ) -> None:
            guard = self.guards[worker]
            key = guard.key_for(intent)
            pre = self.store.get(SCOPE, key)
            expected = _predict(pre, intent, self.clock.now(), resumable)
            calls = len(self.provider.calls)
            self.provider.returned = self.provider.raised = None
            self.faults.point = crash
            result: Outcome | BaseException
            try:
                result = guard.run(intent, self.provider.fn(mode), resumable=resumable)
            except (Exception, Interrupted, Crash) as exc:
                result = exc
            finally:
                self.faults.point = None
            called = len(self.provider.calls) - calls
            post = self.store.get(SCOPE, key)
            if isinstance(result, Outcome):
                self.acknowledged.append(result)

            if expected != "execute":
                assert called == 0, (expected, result)
                self._check_not_executed(expected, result, pre, post)
                return
            if crash == "after_claim":
                assert called == 0
                assert isinstance(result, Crash)
                assert post is not None
                assert post.status is Status.CLAIMED
                return
            assert called == 1, (expected, result)
            self._check_executed(result, crash, post)

        def _check_not_executed(
            self,
            expected: str,
            result: Outcome | BaseException,
            pre: Record | None,
            post: Record | None,
        ) -> None:
            assert pre is not None
            if expected == "replay":
                assert isinstance(result, Outcome)
                assert result.replayed
                assert result.body == pre.outcome
            elif expected == "replay_failed":
                assert isinstance(result, GatewayRejectedError)
                assert result.replayed
            elif expected == "reuse":
                assert isinstance(result, KeyReuseError)
            elif expected == "busy":
                assert isinstance(result, InProgressError)
            else:
                assert isinstance(result, OutcomeUnknownError)
            if expected == "mark_unknown":
                assert post is not None
                assert (post.status, post.attempt) == (Status.UNKNOWN, pre.attempt + 1)
            else:
                assert post == pre  # nothing was written

        def _check_executed(
            self, result: Outcome | BaseException, crash: str | None, post: Record | None
        ) -> None:
            raised, returned = self.provider.raised, self.provider.returned
            attempt = self.provider.calls[-1]
            if returned is not None:
                if crash == "before_complete":
                    assert isinstance(result, Crash)
                    assert post is not None
                    assert post.status is Status.CLAIMED
                    self.zombies.append(Zombie(attempt.key, attempt.token, _body(returned)))
                    return
                assert post is not None
                assert post.status is Status.SUCCEEDED
                assert post.outcome == _body(returned)
                if crash == "after_complete":
                    assert isinstance(result, Crash)  # recorded, never replied
                else:
                    assert isinstance(result, Outcome)
                    assert (result.value, result.replayed) == (returned, False)
                return
            if isinstance(raised, DeclinedError):
                assert isinstance(result, GatewayRejectedError)
                assert post is not None
                assert post.status is Status.FAILED
            elif isinstance(raised, UnreachableError) and attempt.number == 1:
                assert isinstance(result, GatewayUnavailableError)
                assert post is None  # released: the key is free
            elif isinstance(raised, UnreachableError):
                # This attempt never left, but an earlier one's outcome is unknown (it timed out,
                # or its worker died): releasing would let a later plain call move money again.
                assert post is not None, "a record with an unknown earlier attempt was released"
                assert post.status is Status.UNKNOWN
                assert isinstance(result, OutcomeUnknownError)
            else:
                assert isinstance(raised, ProviderTimeoutError | Interrupted)
                assert result is raised or isinstance(result, OutcomeUnknownError)
                assert post is not None
                assert post.status is Status.UNKNOWN

        @rule(
            reference=st.sampled_from(REFERENCES),
            amount=st.sampled_from(AMOUNTS),
            worker=st.integers(0, 1),
            resumable=st.booleans(),
            mode=st.sampled_from(MODES),
            crash=st.sampled_from(CRASHES),
        )
        def run(
            self,
            *,
            reference: str,
            amount: int,
            worker: int,
            resumable: bool,
            mode: str,
            crash: str | None,
        ) -> None:
            intent = Intent.from_dict(_intent(reference, amount))
            self._run(intent, worker=worker, resumable=resumable, mode=mode, crash=crash)

        @precondition(
            lambda self: any(
                r.status in (Status.CLAIMED, Status.UNKNOWN) for r in self._records().values()
            )
        )
        @rule(
            data=st.data(),
            resumable=st.booleans(),
            mode=st.sampled_from(MODES),
            crash=st.sampled_from(CRASHES),
        )
        def takeover_by_another_worker(
            self, data: st.DataObject, resumable: bool, mode: str, crash: str | None
        ) -> None:
            unresolved = [
                r for r in self._records().values() if r.status in (Status.CLAIMED, Status.UNKNOWN)
            ]
            record = data.draw(st.sampled_from(sorted(unresolved, key=lambda r: r.key)))
            if record.status is Status.CLAIMED and record.lease_expires_at is not None:
                self.clock.advance(max(record.lease_expires_at - self.clock.now(), timedelta(0)))
            intent = Intent.from_dict(record.intent_fields())
            self._run(intent, worker=1, resumable=resumable, mode=mode, crash=crash)

        @rule(
            seconds=st.one_of(st.sampled_from([0, 1, 59, 60, 61, 3601, 7200]), st.integers(0, 7200))
        )
        def advance_clock(self, seconds: int) -> None:
            self.clock.advance(timedelta(seconds=seconds))

        @rule()
        def purge(self) -> None:
            before = self._records()
            now = self.clock.now()
            purged = self.store.purge(now=now, retention=RETENTION, limit=100)
            after = self._records()
            gone = set(before) - set(after)
            assert len(gone) == purged
            for key, record in before.items():
                due = record.status.terminal and record.updated_at <= now - RETENTION
                assert (key in gone) == due, (record.status, record.updated_at, now)

        @precondition(lambda self: bool(self.zombies))
        @rule(data=st.data())
        def zombie_wakes_and_records(self, data: st.DataObject) -> None:
            zombie = self.zombies.pop(data.draw(st.integers(0, len(self.zombies) - 1)))
            pre = self.store.get(SCOPE, zombie.key)
            try:
                done = self.store.complete(
                    SCOPE,
                    zombie.key,
                    token=zombie.token,
                    status=Status.SUCCEEDED,
                    outcome=zombie.body,
                    now=self.clock.now(),
                )
            except LeaseLostError:
                # Fencing: the record moved on (taken over, resolved, purged); nothing changed.
                assert pre is None or pre.token != zombie.token or pre.status is not Status.CLAIMED
                assert self.store.get(SCOPE, zombie.key) == pre
            else:
                assert pre is not None
                assert (pre.status, pre.token) == (Status.CLAIMED, zombie.token)
                assert (done.status, done.outcome) == (Status.SUCCEEDED, zombie.body)
                self.acknowledged.append(Ack(zombie.key, zombie.body))

        @invariant()
        def history_holds(self) -> None:
            check_history(self.store, self.provider.movements, self.acknowledged, unresolved=True)

        @invariant()
        def records_change_only_with_an_entry(self) -> None:
            records = self._records()
            for key, record in records.items():
                before = self.snapshot.get(key)
                if before is not None and before.ledger_head == record.ledger_head:
                    assert before == record, "a record changed without a ledger entry"
            self.snapshot = records

        def teardown(self) -> None:
            try:
                # The resolution step: past every lease, resume each unresolved record against
                # the deduplicating provider; afterwards nothing may stay CLAIMED or UNKNOWN.
                self.clock.advance(LEASE + WAIT)
                for record in self._records().values():
                    if record.status in (Status.CLAIMED, Status.UNKNOWN):
                        intent = Intent.from_dict(record.intent_fields())
                        outcome = self.guards[0].run(
                            intent, self.provider.fn("succeed"), resumable=True
                        )
                        self.acknowledged.append(outcome)
                check_history(self.store, self.provider.movements, self.acknowledged)
            finally:
                self.store.close()

    GuardMachine.__name__ = GuardMachine.__qualname__ = f"GuardMachine_{backend}"
    return GuardMachine


def _intent(reference: str, amount: int = AMOUNTS[0]) -> dict[str, Any]:
    return {
        "operation": "charge",
        "amount": amount,
        "currency": "usd",
        "customer": "cus_machine",
        "reference": reference,
    }


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_r22_state_machine(backend: str) -> None:
    run_state_machine_as_test(machine_for(backend), settings=SETTINGS)

"""The guard's control flow (L3), written once.

The flow is a set of generators that yield effects (a store call, a gateway call, a sleep, the
guarded call) and receive their results or have their exceptions thrown in; every decision
inside it comes from the pure ``decide``/``settle`` functions. ``Guard`` and ``AsyncGuard``
(``payonce._guard``) are thin twin drivers that perform the effects, blocking or awaited, so the
two cannot drift apart (DESIGN §10).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from payonce._bodies import success_body
from payonce._decide import (
    Complete,
    MarkUnknown,
    Reject,
    Release,
    Replay,
    Retry,
    TakeOver,
    Unresolved,
    Wait,
    settle,
)
from payonce._errors import (
    GatewayUnavailableError,
    KeyReuseError,
    LeaseLostError,
    OutcomeUnknownError,
    PayonceError,
    StoreError,
)
from payonce._guard_core import (
    _FIRST_POLL,
    _MAX_POLL,
    _TAKEOVER_REASON,
    _Classified,
    _GuardCore,
    _log,
    _Mode,
    _Prepared,
)
from payonce._model import (
    Attempt,
    Claimed,
    GatewayAnswer,
    Lease,
    Outcome,
    OutcomeClass,
    Record,
    ReplayView,
    Status,
)
from payonce._protocols import lookup_options

__all__: list[str] = []


@dataclass(slots=True)
class _Op:
    """Effect: call ``<target>.<name>(*args, **kwargs)`` on the guard's store or gateway; the
    driver sends back the result."""

    target: str  # "store" or "gateway"
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None = None


def _StoreOp(name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> _Op:  # noqa: N802 - reads as the effect it builds
    return _Op("store", name, args, kwargs)


@dataclass(slots=True)
class _Sleep:
    """Effect: wait ``duration`` on the guard's clock."""

    duration: timedelta


@dataclass(slots=True)
class _Call:
    """Effect: call the guarded function with ``attempt``; the driver sends back its value."""

    attempt: Attempt


class _NotCalled(BaseException):
    """Thrown into the flow in place of the guarded call's result when the caller was cancelled
    before the call started (``AsyncGuard``): this attempt provably sent nothing."""


_Effect: TypeAlias = _Op | _Sleep | _Call
# A flow yields effects, receives their results or has their exceptions thrown in, and returns
# the outcome; the drivers in Guard and AsyncGuard perform the effects.
_Flow: TypeAlias = Generator[_Effect, Any, Any]


class _Flows(_GuardCore):
    """The guard's control flow over effects (DESIGN §5, §6, §10)."""

    def _key_flow(self, prepared: _Prepared, now: datetime) -> _Flow:
        """(key, generation, the record at that key if this flow just read it). A reference-less
        intent reads its family's newest record to pick its key: when the window picks that
        record's key, the record is already in hand."""
        if prepared.key is not None:
            return prepared.key, 0, None
        newest = yield _StoreOp("newest", (self.scope, prepared.family))
        key, generation = self._window_key(prepared, newest, now)
        return key, generation, newest if newest is not None and newest.key == key else None

    def _replay_first(
        self, prepared: _Prepared, view: ReplayView | None
    ) -> tuple[Outcome | None, tuple[Record | None] | None]:
        """The replay path, answered from the first read before any of the flow runs.

        Returns the outcome when ``view`` is a finished run of this very intent; otherwise what
        the flow may take as already read: ``(None,)`` for an absent key, or None (the flow
        reads the whole record, as it must for a live lease or a reuse).
        """
        if view is None:
            return None, (None,)
        if view.status.terminal and view.fingerprint == prepared.fingerprint:
            return self._outcome(view, replayed=True), None
        return None, None

    def _run_flow(
        self, prepared: _Prepared, mode: _Mode, first_read: tuple[Record | None] | None
    ) -> _Flow:
        """``first_read``: ``(record or None,)`` when the driver already read ``prepared.key``."""
        self._fault("before_claim")
        waited, poll = timedelta(0), _FIRST_POLL
        while True:
            now = self.clock.now()
            key, generation, known = yield from self._key_flow(prepared, now)
            existing = None
            if first_read is not None:
                (existing,), first_read = first_read, None
            elif prepared.key is None:
                # A reference-less intent read its key's record with the family's newest; a
                # new generation's key is claimed at once (a racer's record comes back from the
                # claim). A keyed intent's first read ran in the driver.
                existing = known
            elif self._read_before_claim:
                existing = yield _StoreOp("get", (self.scope, key))
            if existing is None:
                new = self._new_record(prepared, key, generation)
                claimed = yield _StoreOp("claim", (new,), {"now": now, "lease_for": self.lease})
            else:
                claimed = Claimed(existing, None)
            if claimed.lease is not None:
                return (
                    yield from self._execute_flow(prepared, claimed.record, claimed.lease, mode)
                )
            action = self._decide(claimed.record, prepared, now, mode)
            if isinstance(action, Replay):
                return self._outcome(action.record, replayed=True)
            if isinstance(action, Reject):
                raise KeyReuseError(key=key, fields=action.fields)
            if isinstance(action, Unresolved):
                raise OutcomeUnknownError(key=key, reason=action.reason)
            if isinstance(action, Wait):
                # Bounded by the time actually slept, not by a deadline on the clock: a clock
                # that jumps back must not stretch the wait.
                if waited >= self.wait:
                    raise self._in_progress(key, action.until, now)
                step = max(min(poll, action.until - now, self.wait - waited), timedelta(0))
                yield _Sleep(step)
                waited, poll = waited + step, min(poll * 2, _MAX_POLL)
                continue
            assert isinstance(action, TakeOver)
            try:
                taken = yield _StoreOp(
                    "takeover",
                    (self.scope, key),
                    {"token": action.token, "now": now, "lease_for": self.lease},
                )
            except LeaseLostError:
                continue  # released or purged meanwhile: claim afresh
            if taken.lease is None:
                continue  # another caller took it over first: look again
            if action.resend:
                return (yield from self._execute_flow(prepared, taken.record, taken.lease, mode))
            if mode.gateway:
                return (yield from self._look_up_flow(prepared, taken.record, taken.lease))
            yield from self._mark_unknown_flow(taken.record, taken.lease, _TAKEOVER_REASON)
            raise OutcomeUnknownError(key=key, reason=_TAKEOVER_REASON)

    def _execute_flow(
        self, prepared: _Prepared, record: Record, lease: Lease, mode: _Mode
    ) -> _Flow:
        self._fault("after_claim")
        started, calls = self.clock.now(), 0
        # Whether an earlier call of this lease may have reached the provider: then a later
        # "not sent" says nothing about it, and the claim must never be released.
        maybe_sent = record.attempt > 1
        while True:
            calls += 1
            error: Exception | None = None
            value: Any = None
            try:
                value = yield _Call(self._attempt(record, lease))
            except Exception as exc:  # noqa: BLE001 - every exception of the call is classified
                error = exc
            except _NotCalled:
                yield from self._not_called_flow(record, lease, maybe_sent=maybe_sent)
                raise
            except BaseException:
                # Interrupted or cancelled mid-call: the call may have happened.
                yield from self._mark_unknown_flow(
                    record, lease, "interrupted while the call was running"
                )
                raise
            result = self._classified(value, error)
            maybe_sent = maybe_sent or result.kind in (OutcomeClass.UNKNOWN, OutcomeClass.IN_FLIGHT)
            if result.kind is OutcomeClass.SUCCESS:
                return (yield from self._succeed_flow(record, lease, result.value))
            now = self.clock.now()
            # Retries stay inside the lease: a holder never calls after another may take over.
            attempts_left = (
                mode.retry.allows(calls, now - started)
                and now + mode.retry.max_delay < lease.expires_at
            )
            settled = functools.partial(
                settle,
                result.kind,
                resumable=self._resumable(record, now, mode),
                retry_after=result.retry_after,
                earlier_attempts=maybe_sent,
            )
            step = settled(attempts_left=attempts_left)
            if isinstance(step, Retry):
                try:
                    yield _Sleep(mode.retry.delay(calls, step.delay, self._rng))
                except BaseException:
                    # Interrupted between attempts (cancelled): record what the last attempt
                    # left, as if the retries had run out, then let the interruption through.
                    last = settled(attempts_left=False)
                    assert not isinstance(last, Retry)
                    # The error the caller would have got gives way to the interruption; a write
                    # that failed was logged on its way.
                    with contextlib.suppress(PayonceError):
                        yield from self._settle_flow(record, lease, result, last)
                    raise
                continue
            return (yield from self._settle_flow(record, lease, result, step))

    def _not_called_flow(self, record: Record, lease: Lease, *, maybe_sent: bool) -> _Flow:
        """The caller was cancelled after the claim and before the call: nothing was sent by
        this attempt, so the claim is released, unless an earlier attempt may have reached the
        provider (then the record says UNKNOWN, as it would after that attempt)."""
        if maybe_sent:
            yield from self._mark_unknown_flow(
                record,
                lease,
                "cancelled before the call was sent again; an earlier attempt may have moved money",
            )
            return
        try:
            yield self._release(record, lease, "cancelled")
        except StoreError as exc:
            # The claim stays; after its lease it resolves as unknown, never as "free".
            _log_store_failure("release", record.key, exc)

    def _succeed_flow(self, record: Record, lease: Lease, value: Any) -> _Flow:
        try:
            body = success_body(value)
        except (TypeError, ValueError) as exc:
            reason = self._unserialisable(value, exc)
            yield from self._mark_unknown_flow(record, lease, reason)
            raise OutcomeUnknownError(key=record.key, reason=reason) from exc
        self._fault("before_complete")
        try:
            done = yield self._complete(record, lease, Status.SUCCEEDED, body)
        except StoreError as exc:
            raise OutcomeUnknownError(
                key=record.key,
                reason="the call returned but recording its outcome failed; retrying the same "
                "intent later resolves it",
            ) from exc
        self._fault("after_complete")
        return self._outcome(done, replayed=False)

    def _look_up_flow(self, prepared: _Prepared, record: Record, lease: Lease) -> _Flow:
        """Ask the provider what became of a call that may not be resent: adopt what it made,
        or leave the record UNKNOWN for the Reconciler."""
        try:
            options = lookup_options(record, takes_since=self._lookup_since)
            found = yield _Op("gateway", "lookup", (prepared.intent, record.provider_key), options)
        except Exception as exc:  # noqa: BLE001 - a failed lookup settles nothing
            found = GatewayAnswer(OutcomeClass.UNKNOWN, code=type(exc).__name__)
        except BaseException:
            # Interrupted (cancelled) mid-lookup: the record says what is known, not CLAIMED.
            yield from self._mark_unknown_flow(
                record, lease, "interrupted while asking the provider what became of the call"
            )
            raise
        if found is None:
            reason = "the provider has no object for this key yet; the Reconciler decides"
        elif found.kind is OutcomeClass.SUCCESS:
            return (yield from self._succeed_flow(record, lease, found.value))
        elif found.kind is OutcomeClass.DEFINITE:
            result = self._classified(found, None)
            return (yield from self._settle_flow(record, lease, result, Complete(Status.FAILED)))
        else:
            reason = f"the provider could not say what became of the call ({found.code})"
        yield from self._mark_unknown_flow(record, lease, reason)
        raise OutcomeUnknownError(key=record.key, reason=reason)

    def _release(self, record: Record, lease: Lease, reason: str | None) -> _Op:
        return _StoreOp(
            "release",
            (self.scope, record.key),
            {"token": lease.token, "reason": reason, "now": self.clock.now()},
        )

    def _complete(self, record: Record, lease: Lease, status: Status, body: str) -> _Op:
        return _StoreOp(
            "complete",
            (self.scope, record.key),
            {"token": lease.token, "status": status, "outcome": body, "now": self.clock.now()},
        )

    def _settle_flow(
        self,
        record: Record,
        lease: Lease,
        result: _Classified,
        step: Complete | Release | MarkUnknown | Retry,
    ) -> _Flow:
        if isinstance(step, Complete):
            try:
                yield self._complete(record, lease, step.status, self._failure_body(result))
            except StoreError as store_exc:
                # The failure itself is definite; the record stays CLAIMED and resolves later.
                _log_store_failure("complete", record.key, store_exc)
            raise self._failure(record.key, result) from result.cause
        if isinstance(step, Release):
            try:
                yield self._release(record, lease, result.code)
            except StoreError as release_exc:
                # The claim stays; after its lease it resolves as unknown, never as "free".
                _log_store_failure("release", record.key, release_exc)
                raise OutcomeUnknownError(
                    key=record.key,
                    reason="the call was not executed but releasing its claim failed; retry "
                    "the same intent later",
                ) from release_exc
            raise GatewayUnavailableError(
                key=record.key, code=result.code, retry_after=result.retry_after
            ) from result.cause
        reason = self._unknown_reason(result, record)
        yield from self._mark_unknown_flow(record, lease, reason)
        raise OutcomeUnknownError(key=record.key, reason=reason) from result.cause

    def _mark_unknown_flow(self, record: Record, lease: Lease, reason: str) -> _Flow:
        # Best effort: if the store is down the record stays CLAIMED and becomes due for the
        # Reconciler when its lease expires, which is the same state of knowledge.
        try:
            yield _StoreOp(
                "mark_unknown",
                (self.scope, record.key),
                {"token": lease.token, "reason": reason, "now": self.clock.now()},
            )
        except StoreError as exc:
            _log_store_failure("mark_unknown", record.key, exc)


def _log_store_failure(operation: str, key: str, exc: StoreError) -> None:
    # Only the key digest and the error type: never intent fields or secrets (I8).
    _log.warning(
        "payonce could not %s key %s (%s); the record resolves after its lease",
        operation,
        key,
        type(exc).__name__,
    )

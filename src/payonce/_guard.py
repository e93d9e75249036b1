"""The guard (L3): key → claim or replay → execute → record.

The control flow is written once, as generators that yield effects (a store call, a sleep, the
guarded call) and receive their results; every decision inside it comes from the pure
``decide``/``settle`` functions. ``Guard`` and ``AsyncGuard`` are thin twin drivers that perform
the effects, blocking or awaited, so the two cannot drift apart (DESIGN §10).
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias

from payonce._bodies import failure_body, is_declined, success_body
from payonce._clock import SystemClock
from payonce._decide import (
    Action,
    Complete,
    MarkUnknown,
    Reject,
    Release,
    Replay,
    Retry,
    TakeOver,
    Unresolved,
    Wait,
    decide,
    settle,
)
from payonce._errors import (
    ConfigurationError,
    ConflictError,
    GatewayRejectedError,
    GatewayUnavailableError,
    InProgressError,
    IntentError,
    KeyReuseError,
    LeaseLostError,
    OutcomeUnknownError,
    PaymentDeclinedError,
    PayonceError,
    StoreError,
)
from payonce._intent import Intent
from payonce._keys import Keys, canonical_json, fingerprint_of
from payonce._model import (
    Attempt,
    Claimed,
    GatewayResult,
    Lease,
    NewRecord,
    Outcome,
    OutcomeClass,
    Record,
    ReplayView,
    Status,
)
from payonce._protocols import AsyncGateway, AsyncStore, Clock, Gateway, Store
from payonce._retry import RetryPolicy

__all__ = ["AsyncGuard", "Guard"]

_log = logging.getLogger("payonce.guard")

_SCOPE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
_FIRST_POLL: Final = timedelta(milliseconds=5)
_MAX_POLL: Final = timedelta(milliseconds=100)
_MAX_RETRY_HINT: Final = timedelta(seconds=1)

Faults = Callable[[str], None]
ExceptionTypes = tuple[type[BaseException], ...]


# The guard's private, short-lived values are plain slotted dataclasses: nothing mutates them,
# and a frozen dataclass's __init__ costs several times more on every replay.
@dataclass(slots=True)
class _Prepared:
    """An intent with everything derived from it before any I/O."""

    intent: Intent
    canonical: dict[str, Any]
    intent_json: str
    fingerprint: str
    key: str | None  # None for reference-less intents: the dedup window picks it
    family: str | None


@dataclass(slots=True)
class _Mode:
    """How one run treats its call: ``run`` (a plain function) or ``execute`` (the gateway)."""

    resumable: bool  # run: the caller's word; execute: decided per record (see _resumable)
    retry: RetryPolicy
    gateway: bool  # results are GatewayResults; resend inside the window; look up otherwise


@dataclass(slots=True)
class _Classified:
    """One call's result reduced to what recording it needs."""

    kind: OutcomeClass
    value: Any = None
    code: str | None = None
    retry_after: timedelta | None = None
    declined: bool = False
    cause: BaseException | None = None


class _GuardCore:
    """Configuration and the pure parts shared by both twins."""

    def __init__(
        self,
        store: Store | AsyncStore,
        *,
        secret: bytes,
        scope: str,
        secret_version: int = 1,
        clock: Clock | None = None,
        lease: timedelta = timedelta(seconds=60),
        wait: timedelta = timedelta(seconds=5),
        window: timedelta = timedelta(minutes=10),
        resumable: bool = False,
        definite: ExceptionTypes = (),
        not_executed: ExceptionTypes = (),
        gateway: Gateway | AsyncGateway | None = None,
        retry: RetryPolicy | None = None,
        faults: Faults | None = None,
    ) -> None:
        self._adopt_store(store)
        # A store whose point read is much cheaper than a claim (SQLite: no write lock) asks
        # the guard to read first, so a replay never builds or writes a claim; a store that
        # answers a claim with the existing record in one round trip (PostgreSQL) does not.
        self._read_before_claim = bool(getattr(store, "read_before_claim", False))
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise ConfigurationError(
                "scope must be 1-128 characters: letters, digits and . _ : / @ - (e.g. "
                "'tenant-a' or 'tenant-a/agent-7'), starting with a letter or digit"
            )
        for name, value in (("lease", lease), ("window", window)):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ConfigurationError(f"{name} must be a positive timedelta")
        if not isinstance(wait, timedelta) or wait < timedelta(0):
            raise ConfigurationError("wait must be a timedelta of zero or more")
        for name, types in (("definite", definite), ("not_executed", not_executed)):
            if not isinstance(types, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in types
            ):
                raise ConfigurationError(
                    f"{name} must be a tuple of exception classes, e.g. {name}=(MyError,)"
                )
        self.keys = Keys(secret, version=secret_version)
        self.scope = scope
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.lease = lease
        self.wait = wait
        self.window = window
        self.resumable = resumable
        self.definite = definite
        self.not_executed = not_executed
        if gateway is not None and not callable(getattr(gateway, "execute", None)):
            raise ConfigurationError(
                f"gateway must implement execute() and lookup(); got {type(gateway).__name__}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a payonce.RetryPolicy")
        self.gateway = gateway
        self.retry = retry if retry is not None else RetryPolicy()
        self._rng = random.Random()  # noqa: S311 - jitter spreads retries, it is not a secret
        self._faults = faults

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r}, keys={self.keys!r})"

    def _adopt_store(self, store: Store | AsyncStore) -> None:
        """Check and keep the store; each twin accepts its own kind."""
        raise NotImplementedError

    def _require_gateway(self) -> Any:
        if self.gateway is None:
            raise ConfigurationError(
                "execute() needs a gateway: Guard(store, ..., gateway=StripeGateway(client)); "
                "use run(intent, fn) to guard a function of your own"
            )
        return self.gateway

    def _refund_keys(self, original: Record, sequence: int) -> list[str]:
        """The keys of the compensations of ``original`` numbered below ``sequence``."""
        keys = []
        for earlier in range(sequence):
            probe = Intent(
                "refund",
                1,
                original.currency,
                target="ch_probe",
                reference=_compensation_reference(original.key),
                sequence=earlier,
            )
            key = self.keys.material(self.scope, probe).key
            assert key is not None
            keys.append(key)
        return keys

    def _refund_intent(
        self,
        original: Record | None,
        earlier: list[Record | None],
        *,
        key: str,
        amount: int | None,
        reason: str,
        sequence: int,
    ) -> Intent:
        """The refund that compensates ``original``: its own key (reference and sequence), linked
        to the original by metadata, and never more than what is left of the captured amount."""
        if original is None or original.status is not Status.SUCCEEDED:
            state = "absent" if original is None else original.status.value
            raise ConflictError(
                f"only a SUCCEEDED payment can be compensated; key {key} is {state}. If it is "
                "UNKNOWN, let the Reconciler resolve it first.",
                key=key,
            )
        if original.operation not in ("charge", "capture"):
            raise IntentError(
                f"a {original.operation} cannot be compensated by a refund; only charges and "
                "captures can",
                field="key",
            )
        value = json.loads(original.outcome or "{}").get("value") or {}
        target = value.get("id") if isinstance(value, dict) else None
        if not isinstance(target, str):
            raise IntentError(
                "the recorded outcome has no provider object id to refund; compensate payments "
                "made through guard.execute",
                field="key",
            )
        captured = value.get("amount", original.amount)
        refunded = sum(r.amount for r in earlier if r is not None and r.status is Status.SUCCEEDED)
        left = captured - refunded
        wanted = left if amount is None else amount
        if wanted > left or wanted <= 0:
            raise IntentError(
                f"amount: a refund of {wanted} would exceed what is left of the payment "
                f"({left} of {captured} minor units after earlier refunds); refund at most {left}",
                field="amount",
            )
        return Intent(
            "refund",
            wanted,
            original.currency,
            target=target,
            reference=_compensation_reference(original.key),
            sequence=sequence,
            metadata={"payonce_original": original.key, "payonce_reason": reason},
        )

    def _fault(self, point: str) -> None:
        if self._faults is not None:
            self._faults(point)

    def _prepare(self, intent: Intent) -> _Prepared:
        if not isinstance(intent, Intent):
            raise IntentError(
                f"intent must be a payonce.Intent; got {type(intent).__name__}. Build one with "
                "Intent(operation, amount, currency, ...) or Intent.from_dict(...).",
                field="intent",
            )
        canonical = intent.canonical()
        intent_json = canonical_json(canonical)
        material = self.keys.material(self.scope, intent)
        return _Prepared(
            intent=intent,
            canonical=canonical,
            intent_json=intent_json,
            fingerprint=fingerprint_of(intent_json),
            key=material.key,
            family=material.family,
        )

    def _window_key(
        self, prepared: _Prepared, newest: Record | None, now: datetime
    ) -> tuple[str, int]:
        """The key of a reference-less intent: the newest generation of its family while that is
        unresolved or younger than the window, else the next generation (a sliding window from
        the newest record's creation; no fixed buckets, so a retry never straddles one)."""
        assert prepared.family is not None
        if newest is not None and (
            not newest.status.terminal or now - newest.created_at < self.window
        ):
            return newest.key, newest.generation
        generation = 0 if newest is None else newest.generation + 1
        return self.keys.window_key(prepared.family, generation), generation

    def _new_record(self, prepared: _Prepared, key: str, generation: int) -> NewRecord:
        intent = prepared.intent
        return NewRecord(
            scope=self.scope,
            key=key,
            fingerprint=prepared.fingerprint,
            intent=prepared.intent_json,
            provider_key=self.keys.provider_key(self.scope, key),
            operation=intent.operation,
            amount=intent.amount,
            currency=intent.currency,
            family=prepared.family,
            generation=generation,
        )

    def _decide(self, record: Record, prepared: _Prepared, now: datetime, mode: _Mode) -> Action:
        recorded: dict[str, Any] | None = None
        if record.fingerprint != prepared.fingerprint:
            recorded = record.intent_fields()
        return decide(
            record,
            prepared.fingerprint,
            now,
            resumable=self._resumable(record, now, mode),
            recorded_intent=recorded,
            intent=prepared.canonical,
            can_look_up=mode.gateway,
        )

    def _resumable(self, record: Record, now: datetime, mode: _Mode) -> bool:
        """Whether calling again with the record's provider key is safe now: the caller said so
        (``run``), or the provider deduplicates on it and its window has not passed."""
        if not mode.gateway:
            return mode.resumable
        window = getattr(self.gateway, "idempotency_window", None)
        return window is not None and now - record.created_at < window

    def _classified(self, value: Any, exc: Exception | None) -> _Classified:
        if exc is not None:
            return _Classified(self._classify(exc), code=type(exc).__name__, cause=exc)
        if isinstance(value, GatewayResult):
            return _Classified(
                value.kind,
                value=value.value,
                code=value.code,
                retry_after=value.retry_after,
                declined=is_declined(value),
            )
        return _Classified(OutcomeClass.SUCCESS, value=value)

    def _classify(self, exc: BaseException) -> OutcomeClass:
        # Anything undeclared is unknown: payonce never assumes an exception means "not charged".
        if self.definite and isinstance(exc, self.definite):
            return OutcomeClass.DEFINITE
        if self.not_executed and isinstance(exc, self.not_executed):
            return OutcomeClass.NOT_EXECUTED
        return OutcomeClass.UNKNOWN

    @staticmethod
    def _attempt(record: Record, lease: Lease) -> Attempt:
        return Attempt(
            key=record.key,
            provider_key=record.provider_key,
            number=record.attempt,
            token=lease.token,
        )

    @staticmethod
    def _outcome(record: Record | ReplayView, *, replayed: bool) -> Outcome:
        """The outcome of a SUCCEEDED record; raises the recorded error of a FAILED one."""
        assert record.outcome is not None
        body = json.loads(record.outcome)
        if record.status is Status.FAILED:
            error = body.get("error", {})
            code = error.get("code")
            if error.get("kind") == "declined":
                raise PaymentDeclinedError(key=record.key, code=code, replayed=replayed)
            raise GatewayRejectedError(key=record.key, code=code, replayed=replayed)
        return Outcome(
            key=record.key,
            status=record.status,
            value=body["value"],
            replayed=replayed,
            attempt=record.attempt,
            provider_key=record.provider_key,
            body=record.outcome,
        )

    @staticmethod
    def _failure_body(result: _Classified) -> str:
        return failure_body(result.code, declined=result.declined, value=result.value)

    def _failure(self, key: str, result: _Classified) -> PayonceError:
        if result.declined:
            return PaymentDeclinedError(key=key, code=result.code)
        return GatewayRejectedError(key=key, code=result.code)

    def _in_progress(self, key: str, until: datetime, now: datetime) -> InProgressError:
        remaining = max(until - now, timedelta(0))
        return InProgressError(key=key, retry_after=min(remaining, _MAX_RETRY_HINT))

    @staticmethod
    def _unknown_reason(result: _Classified, record: Record) -> str:
        if result.kind is OutcomeClass.NOT_EXECUTED:
            return (
                f"{result.code}: attempt {record.attempt} was not sent, but an earlier attempt "
                "may have moved money"
            )
        if result.kind is OutcomeClass.IN_FLIGHT:
            return f"{result.code}: the provider was still processing the call"
        return f"{result.code}: the answer was lost; the call may have moved money"

    @staticmethod
    def _unserialisable(value: Any) -> str:
        return (
            f"the function returned a {type(value).__name__}, which is not JSON-serialisable, so "
            "its outcome could not be recorded although the call ran; return plain JSON values"
        )


def _compensation_reference(key: str) -> str:
    return f"compensate:{key}"


_TAKEOVER_REASON: Final = (
    "a previous attempt's lease expired while it was running; it may have called the gateway, "
    "and this call is not declared resumable"
)


@dataclass(slots=True)
class _StoreOp:
    """Effect: call ``store.<name>(*args, **kwargs)``; the driver sends back the result."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None = None


@dataclass(slots=True)
class _GatewayOp:
    """Effect: call ``gateway.<name>(*args, **kwargs)``; the driver sends back the result."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None = None


@dataclass(slots=True)
class _Sleep:
    """Effect: wait ``duration`` on the guard's clock."""

    duration: timedelta


@dataclass(slots=True)
class _Call:
    """Effect: call the guarded function with ``attempt``; the driver sends back its value."""

    attempt: Attempt


_Effect: TypeAlias = _StoreOp | _GatewayOp | _Sleep | _Call
# A flow yields effects, receives their results or has their exceptions thrown in, and returns
# the outcome; the drivers in Guard and AsyncGuard perform the effects.
_Flow: TypeAlias = Generator[_Effect, Any, Any]


class _Flows(_GuardCore):
    """The guard's control flow over effects (DESIGN §5, §6, §10)."""

    def _key_flow(self, prepared: _Prepared, now: datetime) -> _Flow:
        if prepared.key is not None:
            return prepared.key, 0
        newest = yield _StoreOp("newest", (self.scope, prepared.family))
        return self._window_key(prepared, newest, now)

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
            key, generation = yield from self._key_flow(prepared, now)
            existing = None
            if first_read is not None:
                (existing,), first_read = first_read, None
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
        while True:
            calls += 1
            error: Exception | None = None
            value: Any = None
            try:
                value = yield _Call(self._attempt(record, lease))
            except Exception as exc:  # noqa: BLE001 - every exception of the call is classified
                error = exc
            except BaseException:
                # Interrupted or cancelled mid-call: the call may have happened.
                yield from self._mark_unknown_flow(
                    record, lease, "interrupted while the call was running"
                )
                raise
            result = self._classified(value, error)
            if result.kind is OutcomeClass.SUCCESS:
                return (yield from self._succeed_flow(record, lease, result.value))
            now = self.clock.now()
            # Retries stay inside the lease: a holder never calls after another may take over.
            attempts_left = (
                mode.retry.allows(calls, now - started)
                and now + mode.retry.max_delay < lease.expires_at
            )
            step = settle(
                result.kind,
                attempts_left=attempts_left,
                resumable=self._resumable(record, now, mode),
                retry_after=result.retry_after,
                earlier_attempts=record.attempt > 1,
            )
            if isinstance(step, Retry):
                yield _Sleep(mode.retry.delay(calls, step.delay, self._rng))
                continue
            return (yield from self._settle_flow(record, lease, result, step))

    def _succeed_flow(self, record: Record, lease: Lease, value: Any) -> _Flow:
        try:
            body = success_body(value)
        except (TypeError, ValueError) as exc:
            reason = self._unserialisable(value)
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
            found = yield _GatewayOp(
                "lookup", (prepared.intent, record.provider_key), {"key": record.key}
            )
        except Exception as exc:  # noqa: BLE001 - a failed lookup settles nothing
            found = GatewayResult(OutcomeClass.UNKNOWN, code=type(exc).__name__)
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

    def _complete(self, record: Record, lease: Lease, status: Status, body: str) -> _StoreOp:
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
                yield _StoreOp(
                    "release",
                    (self.scope, record.key),
                    {"token": lease.token, "reason": result.code, "now": self.clock.now()},
                )
            except StoreError as release_exc:
                # The claim stays; after its lease it resolves as unknown, never as "free".
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


class Guard(_Flows):
    """Runs a money-moving function at most once per intent, and replays its outcome.

    Args:
        store: where records and the ledger live (``SQLiteStore("payonce.db")``).
        secret: at least 32 random bytes; keys are HMACs under it. Keep it secret and stable.
        scope: the namespace keys are unique in: a tenant, optionally with an agent.
        secret_version: the secret's version (1, 2, … on rotation); prefixes keys.
        clock: the time source; the system clock by default (tests inject a manual one).
        lease: how long a claim is exclusive before another caller may take it over.
        wait: how long a duplicate caller waits for an in-flight first call before
            ``InProgressError``.
        window: for intents without a reference: how long an identical intent counts as a
            retry of the newest one.
        resumable: whether calling again with the same provider key after a lost answer is
            safe (the provider deduplicates on it). False for plain functions.
        definite: exception types that mean "failed, no money moved" (recorded FAILED).
        not_executed: exception types that mean "provably never sent" (the claim is released).
        faults: a fault injector called at each named fault point (tests only).

    Raises:
        ConfigurationError: for a bad store, secret, scope or option.
    """

    store: Store

    def _adopt_store(self, store: Store | AsyncStore) -> None:
        if not isinstance(store, Store) or inspect.iscoroutinefunction(
            getattr(store, "claim", None)
        ):
            raise ConfigurationError(
                f"Guard needs a sync Store such as SQLiteStore; got {type(store).__name__}. Use "
                "AsyncGuard for an AsyncStore."
            )
        self.store = store

    def key_for(self, intent: Intent) -> str:
        """The record key this intent maps to now (reads the store for reference-less intents).

        Raises:
            IntentError: if ``intent`` is not an Intent.
        """
        key: str = self._drive(self._key_flow(self._prepare(intent), self.clock.now()), None)[0]
        return key

    def run(
        self,
        intent: Intent,
        fn: Callable[[Attempt], Any],
        *,
        resumable: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> Outcome:
        """Run ``fn`` at most once for ``intent`` and return its recorded outcome.

        ``fn(attempt)`` makes the money-moving call, sending ``attempt.provider_key`` as the
        provider's idempotency key, and returns a JSON-serialisable value. A retry of a finished
        intent returns the recorded value with ``replayed=True`` and does not call ``fn``.

        Raises:
            IntentError: ``intent`` is not an Intent (invalid values fail at construction).
            KeyReuseError: the key holds an intent with other parameters; nothing was called.
            InProgressError: the same intent is in flight elsewhere past the wait.
            OutcomeUnknownError: money may have moved; retry later with the same intent.
            GatewayRejectedError: the recorded, definite failure.
            GatewayUnavailableError: provably not executed; the key was released.
            LeaseLostError: another worker took this call over; it records the outcome.
            StoreUnavailableError: the store failed before anything was called.
        """
        if not callable(fn):
            raise ConfigurationError("fn must be callable: fn(attempt) -> JSON value")
        mode = _Mode(
            resumable=self.resumable if resumable is None else resumable,
            retry=retry or RetryPolicy.never(),
            gateway=False,
        )
        return self._guarded(self._prepare(intent), mode, fn)

    def execute(self, intent: Intent, *, retry: RetryPolicy | None = None) -> Outcome:
        """Make the movement ``intent`` describes through the guard's gateway, at most once.

        The provider key goes with every call; answers are retried per ``retry`` (the guard's
        policy by default) when their class allows it; a call whose answer was lost is resent
        with the same key only inside the provider's idempotency window and is otherwise looked
        up at the provider by its ``payonce_key``.

        Raises:
            ConfigurationError: the guard has no gateway.
            PaymentDeclinedError: the provider declined; replayed to every retry.
            GatewayRejectedError: the provider refused the request; replayed to every retry.
            GatewayUnavailableError: the provider did not act (rate limit, refused connection)
                and the retries ran out; the key was released.
            OutcomeUnknownError: money may have moved; retry later with the same intent.
            and the errors of ``run``.
        """
        gateway = self._require_gateway()
        prepared = self._prepare(intent)
        mode = _Mode(resumable=False, retry=retry or self.retry, gateway=True)
        return self._guarded(
            prepared,
            mode,
            lambda attempt: gateway.execute(intent, attempt.provider_key, key=attempt.key),
        )

    def compensate(
        self,
        key: str,
        *,
        amount: int | None = None,
        reason: str = "requested_by_customer",
        sequence: int = 0,
    ) -> Outcome:
        """Refund a SUCCEEDED payment of this scope, at most once per ``sequence``.

        The refund is an intent of its own (reference ``compensate:<key>``, the given
        ``sequence``), linked to the original by its ``payonce_original`` metadata, so calling
        this again, concurrently or after a crash, replays the same refund. A further, separate
        refund of the same payment takes the next ``sequence``.

        Args:
            key: the record key of the payment (``outcome.key``).
            amount: minor units to refund; by default what is left of the captured amount.
            reason: why, kept in the refund's metadata.
            sequence: 0 for the first refund of this payment, 1, 2, … for further ones.

        Raises:
            ConflictError: the payment is not SUCCEEDED (UNKNOWN: reconcile it first).
            IntentError: the amount exceeds what is left, or the payment cannot be refunded.
            and the errors of ``execute``.
        """
        self._require_gateway()
        original = self.store.get(self.scope, key)
        earlier = [] if original is None else self._refund_keys(original, sequence)
        intent = self._refund_intent(
            original,
            [self.store.get(self.scope, k) for k in earlier],
            key=key,
            amount=amount,
            reason=reason,
            sequence=sequence,
        )
        return self.execute(intent)

    def _guarded(self, prepared: _Prepared, mode: _Mode, fn: Callable[[Attempt], Any]) -> Outcome:
        first_read = None
        if self._read_before_claim and prepared.key is not None:
            view = self.store.replay_view(self.scope, prepared.key)
            replay, first_read = self._replay_first(prepared, view)
            if replay is not None:
                return replay
        outcome: Outcome = self._drive(self._run_flow(prepared, mode, first_read), fn)
        return outcome

    def _drive(self, flow: _Flow, fn: Callable[[Attempt], Any] | None) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                if isinstance(effect, _StoreOp):
                    result = getattr(self.store, effect.name)(*effect.args, **(effect.kwargs or {}))
                elif isinstance(effect, _Sleep):
                    self.clock.sleep(effect.duration)
                elif isinstance(effect, _GatewayOp):
                    method = getattr(self.gateway, effect.name)
                    result = method(*effect.args, **(effect.kwargs or {}))
                else:
                    assert fn is not None
                    result = fn(effect.attempt)
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                error = exc


class AsyncGuard(_Flows):
    """The async twin of ``Guard``: the same options (see ``Guard``), decisions and errors.

    ``store`` may be an ``AsyncStore`` or a sync ``Store`` (run in a worker thread).
    ``fn(attempt)`` may be a coroutine function or a plain function.

    Raises:
        ConfigurationError: for a bad store, secret, scope or option.
    """

    store: AsyncStore

    def _adopt_store(self, store: Store | AsyncStore) -> None:
        from payonce.stores._threaded import ThreadedAsyncStore  # noqa: PLC0415 - L4 adapter

        if inspect.iscoroutinefunction(getattr(store, "claim", None)):
            self.store = store  # type: ignore[assignment]
        elif isinstance(store, Store):
            self.store = ThreadedAsyncStore(store)
        else:
            raise ConfigurationError(
                f"AsyncGuard needs an AsyncStore or a Store; got {type(store).__name__}"
            )

    async def key_for(self, intent: Intent) -> str:
        """See ``Guard.key_for``."""
        flow = self._key_flow(self._prepare(intent), self.clock.now())
        key: str = (await self._drive(flow, None))[0]
        return key

    async def run(
        self,
        intent: Intent,
        fn: Callable[[Attempt], Any],
        *,
        resumable: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> Outcome:
        """See ``Guard.run``; ``fn`` may return an awaitable."""
        if not callable(fn):
            raise ConfigurationError("fn must be callable: fn(attempt) -> JSON value")
        mode = _Mode(
            resumable=self.resumable if resumable is None else resumable,
            retry=retry or RetryPolicy.never(),
            gateway=False,
        )
        return await self._guarded(self._prepare(intent), mode, fn)

    async def execute(self, intent: Intent, *, retry: RetryPolicy | None = None) -> Outcome:
        """See ``Guard.execute``."""
        gateway = self._require_gateway()
        prepared = self._prepare(intent)
        mode = _Mode(resumable=False, retry=retry or self.retry, gateway=True)
        return await self._guarded(
            prepared,
            mode,
            lambda attempt: gateway.execute(intent, attempt.provider_key, key=attempt.key),
        )

    async def compensate(
        self,
        key: str,
        *,
        amount: int | None = None,
        reason: str = "requested_by_customer",
        sequence: int = 0,
    ) -> Outcome:
        """See ``Guard.compensate``."""
        self._require_gateway()
        original = await self.store.get(self.scope, key)
        earlier = [] if original is None else self._refund_keys(original, sequence)
        intent = self._refund_intent(
            original,
            [await self.store.get(self.scope, k) for k in earlier],
            key=key,
            amount=amount,
            reason=reason,
            sequence=sequence,
        )
        return await self.execute(intent)

    async def _guarded(
        self, prepared: _Prepared, mode: _Mode, fn: Callable[[Attempt], Any]
    ) -> Outcome:
        first_read = None
        if self._read_before_claim and prepared.key is not None:
            view = await self.store.replay_view(self.scope, prepared.key)
            replay, first_read = self._replay_first(prepared, view)
            if replay is not None:
                return replay
        outcome: Outcome = await self._drive(self._run_flow(prepared, mode, first_read), fn)
        return outcome

    async def _drive(self, flow: _Flow, fn: Callable[[Attempt], Any] | None) -> Any:
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                effect = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                if isinstance(effect, _StoreOp):
                    method = getattr(self.store, effect.name)
                    result = await method(*effect.args, **(effect.kwargs or {}))
                elif isinstance(effect, _Sleep):
                    await self.clock.asleep(effect.duration)
                else:
                    if isinstance(effect, _GatewayOp):
                        method = getattr(self.gateway, effect.name)
                        result = method(*effect.args, **(effect.kwargs or {}))
                    else:
                        assert fn is not None
                        result = fn(effect.attempt)
                    if inspect.isawaitable(result):
                        result = await result
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                error = exc


def _log_store_failure(operation: str, key: str, exc: StoreError) -> None:
    # Only the key digest and the error type: never intent fields or secrets (I8).
    _log.warning(
        "payonce could not %s key %s (%s); the record resolves after its lease",
        operation,
        key,
        type(exc).__name__,
    )

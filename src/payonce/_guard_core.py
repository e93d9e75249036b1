"""The guard's configuration and pure parts (L3), shared by the flow and both twins.

Everything here decides or builds values; nothing does I/O.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from payonce._bodies import failure_body, is_declined, recorded_object
from payonce._clock import SystemClock
from payonce._decide import (
    Action,
    decide,
)
from payonce._errors import (
    ConfigurationError,
    ConflictError,
    GatewayRejectedError,
    InProgressError,
    IntentError,
    PaymentDeclinedError,
    PayonceError,
)
from payonce._intent import Intent
from payonce._keys import Keys, canonical_json, fingerprint_of
from payonce._model import (
    Attempt,
    GatewayAnswer,
    Lease,
    NewRecord,
    Outcome,
    OutcomeClass,
    Record,
    ReplayView,
    Status,
)
from payonce._protocols import (
    AsyncGateway,
    AsyncStore,
    Clock,
    Gateway,
    Store,
    lookup_takes_since,
    resend_fits_window,
)
from payonce._retry import RetryPolicy, Uniform
from payonce._transitions import ORIGINAL_METADATA, compensation_reference

__all__ = ["ExceptionTypes", "Faults"]

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
    gateway: bool  # results are GatewayAnswers; resend inside the window; look up otherwise


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

    store: Store | AsyncStore  # each twin narrows it to its own kind

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
        jitter: Uniform | None = None,
    ) -> None:
        self._adopt_store(store)
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
        self._lookup_since = gateway is not None and lookup_takes_since(gateway, _log)
        self.retry = retry if retry is not None else RetryPolicy()
        if jitter is not None and not callable(getattr(jitter, "random", None)):
            raise ConfigurationError(
                "jitter must have a random() method returning a float in [0, 1), e.g. "
                "random.Random(7) for reproducible retries in a simulation"
            )
        # Jitter spreads retries; it is not a secret. Seeded only when the caller asks.
        self._rng: Uniform = jitter if jitter is not None else random.Random()  # noqa: S311
        self._faults = faults

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r}, keys={self.keys!r})"

    @property
    def _read_before_claim(self) -> bool:
        """Whether this call reads the record before it claims (``Store.read_before_claim``).

        A store whose point read is much cheaper than a claim (SQLite: no write lock) asks the
        guard to read first, so a replay never builds or writes a claim; a shared store
        (PostgreSQL, Redis) may adapt that order to the workload, so it is asked per call."""
        return bool(getattr(self.store, "read_before_claim", False))

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

    def _compensation_keys(self, original: Record, sequence: int) -> list[str]:
        """The keys of the refunds of ``original`` numbered below ``sequence``."""
        keys = []
        for number in range(sequence):
            probe = Intent(
                "refund",
                1,
                original.currency,
                target="ch_probe",
                reference=compensation_reference(original.key),
                sequence=number,
            )
            key = self.keys.material(self.scope, probe).key
            assert key is not None
            keys.append(key)
        return keys

    def _compensation_intent(
        self,
        original: Record | None,
        earlier: list[Record | None],
        *,
        key: str,
        amount: int | None,
        reason: str,
        sequence: int,
    ) -> Intent:
        """The intent that undoes ``original``: a cancel of a hold never captured (the whole of
        it, once), else a refund of at most what is left of the captured amount. Its own key
        (reference and sequence), linked to the original by metadata."""
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
        value = recorded_object(original.outcome)
        target = value.get("id")
        if not isinstance(target, str):
            raise IntentError(
                "the recorded outcome has no provider object id to refund; compensate payments "
                "made through guard.execute",
                field="key",
            )
        link = {ORIGINAL_METADATA: original.key, "payonce_reason": reason}
        authorised = value.get("amount", original.amount)
        if original.operation == "charge" and _uncaptured(value):
            if sequence != 0:
                raise IntentError(
                    "sequence: a hold that was never captured is released once, as "
                    "compensation 0; call compensate without sequence",
                    field="sequence",
                )
            if amount is not None and amount != authorised:
                raise IntentError(
                    f"amount: the payment was authorised but never captured, so it is released "
                    f"whole ({authorised} minor units); omit amount, or capture less first",
                    field="amount",
                )
            return Intent(
                "cancel",
                authorised,
                original.currency,
                target=target,
                reference=compensation_reference(original.key),
                metadata=link,
            )
        done = [r for r in earlier if r is not None and r.status is Status.SUCCEEDED]
        refunded = sum(r.amount for r in done)
        left = authorised - refunded
        wanted = left if amount is None else amount
        if wanted > left or wanted <= 0:
            raise IntentError(
                f"amount: a refund of {wanted} would exceed what is left of the payment "
                f"({left} of {authorised} minor units after earlier refunds); refund at most "
                f"{left}",
                field="amount",
            )
        return Intent(
            "refund",
            wanted,
            original.currency,
            target=target,
            reference=compensation_reference(original.key),
            sequence=sequence,
            metadata=link,
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
        (``run``), or the provider deduplicates on it and the call, with every retry inside the
        lease, ends before its window does."""
        if not mode.gateway:
            return mode.resumable
        return resend_fits_window(self.gateway, record.created_at, now, self.lease)

    def _classified(self, value: Any, exc: Exception | None) -> _Classified:
        if exc is not None:
            return _Classified(self._classify(exc), code=type(exc).__name__, cause=exc)
        if isinstance(value, GatewayAnswer):
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
                f"{result.code}: this call was not sent, but an earlier call of the same key "
                "may have moved money"
            )
        if result.kind is OutcomeClass.IN_FLIGHT:
            return f"{result.code}: the provider was still processing the call"
        return f"{result.code}: the answer was lost; the call may have moved money"

    @staticmethod
    def _unserialisable(value: Any, exc: Exception) -> str:
        if isinstance(exc, UnicodeError):
            return (
                f"the function returned a {type(value).__name__} holding text that is not valid "
                "Unicode (a lone surrogate), so its outcome could not be recorded although the "
                "call ran; return valid text"
            )
        return (
            f"the function returned a {type(value).__name__}, which is not JSON-serialisable, so "
            "its outcome could not be recorded although the call ran; return plain JSON values"
        )


def _uncaptured(value: dict[str, Any]) -> bool:
    """Whether a recorded charge is a hold that was never captured: a charge with
    ``captured: false`` or a PaymentIntent in ``requires_capture`` (as the charge answered)."""
    return value.get("captured") is False or value.get("status") == "requires_capture"


_TAKEOVER_REASON: Final = (
    "a previous attempt's lease expired while it was running; it may have called the gateway, "
    "and this call is not declared resumable"
)

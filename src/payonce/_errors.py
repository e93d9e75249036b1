"""The one error tree of payonce (DESIGN §9).

::

    PayonceError
    ├── ConfigurationError        wiring mistakes, raised at construction
    │   └── StoreMissingError     a store opened with create=False does not exist
    ├── IntentError               bad input; nothing stored, key not consumed          HTTP 400
    │   └── KeyReuseError         same key, other fingerprint (says which fields)      HTTP 422
    ├── PolicyDeniedError                                                              HTTP 403
    ├── ConflictError                                                                  HTTP 409
    │   ├── InProgressError       live lease elsewhere; .retry_after
    │   └── LeaseLostError        our lease was taken over; we wrote nothing
    ├── StoreError                                                                     HTTP 503
    │   └── StoreUnavailableError
    │       └── StoreClosedError  the store object was closed; a new one is needed
    ├── GatewayError
    │   ├── PaymentDeclinedError
    │   ├── GatewayRejectedError
    │   └── GatewayUnavailableError
    ├── OutcomeUnknownError       money may have moved; same key later, never a new one HTTP 202/503
    └── LedgerError
        └── LedgerCorruptedError

Every error carries its structured fields as keyword attributes, a message that tells the caller
(often a language model) what to do next, and pickles cleanly: ``__reduce__`` rebuilds it from
those keyword attributes, so an error crossing a process boundary keeps them.

Messages never carry raw customer ids, client keys or secrets (I8): keys are HMAC digests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "GatewayError",
    "GatewayRejectedError",
    "GatewayUnavailableError",
    "InProgressError",
    "IntentError",
    "KeyReuseError",
    "LeaseLostError",
    "LedgerCorruptedError",
    "LedgerError",
    "OutcomeUnknownError",
    "PaymentDeclinedError",
    "PayonceError",
    "PolicyDeniedError",
    "StoreClosedError",
    "StoreError",
    "StoreMissingError",
    "StoreUnavailableError",
]


class PayonceError(Exception):
    """Base of every error payonce raises.

    Attributes:
        http_status: the status an HTTP service maps this error to.
    """

    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self._fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._fields))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description for services and agent tools."""
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        for name, value in self._fields.items():
            if isinstance(value, timedelta):
                out[name] = value.total_seconds()
            elif isinstance(value, str | int | float | bool | type(None)):
                out[name] = value
            elif isinstance(value, tuple | list):
                out[name] = [str(v) for v in value]
        return out


def _rebuild(cls: type[PayonceError], message: str, fields: dict[str, Any]) -> PayonceError:
    err = cls.__new__(cls)
    PayonceError.__init__(err, message, **fields)
    return err


class ConfigurationError(PayonceError):
    """payonce was wired wrongly (bad secret, bad option, missing extra); raised at construction."""


class StoreMissingError(ConfigurationError):
    """A store opened with ``create=False`` (``open_store(url, create=False)``, the read-only
    commands of the CLI) holds no payonce data: no such SQLite file, no payonce tables in the
    PostgreSQL database, nothing under the Redis prefix. Nothing was created."""


class IntentError(PayonceError, ValueError):
    """The intent is invalid. Nothing was stored, the key was not consumed, nothing was charged.

    Attributes:
        field: the name of the offending field.
    """

    http_status = 400

    def __init__(self, message: str, *, field: str, **fields: Any) -> None:
        super().__init__(message, field=field, **fields)


class KeyReuseError(IntentError):
    """The key was already used for an intent with other parameters.

    Attributes:
        key: the record key (an HMAC digest, never the raw reference).
        fields: the names of the fields that differ from the recorded intent.
    """

    http_status = 422

    def __init__(self, *, key: str, fields: tuple[str, ...]) -> None:
        names = ", ".join(fields) or "the intent"
        super().__init__(
            f"key {key} was already used for an intent with a different {names}. Nothing was "
            "charged now. To repeat the recorded payment, send exactly the recorded intent; for a "
            "new, separate payment give it a new reference or the next sequence number.",
            field=fields[0] if fields else "intent",
            key=key,
            fields=fields,
        )


class PolicyDeniedError(PayonceError):
    """A policy refused the intent; nothing was sent to the gateway."""

    http_status = 403


class ConflictError(PayonceError):
    """Another holder acts on the same key."""

    http_status = 409


class InProgressError(ConflictError):
    """The same intent is being executed elsewhere under a live lease.

    Attributes:
        key: the record key.
        retry_after: how long to wait before retrying with the same intent.
    """

    def __init__(self, *, key: str, retry_after: timedelta) -> None:
        seconds = max(retry_after.total_seconds(), 0.0)
        super().__init__(
            f"the same payment (key {key}) is already in progress elsewhere. Do not send a new "
            f"payment: retry this same intent in {seconds:.1f} s to get its outcome.",
            key=key,
            retry_after=retry_after,
        )


class LeaseLostError(ConflictError):
    """Our lease was taken over by another worker; this write changed nothing.

    Attributes:
        key: the record key.
        token: the fencing token this worker held.
    """

    def __init__(self, *, key: str, token: int) -> None:
        super().__init__(
            f"the lease on key {key} (token {token}) was taken over by another worker, so this "
            "worker wrote nothing. Retry the same intent to get the outcome the other worker "
            "records; do not send a new payment.",
            key=key,
            token=token,
        )


class StoreError(PayonceError):
    """The store failed in a way that is not a conflict."""

    http_status = 503


class StoreUnavailableError(StoreError):
    """The store could not be reached or did not answer in time; nothing was sent to the gateway
    unless the error says the outcome is unknown."""

    def __init__(self, message: str, *, operation: str, **fields: Any) -> None:
        # The store operation does not tell who ran it (a guarded call, a Reconciler pass, a
        # purge, a command): the next step names both kinds of caller.
        super().__init__(
            f"the payonce store failed during {operation}: {message}. Nothing was sent to the "
            "payment provider by this step; check that the store is reachable, then retry the "
            "same intent, or run the same operation again if this was not a payment call (both "
            "are safe to repeat).",
            operation=operation,
            **fields,
        )


class StoreClosedError(StoreUnavailableError):
    """The store object was closed (by its owner, or a shutdown) before this operation; it will
    answer nothing more. Nothing was sent to the gateway by this step.

    A subclass of ``StoreUnavailableError``, so code that handles an outage handles this too;
    unlike an outage it does not pass: ``Reconciler.run`` ends on it rather than wait.

    Attributes:
        store: what was closed, e.g. ``PostgresStore``.
    """

    def __init__(self, *, store: str, operation: str) -> None:
        StoreError.__init__(
            self,
            f"the payonce store failed during {operation}: this {store} was closed, and a closed "
            "store answers nothing more. Nothing was sent to the payment provider by this step. "
            "Open a new store (or send the request to an instance that is running), then retry "
            "the same intent, or run the same operation again if this was not a payment call "
            "(both are safe to repeat).",
            store=store,
            operation=operation,
        )


class GatewayError(PayonceError):
    """The gateway (or the wrapped function) answered with a definite error.

    Attributes:
        key: the record key.
        code: a short machine-readable code, if known.
        replayed: True when this failure was recorded earlier and is being replayed.
    """

    http_status = 502


class PaymentDeclinedError(GatewayError):
    """The payment was declined; the FAILED outcome is recorded and replayed to every retry."""

    http_status = 402

    def __init__(self, *, key: str, code: str | None, replayed: bool = False) -> None:
        super().__init__(
            f"the payment for key {key} was declined ({code or 'no decline code'}); no money "
            "moved. Retrying the same intent replays this decline. To try again, ask for another "
            "payment method and send a new intent (a new reference or the next sequence).",
            key=key,
            code=code,
            replayed=replayed,
        )


class GatewayRejectedError(GatewayError):
    """The call failed definitely (invalid request, or an exception declared definite); recorded
    as FAILED and replayed to every retry."""

    http_status = 422

    def __init__(self, *, key: str, code: str | None, replayed: bool = False) -> None:
        super().__init__(
            f"the call for key {key} failed definitely ({code or 'no code'}); no money moved. "
            "Retrying the same intent replays this failure. Fix the cause and send a new intent "
            "(a new reference or the next sequence).",
            key=key,
            code=code,
            replayed=replayed,
        )


class GatewayUnavailableError(GatewayError):
    """The call was provably not executed (refused connection, rate limit, declared not-executed);
    the claim was released, so the same intent may be retried.

    Attributes:
        retry_after: a hint for when to retry, if the provider gave one.
    """

    http_status = 503

    def __init__(self, *, key: str, code: str | None, retry_after: timedelta | None = None) -> None:
        hint = f" in {retry_after.total_seconds():.1f} s" if retry_after is not None else " later"
        super().__init__(
            f"the call for key {key} was not executed ({code or 'not executed'}); no money moved "
            f"and the key was released. Retry the same intent{hint}.",
            key=key,
            code=code,
            retry_after=retry_after,
            replayed=False,
        )


class OutcomeUnknownError(PayonceError):
    """The call may have moved money but its answer was lost. Never treat this as "not charged".

    Attributes:
        key: the record key.
        reason: why the outcome is unknown.
    """

    http_status = 202

    def __init__(self, *, key: str, reason: str) -> None:
        super().__init__(
            f"the outcome of the payment for key {key} is unknown ({reason}): money may have "
            "moved. Retry later with the same intent, never with a new one; payonce resolves it "
            "with the provider (Reconciler) and then replays the real outcome.",
            key=key,
            reason=reason,
        )


class LedgerError(PayonceError):
    """The ledger could not be read or written."""


class LedgerCorruptedError(LedgerError):
    """The ledger failed verification.

    Attributes:
        seq: the sequence number of the first bad entry (or checkpoint range end), if known.
        key: the record key of the first bad entry, if known.
        reason: what is wrong with it.
    """

    def __init__(self, *, seq: int | None, key: str | None, reason: str) -> None:
        where = f"entry {seq}" if seq is not None else "the ledger"
        if key is not None:
            where += f" (key {key})"
        super().__init__(
            f"ledger verification failed at {where}: {reason}. The ledger was edited outside "
            "payonce; stop writing to this store, keep a copy of it and investigate before any "
            "further payments.",
            seq=seq,
            key=key,
            reason=reason,
        )

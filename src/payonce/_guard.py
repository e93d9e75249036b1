"""The guard (L3): key → claim or replay → execute → record.

``Guard`` and ``AsyncGuard`` are the public twins: they adopt a store and drive the flow of
``payonce._flow``, blocking or awaited.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Final

from payonce._errors import (
    ConfigurationError,
)
from payonce._flow import _Call, _Flow, _Flows, _NotCalled, _Op, _Sleep
from payonce._guard_core import _Mode, _Prepared
from payonce._intent import Intent
from payonce._model import (
    Attempt,
    Outcome,
)
from payonce._protocols import AsyncStore, Store
from payonce._retry import RetryPolicy

__all__ = ["AsyncGuard", "Guard"]

_NO_RETRY = RetryPolicy.never()  # run()'s default: frozen, built once rather than per call
# The store calls that write. Once sent, a write may land whether or not its caller still waits,
# so AsyncGuard awaits each to its end even when the caller is cancelled meanwhile.
_WRITES: Final = frozenset({"claim", "takeover", "complete", "mark_unknown", "release"})
# How long the writes still take once their caller was cancelled (see _Cancellation).
_AFTER_CANCEL: Final = timedelta(seconds=10)


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
        jitter: the random source of retry jitter; pass ``random.Random(seed)`` to make the
            retries of a simulation reproducible. A private unseeded one by default.

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
            retry=retry or _NO_RETRY,
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
        """Undo a SUCCEEDED payment of this scope: refund it, or cancel a hold never captured.

        A charge recorded as authorised but not captured (a Charge with ``captured: false``, a
        PaymentIntent in ``requires_capture``) is cancelled (voided) whole instead of refunded:
        an intent ``cancel`` of its own key. Anything else is refunded, at most once per
        ``sequence``, never beyond what is left of the captured amount.

        The compensation is an intent of its own (reference ``compensate:<key>``, the given
        ``sequence``), linked to the original in its record (``payonce_original`` metadata,
        also sent to the provider) and in the ledger (``compensates`` in its entries' detail),
        so calling this again, concurrently or after a crash, replays the same refund or
        cancel. A further, separate refund of the same payment takes the next ``sequence``.

        The choice follows the recorded outcome. A hold captured since through a ``capture``
        intent is compensated through that capture's key: the cancel here would be refused by
        the provider (recorded FAILED, replayed).

        Args:
            key: the record key of the payment (``outcome.key``).
            amount: minor units to refund; by default what is left of the captured amount. A
                hold is released whole: omit it, or give the whole amount.
            reason: why, kept in the compensation's metadata.
            sequence: 0 for the first refund of this payment, 1, 2, … for further ones (a
                cancel is always 0).

        Raises:
            ConflictError: the payment is not SUCCEEDED (UNKNOWN: reconcile it first).
            IntentError: the amount exceeds what is left, or the payment cannot be compensated.
            and the errors of ``execute``.
        """
        self._require_gateway()
        original = self.store.get(self.scope, key)
        earlier = [] if original is None else self._compensation_keys(original, sequence)
        intent = self._compensation_intent(
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
                if isinstance(effect, _Op):
                    target = self.store if effect.target == "store" else self.gateway
                    result = getattr(target, effect.name)(*effect.args, **(effect.kwargs or {}))
                elif isinstance(effect, _Sleep):
                    self.clock.sleep(effect.duration)
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
            retry=retry or _NO_RETRY,
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
        earlier = [] if original is None else self._compensation_keys(original, sequence)
        intent = self._compensation_intent(
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
        cancelled = _Cancellation()
        while True:
            try:
                effect = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as stop:
                if cancelled.error is not None:
                    raise cancelled.error from None
                return stop.value
            except BaseException:
                if cancelled.error is not None:
                    raise cancelled.error from None
                raise
            result, error = None, None
            try:
                if cancelled.error is not None and not _writes(effect):
                    # Nobody waits any more: no sleep, no call and no lookup is started. The
                    # flow releases a claim whose call never started, else records UNKNOWN.
                    error = _NotCalled() if isinstance(effect, _Call) else cancelled.error
                    continue
                if isinstance(effect, _Sleep):
                    await self.clock.asleep(effect.duration)
                    continue
                if isinstance(effect, _Op):
                    target = self.store if effect.target == "store" else self.gateway
                    result = getattr(target, effect.name)(*effect.args, **(effect.kwargs or {}))
                    if _writes(effect):
                        result = await cancelled.finish(result)
                        continue
                else:
                    assert fn is not None
                    result = fn(effect.attempt)
                # The async store is awaited; a gateway or function may be sync or async.
                if inspect.isawaitable(result):
                    result = await result
            except BaseException as exc:  # noqa: BLE001 - handed to the flow, which decides
                if isinstance(exc, asyncio.CancelledError):
                    cancelled.hold(exc)  # the writes that follow get the same bounded time
                error = exc


def _writes(effect: object) -> bool:
    return isinstance(effect, _Op) and effect.target == "store" and effect.name in _WRITES


class _Cancellation:
    """The caller's cancellation, held while the flow writes what it must.

    A store write once sent may land whether or not its caller still waits. Cut off, a claim
    could hold a key that nobody releases, and a complete could leave a call that succeeded
    without its outcome (psycopg even cancels the statement on the server). So each write runs
    as a task of its own, and a cancellation of the caller is held here until the flow is done
    (the write, then a release or UNKNOWN), then raised. Every write after the cancellation
    shares one deadline, ``_AFTER_CANCEL`` after it: a write still running then (a lock nobody
    releases, a server that stopped answering) is cancelled, and its record resolves after the
    lease, as any write cut off does. A cancelled caller waits a bounded time.
    """

    __slots__ = ("deadline", "error")

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.deadline = 0.0

    def hold(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            self.deadline = asyncio.get_running_loop().time() + _AFTER_CANCEL.total_seconds()

    async def finish(self, write: Awaitable[Any]) -> Any:
        """The result of ``write``, awaited to its end or to the deadline of a cancellation."""
        task = asyncio.ensure_future(write)
        loop = asyncio.get_running_loop()
        while True:
            # Checked before every wait, not only after one: a cancel scope (anyio, Starlette)
            # cancels each wait in the very turn it starts, so no wait ever completes there.
            if task.done():
                return task.result()
            if self.error is not None and loop.time() >= self.deadline:
                task.add_done_callback(_retrieved)
                task.cancel()
                raise self.error
            try:
                if self.error is None:
                    return await asyncio.shield(task)
                # asyncio.wait, not asyncio.timeout: it neither cancels the write nor depends on
                # the task's count of cancellations (which asyncio.timeout reads differently
                # before Python 3.11.3).
                await asyncio.wait({task}, timeout=self.deadline - loop.time())
            except asyncio.CancelledError as exc:
                if task.cancelled():
                    raise  # the write itself was cancelled (its loop is closing), not its caller
                self.hold(exc)  # again, as a cancel scope repeats it: the deadline stands


def _retrieved(task: asyncio.Future[Any]) -> None:
    # An abandoned write's failure was handled (its record resolves after the lease): read, so
    # that it is not logged as never retrieved.
    if not task.cancelled():
        task.exception()

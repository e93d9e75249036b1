"""SimulatedGateway (L4): an in-process payment provider for tests and the demo. Stdlib only.

It keeps its own books of objects and money movements, deduplicates on the provider key like
Stripe (or not at all, to prove that payonce alone is safe), and injects faults deterministically
at the points of DESIGN §11. This module is the gateway: the call's steps, the idempotency layer
and the call log. What a fault is and how one is drawn lives in ``_simulated_faults``; the objects,
movements and ``provider_params`` (the one place an intent becomes provider parameters) in
``_simulated_books``. Their public names are re-exported here.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from payonce._clock import SystemClock
from payonce._errors import ConfigurationError
from payonce._intent import Intent
from payonce._keys import canonical_json
from payonce._model import GatewayAnswer, OutcomeClass
from payonce._protocols import Clock
from payonce.gateways._simulated_books import (
    VALUE_FIELDS,
    Books,
    Movement,
    ProviderObject,
    Submission,
    answer,
    method_decline,
    provider_params,
)
from payonce.gateways._simulated_faults import FAULTS, Fault, FaultDraw, next_fault

__all__ = [
    "FAULTS",
    "VALUE_FIELDS",
    "AsyncSimulatedGateway",
    "Call",
    "Fault",
    "Movement",
    "ProviderObject",
    "SimulatedGateway",
    "provider_params",
]


@dataclass(frozen=True, slots=True)
class Call:
    """One ``execute`` or ``lookup`` call, as the gateway saw and answered it.

    ``received`` is False when the call never reached the provider (``before_send``); ``fault``
    names the injected fault, if any; ``kind``/``code``/``replayed`` are what the caller got.
    """

    operation: str
    provider_key: str
    payonce_key: str
    fault: str | None
    received: bool
    kind: OutcomeClass | None
    code: str | None
    replayed: bool


@dataclass(slots=True)
class _Entry:
    params: str
    answer: GatewayAnswer | None  # None while the first call with the key is in flight
    created: datetime


@dataclass(frozen=True, slots=True)
class _Pending(Submission):
    """A call admitted by ``_begin``: to finish after ``delay`` on the gateway's sleep."""

    fault: Fault | None
    replay: GatewayAnswer | None
    delay: timedelta


class _SimulatedBase:
    """The provider's state and logic; the twins add only the sleep."""

    idempotency_window: timedelta | None

    def __init__(
        self,
        *,
        idempotent: bool,
        latency: timedelta,
        clock: Clock | None,
        seed: int | None,
        idempotency_window: timedelta | None,
        rates: Mapping[str, float] | None,
        movement_on_500: bool,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._idempotent = idempotent
        self._window = idempotency_window
        self.idempotency_window = idempotency_window if idempotent else None
        if latency < timedelta(0):
            raise ConfigurationError("latency must not be negative")
        self._latency = latency
        self._movement_on_500 = movement_on_500
        self._draws = FaultDraw(rates or {}, seed=seed)
        self._books = Books(clock=self._clock, seed=seed, on_move=self._move)
        self._lock = threading.Lock()
        self._queue: deque[Fault | None] = deque()
        self._by_key: dict[str, deque[Fault | None]] = {}
        self._lookup_queue: deque[Fault | None] = deque()
        self._lookup_by_key: dict[str, deque[Fault | None]] = {}
        self._keys: dict[str, _Entry] = {}
        self._calls: list[Call] = []
        self._received = 0
        self._lookups = 0

    # -- scripting and accessors ------------------------------------------------------------

    def script(
        self, faults: Iterable[Fault | str | None], *, provider_key: str | None = None
    ) -> None:
        """Queue faults for the next calls, in order: of ``provider_key`` only, or of any key.

        ``None`` stands for a call without a fault. A ``lookup`` fault is consumed by the next
        ``lookup`` call, every other kind by the next ``execute`` call. A call takes the next
        fault of its provider key's queue first, then of the general queue, and draws from
        ``rates`` only when both are empty.
        """
        with self._lock:
            for item in faults:
                fault = Fault(item) if isinstance(item, str) else item
                lookup = fault is not None and fault.kind == "lookup"
                if provider_key is None:
                    (self._lookup_queue if lookup else self._queue).append(fault)
                else:
                    table = self._lookup_by_key if lookup else self._by_key
                    table.setdefault(provider_key, deque()).append(fault)

    def objects(self, *, key: str | None = None) -> list[ProviderObject]:
        """Every object created (failed ones too), oldest first; of ``payonce_key`` ``key``."""
        with self._lock:
            return self._books.objects(key=key)

    def movements(self, *, key: str | None = None) -> list[Movement]:
        """Every money movement, oldest first; only those of ``payonce_key`` ``key`` if given."""
        with self._lock:
            return self._books.movements(key=key)

    def calls(self) -> list[Call]:
        """Every ``execute`` and ``lookup`` call, in the order they were answered."""
        with self._lock:
            return list(self._calls)

    @property
    def calls_received(self) -> int:
        """``execute`` calls that reached the provider (all but ``before_send``)."""
        with self._lock:
            return self._received

    @property
    def movements_made(self) -> int:
        """How many money movements the provider made."""
        with self._lock:
            return self._books.movements_made

    @property
    def lookups_received(self) -> int:
        """``lookup`` calls, including those a ``lookup`` fault failed."""
        with self._lock:
            return self._lookups

    # -- execute ----------------------------------------------------------------------------

    def _move(self, obj: ProviderObject, op: str, amount: int, pk: str, key: str) -> None:
        # Every movement of the books passes through here: a hook subclasses may wrap (the
        # scenario harness tags each movement with the attempt that made it).
        self._books.record(obj, op, amount, pk, key)

    def _record(
        self,
        op: str,
        pk: str,
        key: str,
        fault: Fault | None,
        result: GatewayAnswer | None,
        *,
        rx: bool,
    ) -> None:
        self._calls.append(
            Call(
                op,
                pk,
                key,
                None if fault is None else fault.kind,
                rx,
                None if result is None else result.kind,
                None if result is None else result.code,
                result is not None and result.replayed,
            )
        )

    def _begin(self, intent: Intent, pk: str, key: str) -> GatewayAnswer | _Pending:
        with self._lock:
            scripted, fault = next_fault(self._queue, self._by_key, pk)
            if not scripted:
                fault = self._draws.draw(lookup=False)
            kind = None if fault is None else fault.kind
            op = intent.operation
            if kind == "before_send":
                refused = answer(OutcomeClass.NOT_EXECUTED, "connection_refused")
                self._record(op, pk, key, fault, refused, rx=False)
                return refused
            self._received += 1
            early: GatewayAnswer | None = None
            replay: GatewayAnswer | None = None
            obj_kind, params = provider_params(intent, key)
            hint = None if fault is None else fault.retry_after
            if kind == "status_429":
                early = answer(OutcomeClass.NOT_EXECUTED, "rate_limit", retry_after=hint)
            elif kind == "in_progress_409":
                early = answer(OutcomeClass.IN_FLIGHT, "idempotency_key_in_use", retry_after=hint)
            elif self._idempotent:
                early, replay = self._admit(pk, canonical_json([obj_kind, params]))
            if early is not None:
                if kind == "after_send":
                    early = answer(OutcomeClass.UNKNOWN, "connection_lost")
                self._record(op, pk, key, fault, early, rx=True)
                return early
            delay = self._latency
            if fault is not None and kind == "slow":
                delay += fault.duration
            return _Pending(obj_kind, params, op, pk, key, fault, replay, delay)

    def _admit(self, pk: str, params: str) -> tuple[GatewayAnswer | None, GatewayAnswer | None]:
        """The provider's idempotency layer: (an early answer, or a stored answer to replay)."""
        now = self._clock.now()
        entry = self._keys.get(pk)
        # A key expires a window after its first request; one still in flight never does.
        if (
            entry is not None
            and entry.answer is not None
            and self._window is not None
            and now >= entry.created + self._window
        ):
            del self._keys[pk]
            entry = None
        if entry is None:
            self._keys[pk] = _Entry(params, None, now)
            return None, None
        if entry.answer is None:
            in_use = answer(
                OutcomeClass.IN_FLIGHT, "idempotency_key_in_use", retry_after=timedelta(seconds=1)
            )
            return in_use, None
        if entry.params != params:
            return answer(OutcomeClass.DEFINITE, "idempotency_error"), None
        value = None if entry.answer.value is None else dict(entry.answer.value)
        return None, replace(entry.answer, value=value, replayed=True)

    def _abort(self, p: _Pending) -> None:
        """The caller died while the call was on its way (its sleep raised): nothing executed."""
        with self._lock:
            if self._idempotent and p.replay is None:
                self._keys.pop(p.provider_key, None)

    def _finish(self, p: _Pending) -> GatewayAnswer:
        with self._lock:
            if p.replay is not None:
                result = p.replay
            else:
                result, stored = self._perform(p)
                if self._idempotent:
                    if stored:  # a copy, so that the caller cannot edit what replays return
                        kept = None if result.value is None else dict(result.value)
                        self._keys[p.provider_key].answer = replace(result, value=kept)
                    else:
                        del self._keys[p.provider_key]
            if p.fault is not None and p.fault.kind == "after_send":
                result = answer(OutcomeClass.UNKNOWN, "connection_lost")
            self._record(p.operation, p.provider_key, p.key, p.fault, result, rx=True)
            return result

    def _perform(self, p: _Pending) -> tuple[GatewayAnswer, bool]:
        """Execute a new call: (its answer, whether the idempotency layer stores it)."""
        fault_kind = None if p.fault is None else p.fault.kind
        if p.fault is not None and fault_kind == "status_500":
            moved = self._movement_on_500 if p.fault.moved is None else p.fault.moved
            if moved:
                self._books.apply(p, None)
            # Stripe stores a 500 under the key and replays it.
            return answer(OutcomeClass.UNKNOWN, "api_error"), True
        decline: str | None
        if p.fault is not None and fault_kind == "decline":
            decline = p.fault.code or "card_declined"
        else:
            decline = method_decline(p.params)
        return self._books.apply(p, decline)

    # -- lookup -----------------------------------------------------------------------------

    def _lookup(
        self, intent: Intent, pk: str, key: str, since: datetime | None
    ) -> GatewayAnswer | None:
        with self._lock:
            self._lookups += 1
            scripted, fault = next_fault(self._lookup_queue, self._lookup_by_key, pk)
            if not scripted:
                fault = self._draws.draw(lookup=True)
            found: GatewayAnswer | None
            if fault is not None:
                found = answer(OutcomeClass.UNKNOWN, "api_connection_error")
            else:
                found = self._books.find(intent, key, since)
            self._record("lookup", pk, key, fault, found, rx=True)
            return found


class SimulatedGateway(_SimulatedBase):
    """An in-process payment provider with a ledger of movements and scriptable faults.

    Args:
        idempotent: deduplicate on the provider key like Stripe. Off, every call that executes
            moves money again: what proves payonce alone is safe (SCENARIOS G2).
        latency: added to every call that reaches execution, on ``sleep``.
        clock: stamps objects and expires keys (default: the system clock).
        sleep: how the provider takes time (default: ``clock.sleep``, so a ``ManualClock``
            advances instead of blocking). Tests may pass one that waits on an event.
        seed: makes fault draws and object ids reproducible.
        idempotency_window: how long a provider key is remembered (None: forever). The
            ``idempotency_window`` attribute is None when ``idempotent`` is off.
        rates: probability per call of each fault kind, drawn when no scripted fault is queued
            (``lookup`` is drawn separately, per ``lookup`` call). A drawn ``slow`` takes
            ``Fault``'s default 30 s on ``sleep``: give a ManualClock or a ``sleep`` in tests.
        movement_on_500: whether a ``status_500`` fault moves the money before answering.

    A call goes through these steps; the faults act where named:

    1. ``before_send``: refused connection. NOT_EXECUTED ``connection_refused``; not received,
       no movement, nothing stored under the key.
    2. ``status_429``: NOT_EXECUTED ``rate_limit`` with ``retry_after``; ``in_progress_409``:
       IN_FLIGHT ``idempotency_key_in_use`` with ``retry_after``. Received, no movement, not
       stored under the key (Stripe does not store either).
    3. Idempotency (when on): the key still in flight gives IN_FLIGHT ``idempotency_key_in_use``;
       the key with other parameters gives DEFINITE ``idempotency_error``; the key with the same
       parameters replays the stored answer (``replayed=True``) without executing. A key is
       forgotten ``idempotency_window`` after its first request.
    4. Execution (new calls only; on a replay these faults have no effect): ``slow`` first takes
       ``duration`` (plus ``latency``) on ``sleep`` while the key is in flight, then executes
       normally. ``status_500``: UNKNOWN ``api_error``, stored and replayed like Stripe's 500s;
       no movement unless ``movement_on_500`` (or ``Fault.moved``), then one movement and a
       findable object. ``decline``: DEFINITE with the decline code; a failed object is created
       (``lookup`` finds it), no movement; stored and replayed. Refusals of the request itself
       (``resource_missing``, ``currency_mismatch``, ``charge_already_captured``,
       ``amount_too_large`` for refunds beyond what was captured and not yet refunded,
       ``amount_mismatch`` for a cancel of other than the whole hold,
       ``payment_intent_unexpected_state``/``charge_already_refunded`` for a hold released
       already) are
       DEFINITE without a value and not stored.
       A charge paid with ``tok_forget`` answers SUCCESS and keeps nothing (no object, no
       movement, nothing under the key), like stripe-stateful-mock: a provider that lost a
       movement payonce recorded (``Reconciler.audit`` reports it).
    5. ``after_send``: the provider did everything above (a movement if it executed, the answer
       stored under the key), then the answer was lost: UNKNOWN ``connection_lost``.

    ``cancel`` releases a hold (a charge with ``capture=False``, a PaymentIntent in
    ``requires_capture``) whole: the object becomes ``canceled`` and a ``void`` movement is made;
    its lookup finds the canceled object by the cancel's ``payonce_key``.

    ``lookup`` finds what execute did by ``payonce_key`` metadata, also after the window: the
    oldest object that moved money (SUCCESS), else the newest failed attempt (DEFINITE), else
    None. A ``lookup`` fault answers UNKNOWN ``api_connection_error``. Lookups do not see a call
    still in flight (its object does not exist yet), like Stripe's list endpoints.

    ``value`` holds only ``VALUE_FIELDS``; ``amount`` is what the call moved (for a capture, the
    amount captured).
    """

    def __init__(
        self,
        *,
        idempotent: bool = True,
        latency: timedelta = timedelta(0),
        clock: Clock | None = None,
        sleep: Callable[[timedelta], None] | None = None,
        seed: int | None = None,
        idempotency_window: timedelta | None = timedelta(hours=24),
        rates: Mapping[str, float] | None = None,
        movement_on_500: bool = False,
    ) -> None:
        super().__init__(
            idempotent=idempotent,
            latency=latency,
            clock=clock,
            seed=seed,
            idempotency_window=idempotency_window,
            rates=rates,
            movement_on_500=movement_on_500,
        )
        self._sleep = sleep if sleep is not None else self._clock.sleep

    def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """Make the movement ``intent`` describes; never raises for a provider answer."""
        begun = self._begin(intent, provider_key, key)
        if isinstance(begun, GatewayAnswer):
            return begun
        if begun.delay > timedelta(0):
            try:
                self._sleep(begun.delay)
            except BaseException:
                self._abort(begun)
                raise
        return self._finish(begun)

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """Find the object payonce created for ``key`` by its metadata, or None; with ``since``,
        only among objects created from then on (less 10 minutes of clock skew), as Stripe's
        list endpoints filter them."""
        return self._lookup(intent, provider_key, key, since)


class AsyncSimulatedGateway(_SimulatedBase):
    """The async twin of ``SimulatedGateway``: the same provider, awaited.

    ``sleep`` is awaited (default: ``clock.asleep``).
    """

    def __init__(
        self,
        *,
        idempotent: bool = True,
        latency: timedelta = timedelta(0),
        clock: Clock | None = None,
        sleep: Callable[[timedelta], Awaitable[None]] | None = None,
        seed: int | None = None,
        idempotency_window: timedelta | None = timedelta(hours=24),
        rates: Mapping[str, float] | None = None,
        movement_on_500: bool = False,
    ) -> None:
        super().__init__(
            idempotent=idempotent,
            latency=latency,
            clock=clock,
            seed=seed,
            idempotency_window=idempotency_window,
            rates=rates,
            movement_on_500=movement_on_500,
        )
        self._asleep = sleep if sleep is not None else self._clock.asleep

    async def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """See ``SimulatedGateway.execute``."""
        begun = self._begin(intent, provider_key, key)
        if isinstance(begun, GatewayAnswer):
            return begun
        if begun.delay > timedelta(0):
            try:
                await self._asleep(begun.delay)
            except BaseException:  # cancelled on the way: the provider never executed it
                self._abort(begun)
                raise
        return self._finish(begun)

    async def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """See ``SimulatedGateway.lookup``."""
        return self._lookup(intent, provider_key, key, since)

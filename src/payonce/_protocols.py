"""Extension points (L2): the store contract and the clock.

A store never reads a clock: every operation that compares or stamps time takes ``now`` from the
guard's injected clock, so leases, windows and retention run on the same time everywhere and
tests move time without sleeping.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final, Protocol, runtime_checkable

from payonce._intent import Intent
from payonce._model import (
    Checkpoint,
    Claimed,
    Entry,
    GatewayAnswer,
    NewRecord,
    Record,
    ReplayView,
    Status,
)

__all__ = [
    "LOOKUP_SKEW",
    "AsyncGateway",
    "AsyncStore",
    "Clock",
    "Gateway",
    "Store",
    "has_ledger_horizon",
    "lookup_options",
    "lookup_takes_since",
    "resend_fits_window",
]

# How far before a lookup's ``since`` a gateway still looks: the clock skew allowed between
# payonce's clock and the provider's creation times. A key is claimed again only after a purge,
# and a purge only after the retention (at least the provider's idempotency window, 24 h on
# Stripe), so an earlier life's objects are always far older than this.
LOOKUP_SKEW: Final = timedelta(minutes=10)


def resend_fits_window(
    gateway: object, created_at: datetime, now: datetime, lease: timedelta
) -> bool:
    """Whether a call under a record's provider key, sent from ``now`` on and held for at most
    ``lease`` (its retries included), still ends inside the provider's idempotency window: only
    then does the provider deduplicate it. The window is counted from the record's claim
    (``created_at``), which comes before the first call with the key, so the count errs early.
    A gateway without ``idempotency_window`` never deduplicates: False."""
    window = getattr(gateway, "idempotency_window", None)
    return window is not None and now + lease < created_at + window


def lookup_options(record: Record, *, takes_since: bool) -> dict[str, object]:
    """The keyword arguments of ``Gateway.lookup`` for ``record``: its key, and where the gateway
    takes it (``lookup_takes_since``) only the objects of the record's current life. A key
    purged after its retention and claimed again keeps its payonce_key, and the earlier life's
    movement is not this one's."""
    if takes_since:
        return {"key": record.key, "since": record.created_at}
    return {"key": record.key}


def lookup_takes_since(gateway: object, log: logging.Logger) -> bool:
    """Whether ``gateway.lookup`` takes ``since``; a gateway written before it did is warned
    about (once, here) and then asked without it."""
    try:
        parameters = inspect.signature(gateway.lookup).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    if "since" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return True
    log.warning(
        "%s.lookup takes no since: a key purged and claimed again may be matched with an "
        "earlier life's provider object. Add since: datetime | None = None and leave out the "
        "objects made before it (see payonce.Gateway.lookup).",
        type(gateway).__name__,
    )
    return False


@runtime_checkable
class Clock(Protocol):
    """An injected time source. ``now`` returns an aware UTC datetime."""

    def now(self) -> datetime:
        """The current time, aware UTC."""
        ...

    def sleep(self, duration: timedelta) -> None:
        """Block for ``duration`` (a test clock advances instead)."""
        ...

    async def asleep(self, duration: timedelta) -> None:
        """Await for ``duration`` (a test clock advances instead)."""
        ...


@runtime_checkable
class Store(Protocol):
    """Persistence of records and ledger entries. Every backend passes ``StoreContract``.

    Every method that changes a record appends exactly one ledger entry per changed record in the
    same transaction (I5), chained to the key's previous entry. Writes after claim are fenced:
    they take the lease token and raise ``LeaseLostError`` (changing nothing) when the record no
    longer carries it. Driver errors never escape: they become ``StoreUnavailableError``.

    Optional class attributes: ``gapless_ledger = True`` when ledger sequence numbers have no
    gaps (``verify_ledger`` then treats a gap as a deleted entry, and entries missing below
    ``ledger_horizon`` too); ``read_before_claim = True``
    when a point read is much cheaper than a claim: the guard then reads ``replay_view`` first
    and claims only an absent key, so a replay never touches the write path and reads only what
    it returns.

    Optional method: ``ledger_horizon() -> int`` (``async def`` on an ``AsyncStore``), the
    highest seq such that every entry with a seq at or below it is final (committed, or rolled
    back and never coming). A store whose sequence numbers can become visible out of order
    defines it (PostgreSQL draws ``seq`` at INSERT time, so an uncommitted 41 can sit below a
    visible 42; Redis Cluster a round trip before the entry's script); ``seal_checkpoint``,
    ``verify_ledger`` and ``Reconciler.audit`` then read no entry past it. Stores whose seq
    order is commit order (memory, SQLite) leave it out. None of these optional members is
    part of the protocol: a store without them still conforms.
    """

    def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """Create the record for ``(new.scope, new.key)`` as CLAIMED, first writer wins.

        Returns ``Claimed(record, lease)`` with the new lease (token 1, attempt 1, expiring at
        ``now + lease_for``) when this caller created it; otherwise ``Claimed(existing, None)``
        with the record as stored, whatever its status or fingerprint. Never check-then-insert:
        the uniqueness of (scope, key) arbitrates. A key released or purged earlier may be
        claimed again; its ledger chain continues.
        """
        ...

    def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """Take the record over from the holder of ``token``.

        Succeeds only when the record still carries ``token`` and is UNKNOWN, or CLAIMED with a
        lease that expired at ``now``: the record becomes CLAIMED with token + 1, attempt + 1 and
        a lease until ``now + lease_for``. Otherwise returns ``Claimed(current, None)``. If the
        record no longer exists (released or purged meanwhile) it raises ``LeaseLostError``.
        """
        ...

    def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """CLAIMED → SUCCEEDED or FAILED with ``outcome`` (canonical JSON), fenced on ``token``."""
        ...

    def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """CLAIMED → UNKNOWN with ``reason``, fenced on ``token``."""
        ...

    def release(self, scope: str, key: str, *, token: int, reason: str, now: datetime) -> None:
        """CLAIMED → (none): the call provably never ran; the key may be claimed again."""
        ...

    def get(self, scope: str, key: str) -> Record | None:
        """The record, or None. Never writes."""
        ...

    def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """The replay path's columns of the record (equal to the same fields of ``get``), or
        None. Never writes."""
        ...

    def newest(self, scope: str, family: str) -> Record | None:
        """The record of ``family`` with the highest generation, or None (the dedup window)."""
        ...

    def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """Up to ``limit`` records needing recovery, oldest first (by ``created_at``): UNKNOWN,
        and CLAIMED whose lease expired at ``now``. All scopes."""
        ...

    def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """Delete up to ``limit`` SUCCEEDED/FAILED records last updated at or before
        ``now - retention``, each with a ``purged`` ledger entry. Never touches CLAIMED or
        UNKNOWN. Returns how many were purged."""
        ...

    def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """Up to ``limit`` ledger entries with ``seq > after``, in sequence order."""
        ...

    def heads(self, *, after: tuple[str, str] | None, limit: int) -> Sequence[tuple[str, str, str]]:
        """``(scope, key, ledger_head)`` of up to ``limit`` records ordered by (scope, key),
        starting after ``after``: lets the verifier detect a deleted chain tail."""
        ...

    def checkpoints(self) -> Sequence[Checkpoint]:
        """Every sealed checkpoint, in order."""
        ...

    def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a checkpoint; a concurrent one with the same number raises ``ConflictError``."""
        ...

    def close(self) -> None:
        """Release connections. The store is unusable afterwards."""
        ...


@runtime_checkable
class AsyncStore(Protocol):
    """The async twin of ``Store``: the same methods and semantics, awaited (the optional
    ``ledger_horizon`` too)."""

    async def claim(self, new: NewRecord, *, now: datetime, lease_for: timedelta) -> Claimed:
        """See ``Store.claim``."""
        ...

    async def takeover(
        self, scope: str, key: str, *, token: int, now: datetime, lease_for: timedelta
    ) -> Claimed:
        """See ``Store.takeover``."""
        ...

    async def complete(
        self, scope: str, key: str, *, token: int, status: Status, outcome: str, now: datetime
    ) -> Record:
        """See ``Store.complete``."""
        ...

    async def mark_unknown(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> Record:
        """See ``Store.mark_unknown``."""
        ...

    async def release(
        self, scope: str, key: str, *, token: int, reason: str, now: datetime
    ) -> None:
        """See ``Store.release``."""
        ...

    async def get(self, scope: str, key: str) -> Record | None:
        """See ``Store.get``."""
        ...

    async def replay_view(self, scope: str, key: str) -> ReplayView | None:
        """See ``Store.replay_view``."""
        ...

    async def newest(self, scope: str, family: str) -> Record | None:
        """See ``Store.newest``."""
        ...

    async def scan(self, *, now: datetime, limit: int) -> Sequence[Record]:
        """See ``Store.scan``."""
        ...

    async def purge(self, *, now: datetime, retention: timedelta, limit: int) -> int:
        """See ``Store.purge``."""
        ...

    async def entries(self, *, after: int, limit: int) -> Sequence[Entry]:
        """See ``Store.entries``."""
        ...

    async def heads(
        self, *, after: tuple[str, str] | None, limit: int
    ) -> Sequence[tuple[str, str, str]]:
        """See ``Store.heads``."""
        ...

    async def checkpoints(self) -> Sequence[Checkpoint]:
        """See ``Store.checkpoints``."""
        ...

    async def append_checkpoint(self, checkpoint: Checkpoint) -> None:
        """See ``Store.append_checkpoint``."""
        ...

    async def close(self) -> None:
        """See ``Store.close``."""
        ...


def has_ledger_horizon(store: Store | AsyncStore) -> bool:
    """Whether ``store`` defines the optional ``ledger_horizon`` (see ``Store``)."""
    return callable(getattr(store, "ledger_horizon", None))


@runtime_checkable
class Gateway(Protocol):
    """An adapter to a payment provider. It classifies every answer once (DESIGN §6).

    Attributes:
        idempotency_window: how long the provider deduplicates on a provider key (Stripe: 24 h);
            None when it does not. Inside the window a resend with the same provider key is
            safe; after it, only ``lookup`` may decide.
    """

    idempotency_window: timedelta | None

    def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """Make the movement ``intent`` describes, sending ``provider_key`` as the provider's
        idempotency key and ``key`` as the ``payonce_key`` metadata. Never raises for an answer
        of the provider: every answer, and every transport failure, is a classified answer."""
        ...

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """Find the movement payonce made for ``key`` (by ``payonce_key`` metadata through the
        provider's list endpoints): its classified answer, or None when the provider has no
        such object. An answer of class UNKNOWN means the provider could not be asked.

        ``since`` is when the record's current life began (its ``created_at``). A key purged
        after its retention can be claimed again, and its provider objects keep the same
        ``payonce_key``: an object made before ``since`` (less the provider's clock skew) is an
        earlier life's and must not be returned. payonce always passes it."""
        ...


@runtime_checkable
class AsyncGateway(Protocol):
    """The async twin of ``Gateway``."""

    idempotency_window: timedelta | None

    async def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        """See ``Gateway.execute``."""
        ...

    async def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        """See ``Gateway.lookup``."""
        ...

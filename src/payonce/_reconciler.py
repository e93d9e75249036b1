"""The Reconciler (L3): resolves stale CLAIMED and UNKNOWN records against the gateway.

Each pass takes the records that need recovery, oldest first, takes each over under a fenced
lease (two reconcilers never act on one record: the second one's takeover is refused), and
asks the provider what became of the call:

- the provider made it: the record is completed SUCCEEDED (or FAILED, for a definite failure);
- the provider has no such object and still deduplicates on the provider key (inside its
  idempotency window): the call is resent with the same provider key, which cannot move money
  twice, and its answer recorded;
- anything else (not found after the window, a provider that does not deduplicate, a provider
  that could not be asked): the record stays UNKNOWN, flagged for review with the reason.

It never deletes a money record and never makes a call under a new provider key.

``audit`` is the other direction (SCENARIOS R19): it reads the ledger's ``succeeded`` entries,
asks the provider about each SUCCEEDED record, and reports typed discrepancies (``Discrepancy``)
where the provider disagrees. It only reads: a discrepancy needs a person, never an automatic
change of a money record.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from payonce._bodies import failure_body, is_declined, recorded_object, success_body
from payonce._clock import SystemClock
from payonce._errors import (
    ConfigurationError,
    IntentError,
    LeaseLostError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
)
from payonce._intent import Intent
from payonce._model import Event, GatewayAnswer, Lease, OutcomeClass, Record, Status
from payonce._protocols import (
    AsyncGateway,
    AsyncStore,
    Clock,
    Gateway,
    Store,
    has_ledger_horizon,
    lookup_options,
    lookup_takes_since,
    resend_fits_window,
)

__all__ = [
    "GATEWAY_FAILED",
    "LEDGER_WITHOUT_GATEWAY",
    "OBJECT_MISMATCH",
    "REVIEW",
    "AsyncReconciler",
    "AuditReport",
    "Discrepancy",
    "ReconcileReport",
    "Reconciler",
]

_log = logging.getLogger("payonce.reconciler")

#: The prefix of the reason of every record a pass leaves UNKNOWN: it needs a person (or a later
#: pass, once the provider can be asked again).
REVIEW: Final = "review: "
# The most records one pass may take: a bound a store's scan limit can always hold.
MOST_BATCH: Final = 100_000


@dataclass(slots=True)
class ReconcileReport:
    """What one pass did, by resolution.

    Attributes:
        scanned: records the pass looked at: up to ``batch`` to act on, plus those resting
            in review that it passed over (due records beyond the batch wait for the next
            pass).
        succeeded / failed: records completed from what the provider holds.
        resent: records resolved by a resend with the same provider key (also counted in
            succeeded or failed).
        flagged: records left UNKNOWN with a ``review:`` reason.
        skipped: records another worker held or changed first, or flagged too recently.
        reasons: the review reason of every flagged record, by record key.
        interrupted: None for a pass that went through its batch; else why it stopped early
            (the store became unavailable after the scan). What it resolved before is counted
            above; the record in hand counts as skipped, and it and the rest stay due.
    """

    scanned: int = 0
    succeeded: int = 0
    failed: int = 0
    resent: int = 0
    flagged: int = 0
    skipped: int = 0
    reasons: dict[str, str] = field(default_factory=dict)
    interrupted: str | None = None


# How far a pass widens its scan past records resting in review: up to this many batches (a
# backlog beyond that is an incident to review, and is logged as one).
_WIDEN: Final = 100


_STORE_DOWN: Final = "payonce reconciler: the store is unavailable (%s); trying again later"
_CUT_SHORT: Final = (
    "payonce reconciler: a pass stopped early, the store became unavailable (%s); what it "
    "resolved is kept, the rest stays due for the next pass"
)


def _idle(report: ReconcileReport) -> bool:
    """A pass that resolved nothing: the next one would see the same records."""
    return report.scanned == report.skipped


class _OutageLog:
    """A loop's log of store outages: a WARNING when one starts and when it ends, DEBUG for the
    passes that fail in between (a loop every few seconds would otherwise flood the log)."""

    def __init__(self) -> None:
        self.down = False

    def failed(self, why: str) -> None:
        _log.log(logging.DEBUG if self.down else logging.WARNING, _STORE_DOWN, why)
        self.down = True

    def after(self, report: ReconcileReport) -> bool:
        """Note a finished pass; True when the loop should wait before the next one."""
        if report.interrupted is not None:
            # Its scan answered: warn each time, or a record whose own write keeps failing
            # (every pass stops at it, oldest first) would go quiet after the first pass.
            _log.warning(_CUT_SHORT, report.interrupted)
            self.down = True
            return True
        if self.down:
            _log.warning("payonce reconciler: the store answers again; passes go on")
            self.down = False
        return _idle(report)


def _check_on_pass(on_pass: object) -> None:
    if on_pass is not None and (not callable(on_pass) or inspect.iscoroutinefunction(on_pass)):
        raise _not_plain(on_pass)


def _hand_over(on_pass: Callable[[ReconcileReport], object], report: ReconcileReport) -> None:
    """Call ``on_pass``; refuse one that returns a coroutine (an async ``__call__``, a function
    that makes one), which nobody would await. A task or future it returns is its own: already
    scheduled, it runs without the loop."""
    handed = on_pass(report)
    if inspect.iscoroutine(handed):
        handed.close()  # never awaited: closed, without a "never awaited" warning
        raise _not_plain(on_pass)


def _not_plain(on_pass: object) -> ConfigurationError:
    return ConfigurationError(
        f"on_pass must be a plain function taking the pass's ReconcileReport; got {on_pass!r}. "
        "For async work, have it hand the report to a queue or a task.",
        option="on_pass",
    )


#: payonce recorded a success, and the provider has no object for the record's key.
LEDGER_WITHOUT_GATEWAY: Final = "ledger_without_gateway"
#: payonce recorded a success, and the provider's object for the key failed.
GATEWAY_FAILED: Final = "gateway_failed"
#: The provider's object for the key is not the one recorded (another id, amount or currency).
OBJECT_MISMATCH: Final = "object_mismatch"

# Operations whose recorded ``amount`` is the amount of the object lookup finds. A capture's
# lookup reads the charge it captured, whose amount is the authorisation's.
_SAME_AMOUNT: Final = frozenset({"charge", "refund", "payout", "transfer"})
_ENTRY_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One SUCCEEDED record the provider disagrees with.

    Attributes:
        kind: ``ledger_without_gateway``, ``gateway_failed`` or ``object_mismatch``.
        scope / key: the record.
        operation: the record's operation.
        seq: the ledger sequence number of the record's ``succeeded`` entry.
        reason: what differs and what to do next (provider ids and codes only).
    """

    kind: str
    scope: str
    key: str
    operation: str
    seq: int
    reason: str


@dataclass(slots=True)
class AuditReport:
    """What one audit found.

    Attributes:
        checked: SUCCEEDED records the provider was asked about.
        matched: of those, the ones the provider agrees with.
        unverified: keys the provider could not be asked about (an UNKNOWN lookup, a recorded
            intent that no longer validates): audit them again later.
        skipped: ``succeeded`` entries whose record is gone (purged) or no longer SUCCEEDED.
        discrepancies: every disagreement, oldest entry first.
        cursor: the sequence number of the last ledger entry read; pass it as ``after`` to
            continue where this audit stopped.
        complete: True when the audit read up to the end of the ledger (on a store with a
            ledger horizon, PostgreSQL: up to the horizon taken when it started; entries
            committed after it are read by the next audit from ``cursor``).
    """

    checked: int = 0
    matched: int = 0
    unverified: list[str] = field(default_factory=list)
    skipped: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    cursor: int = 0
    complete: bool = False


# A pass is written once, as a generator that yields ("store" | "gateway", method, args,
# kwargs) and receives the result or has the exception thrown in; Reconciler and AsyncReconciler
# perform the calls, blocking or awaited.
_Call = tuple[str, str, tuple[Any, ...], dict[str, Any]]
_Pass = Generator[_Call, Any, Any]


class _ReconcilerCore:
    """Options and the pass itself, shared by both twins."""

    def __init__(
        self,
        store: Any,
        gateway: Any,
        *,
        clock: Clock | None = None,
        lease: timedelta = timedelta(seconds=60),
        recheck: timedelta = timedelta(hours=1),
    ) -> None:
        if not callable(getattr(gateway, "lookup", None)):
            raise ConfigurationError(
                "the Reconciler needs a gateway with lookup(intent, provider_key, key=..., "
                "since=...), such as StripeGateway or SimulatedGateway; got "
                f"{type(gateway).__name__}",
                option="gateway",
            )
        for name, value in (("lease", lease), ("recheck", recheck)):
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise ConfigurationError(f"{name} must be a positive timedelta")
        self.store = store
        self.gateway = gateway
        self._lookup_since = lookup_takes_since(gateway, _log)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.lease = lease
        self.recheck = recheck

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={self.store!r}, gateway={type(self.gateway).__name__})"

    @staticmethod
    def _check_batch(batch: int) -> None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MOST_BATCH:
            raise ConfigurationError(
                f"batch must be a whole number from 1 to {MOST_BATCH:,}: the records one pass "
                "reads and resolves"
            )

    def _resting(self, record: Record, now: datetime) -> bool:
        """Flagged for review too recently to be asked about again."""
        return (
            record.status is Status.UNKNOWN
            and (record.reason or "").startswith(REVIEW)
            and now - record.updated_at < self.recheck
        )

    def _pass(self, batch: int, closed: list[StoreClosedError] | None = None) -> _Pass:
        """One pass; a store closed during it cuts it short as an outage does, and is added to
        ``closed`` (``run`` then ends, ``run_once`` returns the report)."""
        report = ReconcileReport()
        now = self.clock.now()
        # The scan is oldest first and records resting in review stay due, so a backlog of
        # them could fill every batch and starve newer records: widen the scan past them
        # (bounded) until it holds ``batch`` records to act on or has returned everything.
        # The limit doubles each time, so a backlog of N resting records costs at most about
        # 4 * (N + batch) records read, not N * N / batch.
        limit = batch
        while True:
            due = yield ("store", "scan", (), {"now": now, "limit": limit})
            resting = sum(1 for record in due if self._resting(record, now))
            if len(due) - resting >= batch or len(due) < limit:
                break
            if limit >= batch * _WIDEN:
                _log.warning(
                    "%d records flagged for review fill the oldest end of the due records; this "
                    "pass looked no further, so newer records wait for their recheck. Review "
                    "them (payonce show KEY) or reconcile with a larger batch.",
                    resting,
                )
                break
            limit = min(max(2 * limit, batch + resting), batch * _WIDEN)
        acted = 0
        for record in due:
            report.scanned += 1
            if self._resting(record, now):
                report.skipped += 1
            elif acted < batch:
                acted += 1
                try:
                    yield from self._resolve(record, report)
                except StoreUnavailableError as exc:
                    # The next record's takeover would fail the same way, and a provider answer
                    # could not be written: stop here and keep what was resolved so far.
                    report.skipped += 1
                    report.interrupted = str(exc)
                    if closed is not None and isinstance(exc, StoreClosedError):
                        closed.append(exc)
                    break
            else:
                report.scanned -= 1  # past this pass's batch: the next pass takes it
        return report

    def _take_over(
        self, record: Record, token: int, now: datetime, report: ReconcileReport
    ) -> _Pass:
        """``record`` taken over from the holder of ``token``: the record and its new lease, or
        None (counted as skipped) when it was released or purged meanwhile, or another worker
        holds or changed it first."""
        try:
            taken = yield (
                "store",
                "takeover",
                (record.scope, record.key),
                {"token": token, "now": now, "lease_for": self.lease},
            )
        except LeaseLostError:
            taken = None
        if taken is None or taken.lease is None:
            report.skipped += 1
            return None
        return taken.record, taken.lease

    def _resolve(self, record: Record, report: ReconcileReport) -> _Pass:
        taken = yield from self._take_over(record, record.token, self.clock.now(), report)
        if taken is None:
            return
        held, lease = taken
        try:
            intent = Intent.from_dict(held.intent_fields())
        except IntentError:
            yield from self._flag(held, lease, "the recorded intent no longer validates", report)
            return
        found = yield from self._ask("lookup", intent, held)
        # The clock is read again: a slow lookup may have used up what was left of the window.
        resent = found is None and self._inside_window(held, self.clock.now())
        if resent:
            renewed = yield from self._renew(held, lease, report)
            if renewed is None:
                return
            held, lease = renewed
            found = yield from self._ask("execute", intent, held)
        yield from self._record(held, lease, found, report, resent=resent)

    def _renew(self, held: Record, lease: Lease, report: ReconcileReport) -> _Pass:
        """The record and lease to resend under. A lease that ran out during the lookup (a slow
        provider) is taken over again, fenced on its own token, so the resend never goes out
        while another worker may hold the record; None when another worker took it meanwhile
        (counted as skipped: that worker resolves it)."""
        now = self.clock.now()
        if now < lease.expires_at:
            return held, lease
        return (yield from self._take_over(held, lease.token, now, report))

    def _inside_window(self, record: Record, now: datetime) -> bool:
        """Whether a resend from ``now``, held for at most the lease, ends inside the
        provider's idempotency window."""
        return resend_fits_window(self.gateway, record.created_at, now, self.lease)

    def _ask(self, method: str, intent: Intent, held: Record) -> _Pass:
        options = (
            lookup_options(held, takes_since=self._lookup_since)
            if method == "lookup"
            else {"key": held.key}
        )
        try:
            answer: GatewayAnswer | None = yield (
                "gateway",
                method,
                (intent, held.provider_key),
                options,
            )
        except Exception as exc:  # noqa: BLE001 - a gateway that raises settles nothing
            return GatewayAnswer(OutcomeClass.UNKNOWN, code=type(exc).__name__)
        return answer

    def _record(
        self,
        held: Record,
        lease: Lease,
        found: GatewayAnswer | None,
        report: ReconcileReport,
        *,
        resent: bool,
    ) -> _Pass:
        now = self.clock.now()
        if found is None or found.kind not in (OutcomeClass.SUCCESS, OutcomeClass.DEFINITE):
            yield from self._flag(held, lease, self._why(held, now, found, resent=resent), report)
            return
        if found.kind is OutcomeClass.DEFINITE:
            body = failure_body(found.code, declined=is_declined(found), value=found.value)
            status = Status.FAILED
        else:
            try:
                body, status = success_body(found.value), Status.SUCCEEDED
            except (TypeError, ValueError):
                why = (
                    "the provider answered success with an object that cannot be recorded (not "
                    "JSON, or text that is not valid Unicode); look it up at the provider"
                )
                yield from self._flag(held, lease, why, report)
                return
        try:
            yield (
                "store",
                "complete",
                (held.scope, held.key),
                {"token": lease.token, "status": status, "outcome": body, "now": now},
            )
        except StoreUnavailableError:
            raise  # the pass stops; the record stays due
        except (LeaseLostError, StoreError):
            report.skipped += 1  # the record stays due; the next pass resolves it
            return
        if status is Status.SUCCEEDED:
            report.succeeded += 1
        else:
            report.failed += 1
        if resent:
            report.resent += 1  # counted once its answer is recorded, like succeeded and failed

    def _why(
        self, held: Record, now: datetime, found: GatewayAnswer | None, *, resent: bool
    ) -> str:
        if found is None:
            if resent:
                return "not found at the provider, and the resend did not settle it"
            window = getattr(self.gateway, "idempotency_window", None)
            if window is None:
                return (
                    "not found at the provider, which does not deduplicate on the key; a new "
                    "attempt needs a person's decision"
                )
            if now < held.created_at + window:
                return (
                    "not found at the provider, and too close to the end of its idempotency "
                    "window to resend (a lease or less left); a new attempt needs a person's "
                    "decision"
                )
            return (
                "not found at the provider after its idempotency window; a new attempt needs a "
                "person's decision"
            )
        return f"the provider could not settle it ({found.kind.value}: {found.code})"

    def _flag(self, held: Record, lease: Lease, why: str, report: ReconcileReport) -> _Pass:
        try:
            yield (
                "store",
                "mark_unknown",
                (held.scope, held.key),
                {"token": lease.token, "reason": REVIEW + why, "now": self.clock.now()},
            )
        except StoreUnavailableError:
            raise  # the pass stops; the record stays due
        except (LeaseLostError, StoreError):
            report.skipped += 1
            return
        report.flagged += 1
        report.reasons[held.key] = why

    @staticmethod
    def _check_audit(since: datetime | None, after: int, limit: int) -> None:
        if since is not None and (not isinstance(since, datetime) or since.tzinfo is None):
            raise ConfigurationError("since must be an aware UTC datetime, or None for all")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ConfigurationError("after must be a ledger sequence number (0 for the start)")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError("limit must be a positive integer")

    def _audit(self, since: datetime | None, after: int, limit: int) -> _Pass:
        """Read ``succeeded`` entries after ``after`` (at or after ``since``) and ask the
        provider about each record still SUCCEEDED, until ``limit`` were asked or the ledger
        ends. Writes nothing and calls the gateway only to ``lookup``; on a store with a ledger
        horizon (PostgreSQL) it takes that short table lock first."""
        report = AuditReport(cursor=after)
        seen: set[tuple[str, str]] = set()
        # Where sequence numbers become visible out of commit order (PostgreSQL), read no
        # further than the horizon: past it a lower number may still commit, and a cursor
        # already beyond it would skip that entry in every later audit. None: no such store.
        final = (
            (yield ("store", "ledger_horizon", (), {})) if has_ledger_horizon(self.store) else None
        )
        while True:
            batch = yield ("store", "entries", (), {"after": report.cursor, "limit": _ENTRY_PAGE})
            if final is not None:
                batch = [entry for entry in batch if entry.seq <= final]
            if not batch:
                report.complete = True
                return report
            for entry in batch:
                report.cursor = entry.seq
                if entry.event is not Event.SUCCEEDED or (since is not None and entry.at < since):
                    continue
                if (entry.scope, entry.key) in seen:
                    continue
                seen.add((entry.scope, entry.key))
                record = yield ("store", "get", (entry.scope, entry.key), {})
                if record is None or record.status is not Status.SUCCEEDED:
                    report.skipped += 1
                    continue
                report.checked += 1
                yield from self._audit_one(record, entry.seq, report)
                if report.checked >= limit:
                    return report

    def _audit_one(self, record: Record, seq: int, report: AuditReport) -> _Pass:
        try:
            intent = Intent.from_dict(record.intent_fields())
        except IntentError:
            report.unverified.append(record.key)
            return
        found = yield from self._ask("lookup", intent, record)
        recorded = recorded_object(record.outcome)
        kind, why = _disagreement(record, recorded, found)
        if kind is None:
            if found is not None and found.kind is OutcomeClass.UNKNOWN:
                report.unverified.append(record.key)
            else:
                report.matched += 1
            return
        _log.warning("payonce audit: %s for key %s (%s)", kind, record.key, record.operation)
        report.discrepancies.append(
            Discrepancy(kind, record.scope, record.key, record.operation, seq, why)
        )


def _disagreement(
    record: Record, recorded: dict[str, Any], found: GatewayAnswer | None
) -> tuple[str | None, str]:
    """The discrepancy between a SUCCEEDED record and what the provider holds, if any."""
    if found is None:
        return LEDGER_WITHOUT_GATEWAY, (
            f"payonce recorded {recorded.get('id') or 'a success'} for this {record.operation}, "
            "and the provider has no object with its payonce_key; check the provider's "
            "dashboard before acting: never repeat the movement under a new key"
        )
    if found.kind is OutcomeClass.UNKNOWN:
        return None, ""
    if found.kind is not OutcomeClass.SUCCESS:
        return GATEWAY_FAILED, (
            f"payonce recorded a success, and the provider's object failed ({found.code}); "
            "check the provider's dashboard and settle it by hand"
        )
    value = found.value or {}
    differs = [
        name
        for name in ("id", "currency", "amount")
        if name in recorded
        and name in value
        and (name != "amount" or record.operation in _SAME_AMOUNT)
        and recorded[name] != value[name]
    ]
    if differs:
        shown = ", ".join(
            f"{n} {recorded[n]!r} recorded, {value[n]!r} at the provider" for n in differs
        )
        return OBJECT_MISMATCH, (
            f"the provider's object for this key is not the one recorded ({shown}); check "
            "both objects at the provider"
        )
    return None, ""


class Reconciler(_ReconcilerCore):
    """Resolves what the guard could not: crashed workers and lost answers.

    Args:
        store: the store the guards write to (all scopes are reconciled).
        gateway: the provider the records were sent to.
        clock: the time source; the system clock by default.
        lease: how long a pass holds a record while it asks the provider.
        recheck: how long a record flagged for review rests before a pass asks again.

    Raises:
        ConfigurationError: for a bad option.
    """

    def __init__(
        self,
        store: Store,
        gateway: Gateway,
        *,
        clock: Clock | None = None,
        lease: timedelta = timedelta(seconds=60),
        recheck: timedelta = timedelta(hours=1),
    ) -> None:
        if not isinstance(store, Store) or inspect.iscoroutinefunction(
            getattr(store, "scan", None)
        ):
            raise ConfigurationError(
                f"Reconciler needs a sync Store such as SQLiteStore or PostgresStore; got "
                f"{type(store).__name__}. Use AsyncReconciler for an AsyncStore.",
                option="store",
            )
        super().__init__(store, gateway, clock=clock, lease=lease, recheck=recheck)

    def run_once(self, batch: int = 100) -> ReconcileReport:
        """One pass over up to ``batch`` records, oldest first.

        A store that becomes unavailable after the scan stops the pass early: the report counts
        what was resolved before, and its ``interrupted`` says why it stopped.

        Raises:
            ConfigurationError: for a bad ``batch``.
            StoreUnavailableError: the scan could not read the store; nothing was resolved.
        """
        self._check_batch(batch)
        report: ReconcileReport = self._drive(self._pass(batch))
        return report

    def run(
        self,
        stop: threading.Event,
        *,
        interval: timedelta = timedelta(seconds=5),
        batch: int = 100,
        on_pass: Callable[[ReconcileReport], object] | None = None,
    ) -> None:
        """Run passes of up to ``batch`` records until ``stop`` is set, waiting ``interval``
        after a pass that resolved nothing (every record it saw was resting in review or held
        by another worker), so that such records are not polled in a tight loop. A store
        outage is waited out the same way, and the loop keeps running: logger
        ``payonce.reconciler`` warns when the outage starts, at each pass it cuts short, and
        when the store answers again (the scans failing in between log at DEBUG).

        To stop it from a signal handler, set ``stop`` from a daemon thread
        (``threading.Thread(target=stop.set, daemon=True).start()``): the handler runs in the
        thread that waits on ``stop``, possibly while that wait holds the event's lock, and
        ``stop.set()`` right there would wait for that lock for ever (as would the start of a
        non-daemon thread, on a lock of the ``threading`` module).

        Args:
            on_pass: a plain function, called in this thread with the report of each pass
                that got past its scan, a pass cut short by an outage included (its
                ``interrupted`` is set). A pass whose scan failed has no report. What
                ``on_pass`` raises ends the loop and propagates.

        Raises:
            ConfigurationError: for a bad ``batch`` or ``on_pass`` (one that returns a
                coroutine is refused at its first call).
            StoreError: a store failure that waiting does not mend (credentials refused, tables
                or keys changed outside payonce) ends the loop.
            StoreClosedError: the store was closed while the loop ran. Set ``stop`` and let
                ``run`` return before closing the store it uses.
        """
        self._check_batch(batch)
        _check_on_pass(on_pass)
        outages = _OutageLog()
        while not stop.is_set():
            closed: list[StoreClosedError] = []
            try:
                report: ReconcileReport = self._drive(self._pass(batch, closed))
            except StoreClosedError:
                raise  # unlike an outage, this never passes
            except StoreUnavailableError as exc:
                outages.failed(str(exc))  # an outage passes: keep the loop alive
                idle = True
            else:
                if on_pass is not None:
                    _hand_over(on_pass, report)
                if closed:
                    raise closed[0]  # after its report: what the pass resolved is handed over
                idle = outages.after(report)
            if idle:
                stop.wait(interval.total_seconds())

    def audit(
        self, *, since: datetime | None = None, after: int = 0, limit: int = 100
    ) -> AuditReport:
        """Check SUCCEEDED records against the provider (SCENARIOS R19); change nothing.

        Reads the ledger's ``succeeded`` entries with a sequence number above ``after`` (and,
        if given, stamped at or after ``since``), looks each record still SUCCEEDED up at the
        provider by its ``payonce_key``, and reports every disagreement as a ``Discrepancy``:
        ``ledger_without_gateway`` (the provider has no such object), ``gateway_failed`` (its
        object failed) or ``object_mismatch`` (another id, amount or currency). No record or
        ledger entry is written, and the provider is only read.

        Args:
            since: audit only successes recorded at or after this instant.
            after: the ledger sequence number to start after (``AuditReport.cursor`` of a
                previous audit continues it).
            limit: the most records to ask the provider about in this call.

        On PostgreSQL the audit first takes the ledger horizon (as ``seal_checkpoint`` does: a
        short table lock that waits for the ledger writers in flight) and reads no entry past
        it, so a continued audit never skips an entry that committed late with a lower number.

        Raises:
            ConfigurationError: for a bad argument.
            ConflictError: (PostgreSQL) writers kept the ledger busy while the horizon waited;
                nothing was read: audit again.
            StoreUnavailableError: the store could not be read.
        """
        self._check_audit(since, after, limit)
        report: AuditReport = self._drive(self._audit(since, after, limit))
        return report

    def _drive(self, flow: _Pass) -> Any:
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                target, method, args, kwargs = (
                    flow.send(result) if error is None else flow.throw(error)
                )
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                on = self.store if target == "store" else self.gateway
                result = getattr(on, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - handed to the pass, which decides
                error = exc


class AsyncReconciler(_ReconcilerCore):
    """The async twin of ``Reconciler``: the same pass, awaited.

    ``store`` may be an ``AsyncStore`` or a sync ``Store`` (run in a worker thread); the gateway
    may be an ``AsyncGateway`` or a sync one.
    """

    def __init__(
        self,
        store: AsyncStore | Store,
        gateway: AsyncGateway | Gateway,
        *,
        clock: Clock | None = None,
        lease: timedelta = timedelta(seconds=60),
        recheck: timedelta = timedelta(hours=1),
    ) -> None:
        from payonce.stores._threaded import ThreadedAsyncStore  # noqa: PLC0415 - L4 adapter

        if not inspect.iscoroutinefunction(getattr(store, "scan", None)):
            if not isinstance(store, Store):
                raise ConfigurationError(
                    f"AsyncReconciler needs an AsyncStore or a Store; got {type(store).__name__}",
                    option="store",
                )
            store = ThreadedAsyncStore(store)
        super().__init__(store, gateway, clock=clock, lease=lease, recheck=recheck)

    async def run_once(self, batch: int = 100) -> ReconcileReport:
        """See ``Reconciler.run_once``."""
        self._check_batch(batch)
        report: ReconcileReport = await self._drive(self._pass(batch))
        return report

    async def run(
        self,
        stop: asyncio.Event,
        *,
        interval: timedelta = timedelta(seconds=5),
        batch: int = 100,
        on_pass: Callable[[ReconcileReport], object] | None = None,
    ) -> None:
        """See ``Reconciler.run``; ``on_pass`` is a plain function, called in the loop's task
        (a coroutine function is refused with ``ConfigurationError``)."""
        self._check_batch(batch)
        _check_on_pass(on_pass)
        outages = _OutageLog()
        while not stop.is_set():
            closed: list[StoreClosedError] = []
            try:
                report: ReconcileReport = await self._drive(self._pass(batch, closed))
            except StoreClosedError:
                raise  # unlike an outage, this never passes
            except StoreUnavailableError as exc:
                outages.failed(str(exc))
                idle = True
            else:
                if on_pass is not None:
                    _hand_over(on_pass, report)
                if closed:
                    raise closed[0]  # after its report, as Reconciler.run
                idle = outages.after(report)
            if idle:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval.total_seconds())

    async def audit(
        self, *, since: datetime | None = None, after: int = 0, limit: int = 100
    ) -> AuditReport:
        """See ``Reconciler.audit``."""
        self._check_audit(since, after, limit)
        report: AuditReport = await self._drive(self._audit(since, after, limit))
        return report

    async def _drive(self, flow: _Pass) -> Any:
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                target, method, args, kwargs = (
                    flow.send(result) if error is None else flow.throw(error)
                )
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                on = self.store if target == "store" else self.gateway
                result = getattr(on, method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:  # noqa: BLE001 - handed to the pass, which decides
                error = exc

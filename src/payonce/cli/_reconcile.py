"""``payonce reconcile``: resolve crashed workers and lost answers against the provider."""

import enum
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table

from payonce._clock import SystemClock
from payonce._protocols import Gateway, Store
from payonce._reconciler import MOST_BATCH, Reconciler, ReconcileReport
from payonce.cli._common import (
    DEFAULT_STORE,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_STORE,
    JsonOption,
    Out,
    StoreOption,
    UsageError,
    env,
    handled,
    open_for_reading,
)

__all__ = ["GatewayName", "reconcile"]

_COUNTS = ("scanned", "succeeded", "failed", "resent", "flagged", "skipped")


class GatewayName(enum.StrEnum):
    """The providers ``reconcile`` can ask."""

    STRIPE = "stripe"
    SIMULATED = "simulated"


def reconcile(
    once: Annotated[
        bool, typer.Option("--once", help="Run one pass and exit instead of until Ctrl-C.")
    ] = False,
    batch: Annotated[
        int,
        typer.Option(
            "--batch", min=1, max=MOST_BATCH, metavar="N", help="Records per pass, oldest first."
        ),
    ] = 100,
    gateway: Annotated[
        GatewayName,
        typer.Option(
            "--gateway",
            case_sensitive=False,
            help="stripe: the API key comes from the environment variable STRIPE_API_KEY only. "
            "simulated: an in-process provider that knows no earlier call (it settles records "
            "by making them anew), for demos and tests only.",
        ),
    ] = GatewayName.STRIPE,
    api_base: Annotated[
        str | None,
        typer.Option(
            "--stripe-api-base",
            metavar="URL",
            help="Send Stripe requests to a Stripe-compatible server at URL (e.g. a test mock).",
        ),
    ] = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.01,
            max=86_400.0,
            metavar="SECONDS",
            help="Without --once: how long to wait after a pass that found nothing to do.",
        ),
    ] = 5.0,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Resolve stale CLAIMED and UNKNOWN records: ask the provider what became of each call.

    Prints the counts per resolution (succeeded, failed, resent, flagged for review, skipped).
    With --once, exit 1 when records still need recovery after the pass (those flagged for
    review need a person), 3 when the store went away during the pass. Without --once it runs
    until SIGINT or SIGTERM, then prints the totals and exits 0.
    """
    out = Out(as_json)
    with handled(out):
        provider = _gateway(gateway, api_base)
        store = open_for_reading(store_url)
        try:
            reconciler = Reconciler(store, provider, clock=SystemClock())
            if once:
                report = reconciler.run_once(batch)
                if report.interrupted is not None:
                    # What the pass resolved is shown; the store is gone, so no recount.
                    _finish(out, report, left=None, capped=False, passes=1)
                    raise typer.Exit(EXIT_STORE)
                left = len(store.scan(now=reconciler.clock.now(), limit=batch))
                code = EXIT_PROBLEM if left else EXIT_OK
                _finish(out, report, left=left, capped=left >= batch, passes=1)
                raise typer.Exit(code)
            total, passes, cut = _run(out, reconciler, store, batch, timedelta(seconds=interval))
        finally:
            store.close()
    _finish(out, total, left=None, capped=False, passes=passes, loop_cut_short=cut)


def _gateway(name: GatewayName, api_base: str | None) -> Gateway:
    if name is GatewayName.SIMULATED:
        if api_base is not None:
            raise UsageError("--stripe-api-base applies to --gateway stripe only; remove it")
        from payonce.gateways.simulated import SimulatedGateway  # noqa: PLC0415

        return SimulatedGateway(clock=SystemClock())
    api_key = env("STRIPE_API_KEY")
    if api_key is None:
        raise UsageError(
            "--gateway stripe needs the Stripe API key in the environment variable "
            "STRIPE_API_KEY (it is never taken as an option, so it stays out of shell history "
            "and process lists); set it and run again"
        )
    try:
        import stripe  # noqa: PLC0415 - the stripe extra is optional

        from payonce.gateways.stripe import StripeGateway  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"--gateway stripe needs the stripe extra: pip install 'payonce[stripe]' ({exc.name} "
            "is missing)"
        ) from None
    options: dict[str, Any] = {}
    if api_base is not None:
        options["base_addresses"] = {"api": api_base}
    return StripeGateway(stripe.StripeClient(api_key, **options))


def _run(
    out: Out, reconciler: Reconciler, store: Store, batch: int, interval: timedelta
) -> tuple[ReconcileReport, int, int]:
    """``Reconciler.run`` until SIGINT or SIGTERM, printing each pass and adding up the totals
    (and the passes an outage cut short). A store outage is waited out, as the library's loop
    does; its start and end go to stderr."""
    stop = threading.Event()
    on_signal = _stopping(stop)
    previous = signal.signal(signal.SIGINT, on_signal), signal.signal(signal.SIGTERM, on_signal)
    total, passes, cut = ReconcileReport(), 0, 0

    def on_pass(report: ReconcileReport) -> None:
        nonlocal passes, cut
        passes += 1
        cut += report.interrupted is not None
        for name in _COUNTS:
            setattr(total, name, getattr(total, name) + getattr(report, name))
        total.reasons.update(report.reasons)
        if out.json:
            out.emit({"pass": passes, **_counts(report), "interrupted": report.interrupted})
        else:
            line = f"pass {passes}: " + ", ".join(f"{n} {getattr(report, n)}" for n in _COUNTS)
            if report.interrupted is not None:
                line += " (cut short: the store became unavailable)"
            out.console.print(line)
            sys.stdout.flush()

    if not out.json:
        out.console.print(f"Reconciling {store!r} every pass of up to {batch}; Ctrl-C stops.")
        sys.stdout.flush()
    try:
        with _logging_to_stderr():
            reconciler.run(stop, interval=interval, batch=batch, on_pass=on_pass)
    finally:  # the handlers as they were, for a caller that runs the command in its process
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    return total, passes, cut


def _stopping(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    """The SIGINT/SIGTERM handler that stops the loop.

    It sets ``stop`` from a thread of its own: the handler runs in the main thread between two
    bytecodes, possibly inside ``stop.wait()`` while that holds the event's lock, and
    ``stop.set()`` there would wait for that lock for ever (the loop then never stopped on
    SIGTERM, and Ctrl-C had to be pressed twice).
    """

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # A second Ctrl-C ends the process at once, even inside a slow provider call.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # A daemon thread: starting a non-daemon one takes a lock of the threading module
        # that the interrupted main thread may hold (Python 3.11, 3.12).
        threading.Thread(target=stop.set, name="payonce-stop", daemon=True).start()

    return on_signal


@contextmanager
def _logging_to_stderr() -> Iterator[None]:
    """The Reconciler's log lines (an outage starting, a pass cut short, the store back) on
    stderr as they are, for the loop only: the logger is as it was afterwards, for a caller
    that runs the command in its own process."""
    logger = logging.getLogger("payonce.reconciler")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _counts(report: ReconcileReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in _COUNTS}


def _finish(
    out: Out,
    report: ReconcileReport,
    *,
    left: int | None,
    capped: bool,
    passes: int,
    loop_cut_short: int | None = None,
) -> None:
    """The report of one pass (one an outage cut short is reported as the error of an exit 3),
    or the loop's totals (``loop_cut_short``: how many of its passes an outage cut short)."""
    failure = (
        f"the store became unavailable during the pass ({report.interrupted}). Run payonce "
        "reconcile --once again once the store answers: the records it did not reach stay due."
        if loop_cut_short is None and report.interrupted is not None
        else None
    )
    if out.json:
        data: dict[str, Any] = {"passes": passes, **_counts(report), "reasons": report.reasons}
        if loop_cut_short is None:
            data["interrupted"] = report.interrupted
        else:
            data["cut_short"] = loop_cut_short
        if left is not None:
            data["still_due"] = left
            data["still_due_capped"] = capped
        if failure is not None:
            data.update(error="StoreUnavailableError", message=failure, exit_code=EXIT_STORE)
        out.emit(data)
        return
    title = "Reconcile pass" if passes == 1 else f"Reconcile: {passes} passes"
    table = Table(title=title, title_justify="left")
    table.add_column("resolution")
    table.add_column("records", justify="right")
    for name, label in (
        ("scanned", "scanned (needed recovery)"),
        ("succeeded", "succeeded (found at the provider or resent)"),
        ("failed", "failed (definite failure at the provider)"),
        ("resent", "resent with the same provider key"),
        ("flagged", "flagged for review (left UNKNOWN)"),
        ("skipped", "skipped (held elsewhere, or flagged recently)"),
    ):
        table.add_row(label, str(getattr(report, name)))
    out.console.print(table)
    if report.reasons:
        reasons = Table(title="Flagged for review", title_justify="left")
        reasons.add_column("key", overflow="fold")
        reasons.add_column("reason", overflow="fold")
        for key, why in sorted(report.reasons.items()):
            reasons.add_row(key, why)
        out.console.print(reasons)
    if left:
        more = " or more" if capped else ""
        out.console.print(
            f"{left}{more} record(s) still need recovery: see them with `payonce show KEY`; "
            "those flagged for review need a person's decision before any new attempt."
        )
    if loop_cut_short:
        out.console.print(
            f"{loop_cut_short} pass(es) stopped early when the store became unavailable; the "
            "records they did not reach stay due."
        )
    if failure is not None:
        out.error(failure)

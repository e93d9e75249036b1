"""``payonce purge``: delete finished records past their retention (their ledger stays)."""

from collections import Counter
from datetime import datetime, timedelta
from typing import Annotated, Any, Final

import typer
from rich.table import Table

from payonce._clock import SystemClock
from payonce._model import Entry
from payonce._protocols import Store
from payonce.cli._common import (
    DEFAULT_STORE,
    JsonOption,
    Out,
    StoreOption,
    UsageError,
    all_entries,
    format_duration,
    format_time,
    handled,
    open_for_reading,
    parse_duration,
)

__all__ = ["purge"]

DEFAULT_RETENTION: Final = "30d"
# Below the provider's idempotency window (Stripe: 24 h) a purged key claimed again would send
# the same provider key and get the provider's stored answer to the old call (DESIGN §5).
MIN_RETENTION: Final = timedelta(hours=24)
_LIMIT: Final = 1000


def purge(
    retention: Annotated[
        str,
        typer.Option(
            "--retention",
            metavar="DURATION",
            help="Purge SUCCEEDED and FAILED records last updated longer ago than this "
            "(e.g. 30d, 72h, 1d12h; at least 24h, the provider's idempotency window).",
        ),
    ] = DEFAULT_RETENTION,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Report what would be purged; change nothing."),
    ] = False,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Delete finished (SUCCEEDED, FAILED) records older than the retention, 30 days by
    default. Their ledger entries stay, and each purge adds a `purged` entry; CLAIMED and
    UNKNOWN records are never purged. A purged key may be claimed again by a new intent.
    """
    out = Out(as_json)
    with handled(out):
        keep = parse_duration(retention)
        if keep < MIN_RETENTION:
            raise UsageError(
                f"--retention {retention} is shorter than 24h, the provider's idempotency "
                "window: a key claimed again inside it would get the provider's answer to the "
                "old call. Use 24h or more."
            )
        store = open_for_reading(store_url)
        try:
            now = SystemClock().now()
            if dry_run:
                due = _would_purge(store, now - keep)
                _report_dry_run(out, keep, now - keep, due)
                return
            purged = 0
            while True:
                done = store.purge(now=now, retention=keep, limit=_LIMIT)
                purged += done
                if done < _LIMIT:
                    break
        finally:
            store.close()
    if out.json:
        out.emit(
            {
                "dry_run": False,
                "retention": format_duration(keep),
                "cutoff": (now - keep).isoformat(),
                "purged": purged,
            }
        )
    else:
        out.console.print(
            f"Purged {purged} finished record(s) last updated at or before "
            f"{format_time(now - keep)} (retention {format_duration(keep)})."
        )


def _would_purge(store: Store, cutoff: datetime) -> Counter[tuple[str, str]]:
    """(scope, status) counts of the records a purge at ``cutoff`` would delete, read-only.

    The newest ledger entry of each key says what its record is now: a terminal status_to
    means a live SUCCEEDED or FAILED record updated at that entry's time (a purge or release
    leaves status_to empty).
    """
    last: dict[tuple[str, str], Entry] = {}
    for entry in all_entries(store):
        last[(entry.scope, entry.key)] = entry
    due: Counter[tuple[str, str]] = Counter()
    for (scope, _key), entry in last.items():
        if entry.status_to is not None and entry.status_to.terminal and entry.at <= cutoff:
            due[(scope, entry.status_to.value)] += 1
    return due


def _report_dry_run(
    out: Out, keep: timedelta, cutoff: datetime, due: Counter[tuple[str, str]]
) -> None:
    total = sum(due.values())
    if out.json:
        data: dict[str, Any] = {
            "dry_run": True,
            "retention": format_duration(keep),
            "cutoff": cutoff.isoformat(),
            "would_purge": total,
            "by_scope": [
                {"scope": scope, "status": status, "records": n}
                for (scope, status), n in sorted(due.items())
            ],
        }
        out.emit(data)
        return
    out.console.print(
        f"Would purge {total} finished record(s) last updated at or before "
        f"{format_time(cutoff)} (retention {format_duration(keep)}); nothing was changed."
    )
    if not total:
        return
    table = Table()
    table.add_column("scope")
    table.add_column("status")
    table.add_column("records", justify="right")
    for (scope, status), n in sorted(due.items()):
        table.add_row(scope, status, str(n))
    out.console.print(table)

"""``payonce ledger verify | seal | tail | export``."""

import contextlib
import json
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from payonce._clock import SystemClock
from payonce._errors import LedgerCorruptedError
from payonce._ledger import seal_checkpoint, verify_ledger
from payonce._model import Checkpoint
from payonce._protocols import Store
from payonce.cli._common import (
    DEFAULT_STORE,
    EXIT_PROBLEM,
    JsonOption,
    Out,
    StoreOption,
    UsageError,
    all_entries,
    entry_dict,
    handled,
    open_for_reading,
)
from payonce.cli._show import entries_table

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    name="ledger",
    help="Verify, seal, read and export the tamper-evident ledger.",
    no_args_is_help=True,
)


@ledger_app.command("verify")
def verify(
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            metavar="HASH",
            help="A checkpoint hash kept outside the store; verification fails if it is missing.",
        ),
    ] = None,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Check every entry, chain, checkpoint and record head. Exit 1 if the ledger was tampered
    with, naming the first bad entry."""
    out = Out(as_json)
    with handled(out):
        store = open_for_reading(store_url)
        try:
            report = verify_ledger(store, anchor=anchor)
        except LedgerCorruptedError as exc:
            detail = {"verified": False, **exc.to_dict()}
            out.fail(EXIT_PROBLEM, exc.message, detail)
        finally:
            store.close()
    last = report.last_checkpoint
    if out.json:
        out.emit(
            {
                "verified": True,
                "entries": report.entries,
                "keys": report.keys,
                "records": report.records,
                "checkpoints": report.checkpoints,
                "last_seq": report.last_seq,
                "last_checkpoint": None if last is None else last.hash,
            }
        )
        return
    table = Table(title="Ledger verified", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("count", overflow="fold")
    table.add_row("entries", str(report.entries))
    table.add_row("keys (chains)", str(report.keys))
    table.add_row("live records", str(report.records))
    table.add_row("checkpoints", str(report.checkpoints))
    table.add_row("last entry", str(report.last_seq))
    table.add_row("last checkpoint", "-" if last is None else last.hash)
    out.console.print(table)


@ledger_app.command("seal")
def seal(
    verify_first: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Verify the whole ledger first and seal nothing if it fails (the default); "
            "--no-verify skips that read on a large ledger verified on its own schedule.",
        ),
    ] = True,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Seal the entries written since the newest checkpoint into a new checkpoint and print
    its hash, to keep outside the store. Run it periodically (cron); safe under traffic."""
    out = Out(as_json)
    with handled(out):
        store = open_for_reading(store_url)
        try:
            if verify_first:
                try:
                    verify_ledger(store)
                except LedgerCorruptedError as exc:
                    message = f"nothing was sealed: {exc.message}"
                    detail = {"sealed": False, **exc.to_dict(), "message": message}
                    out.fail(EXIT_PROBLEM, message, detail)
            sealed = seal_checkpoint(store, now=SystemClock().now())
            # A new checkpoint's number is the count; without one the store is asked.
            total = sealed.number if sealed is not None else len(store.checkpoints())
        finally:
            store.close()
    if out.json:
        out.emit(
            {
                "sealed": sealed is not None,
                "verified": verify_first,
                "checkpoint": None if sealed is None else _checkpoint_dict(sealed),
                "checkpoints": total,
            }
        )
    elif sealed is None:
        out.console.print(
            f"Nothing to seal: no ledger entry to seal since checkpoint {total}."
            if total
            else "Nothing to seal: the ledger is empty."
        )
    else:
        out.console.print(
            f"Sealed checkpoint {sealed.number}: entries {sealed.first_seq} to {sealed.last_seq} "
            f"({sealed.count} entries).\nhash {sealed.hash}\nKeep this hash outside the store: "
            "`payonce ledger verify --anchor HASH` then fails if the ledger is truncated or "
            "rewritten."
        )


def _checkpoint_dict(checkpoint: Checkpoint) -> dict[str, object]:
    return {
        "number": checkpoint.number,
        "at": checkpoint.at.isoformat(),
        "first_seq": checkpoint.first_seq,
        "last_seq": checkpoint.last_seq,
        "count": checkpoint.count,
        "digest": checkpoint.digest,
        "prev_hash": checkpoint.prev_hash,
        "hash": checkpoint.hash,
    }


@ledger_app.command("tail")
def tail(
    count: Annotated[
        int,
        typer.Option("-n", "--count", min=1, max=1_000_000, help="How many of the newest entries."),
    ] = 20,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Show the newest ledger entries, oldest of them first. Reads the whole ledger once."""
    out = Out(as_json)
    with handled(out):
        store = open_for_reading(store_url)
        try:
            # Stores read the ledger forwards only; a bounded deque keeps the last N.
            newest = list(deque(all_entries(store), maxlen=count))
        finally:
            store.close()
    if out.json:
        out.emit([entry_dict(e) for e in newest])
        return
    out.console.print(
        entries_table(newest, title=f"Newest ledger entries ({len(newest)})", with_key=True)
    )


@ledger_app.command("export")
def export(
    path: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Write to FILE (replaced whole, only once complete) instead of stdout.",
            dir_okay=False,
        ),
    ] = None,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Export every ledger entry as JSON Lines, one entry per line with every field.

    ``detail`` is the stored canonical JSON text, so the export keeps exactly what each hash
    covers. With --out, a summary is printed (as JSON with --json).
    """
    out = Out(as_json)
    with handled(out):
        store = open_for_reading(store_url)
        try:
            if path is None:
                count = _write_lines(store, sys.stdout.write)
                sys.stdout.flush()
            else:
                if not path.parent.resolve().is_dir():
                    raise UsageError(
                        f"cannot write {path}: its directory does not exist; create it or pass "
                        "another --out"
                    )
                count = _write_atomically(store, path)
        finally:
            store.close()
    if path is None:
        return
    if out.json:
        out.emit({"entries": count, "path": str(path)})
    else:
        out.console.print(f"Exported {count} ledger entries to {path}")


def _write_lines(store: Store, write: Callable[[str], object]) -> int:
    count = 0
    for entry in all_entries(store):
        write(json.dumps(entry_dict(entry), ensure_ascii=False) + "\n")
        count += 1
    return count


def _write_atomically(store: Store, path: Path) -> int:
    # A failure halfway leaves the previous file (or none), never a truncated export.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent.resolve())
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            count = _write_lines(store, handle.write)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    return count

"""What every command shares: options, exit codes, output, opening the store, errors.

Exit codes (documented in docs/cli.md and ``payonce --help``):

- 0: done, nothing wrong found;
- 1: the command ran and found a problem (ledger tampered, records left unresolved, the demo's
  checks failed) or payonce refused an operation;
- 2: usage or input error (bad option, invalid intent, bad store URL, missing secret);
- 3: the store is unavailable (unreachable, missing file, damaged database).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from payonce._errors import (
    ConfigurationError,
    IntentError,
    PayonceError,
    StoreError,
    StoreMissingError,
)
from payonce._intent import format_amount
from payonce._model import Entry, Record
from payonce._protocols import Store
from payonce.stores import open_store

__all__ = [
    "DEFAULT_STORE",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_STORE",
    "EXIT_USAGE",
    "JsonOption",
    "Out",
    "StoreOption",
    "UsageError",
    "all_entries",
    "entry_dict",
    "env",
    "format_duration",
    "format_time",
    "handled",
    "open_for_reading",
    "parse_duration",
    "record_dict",
    "sqlite_path",
]

EXIT_OK: Final = 0
EXIT_PROBLEM: Final = 1
EXIT_USAGE: Final = 2
EXIT_STORE: Final = 3

DEFAULT_STORE: Final = "sqlite:///payonce.db"
_BATCH: Final = 5000

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="PAYONCE_STORE",
        metavar="URL",
        help="The store: sqlite:///path.db, postgresql://…, redis://…, memory://.",
        show_envvar=True,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print JSON for machines instead of tables."),
]


class UsageError(Exception):
    """Bad input to the command line itself (not to payonce): exit 2, message says the fix."""


@dataclass(slots=True)
class Out:
    """Where a command writes: tables to stdout, errors to stderr, or JSON to stdout only."""

    json: bool
    # No markup: keys, reasons and ledger details are data, and "[...]" in them must print as is.
    console: Console = field(default_factory=lambda: Console(highlight=False, markup=False))
    err: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, markup=False)
    )

    def emit(self, data: Any) -> None:
        """Print one JSON document on stdout."""
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def fail(self, code: int, message: str, data: dict[str, Any] | None = None) -> NoReturn:
        """Report an error (as JSON with ``--json``, else on stderr) and exit with ``code``."""
        if self.json:
            self.emit({**(data or {"error": "error", "message": message}), "exit_code": code})
        else:
            self.error(message)
        raise typer.Exit(code)

    def error(self, message: str) -> None:
        """The ``error:`` line on stderr, for the tables' mode."""
        self.err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def _exit_code(exc: PayonceError) -> int:
    if isinstance(exc, StoreMissingError):
        return EXIT_STORE  # the store a command was pointed at does not exist
    if isinstance(exc, ConfigurationError | IntentError):
        return EXIT_USAGE
    if isinstance(exc, StoreError):
        return EXIT_STORE
    return EXIT_PROBLEM  # LedgerCorruptedError, and refusals such as a conflict


@contextmanager
def handled(out: Out) -> Iterator[None]:
    """Turn payonce's errors into a message and an exit code; never a traceback.

    Payonce's messages already say what to do next and never carry secrets (DESIGN §9, I8).
    """
    try:
        yield
    except PayonceError as exc:
        out.fail(_exit_code(exc), exc.message, exc.to_dict())
    except UsageError as exc:
        out.fail(EXIT_USAGE, str(exc), {"error": "UsageError", "message": str(exc)})


def sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names; None for other schemes and ``:memory:``."""
    if not url.lower().startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].partition("?")[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def open_for_reading(url: str) -> Store:
    """Open an existing store, creating and migrating nothing: a mistyped ``--store`` must not
    leave an empty SQLite file, payonce tables or a Redis prefix behind and report "nothing
    found".

    Raises:
        StoreMissingError: no store at the URL (exit 3).
        ConfigurationError, StoreError: from ``open_store``.
    """
    try:
        return open_store(url, create=False)
    except StoreMissingError as exc:
        raise StoreMissingError(
            f"{exc.message} Pass --store URL, or set PAYONCE_STORE, to an existing store.",
            option=getattr(exc, "option", "store"),
        ) from None


def all_entries(store: Store) -> Iterator[Entry]:
    """Every ledger entry in sequence order, read in batches."""
    after = 0
    while True:
        batch = store.entries(after=after, limit=_BATCH)
        if not batch:
            return
        yield from batch
        after = batch[-1].seq


def format_time(at: datetime | None) -> str:
    """A timestamp for tables: UTC to the second."""
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def record_dict(record: Record) -> dict[str, Any]:
    """A record as JSON, without the stored intent (it holds raw customer ids; I8)."""
    return {
        "scope": record.scope,
        "key": record.key,
        "status": record.status.value,
        "operation": record.operation,
        "amount": record.amount,
        "currency": record.currency,
        "amount_display": format_amount(record.amount, record.currency),
        "provider_key": record.provider_key,
        "token": record.token,
        "attempts": record.attempt,
        "lease_expires_at": _iso(record.lease_expires_at),
        "reason": record.reason,
        "created_at": _iso(record.created_at),
        "updated_at": _iso(record.updated_at),
        "family": record.family,
        "generation": record.generation,
        "fingerprint": record.fingerprint,
        "ledger_head": record.ledger_head,
    }


def entry_dict(entry: Entry) -> dict[str, Any]:
    """Every field of a ledger entry as JSON. ``detail`` stays the stored canonical JSON text,
    so that an export keeps what the hash covers byte for byte."""
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "scope": entry.scope,
        "key": entry.key,
        "event": entry.event.value,
        "status_from": None if entry.status_from is None else entry.status_from.value,
        "status_to": None if entry.status_to is None else entry.status_to.value,
        "token": entry.token,
        "attempt": entry.attempt,
        "amount": entry.amount,
        "currency": entry.currency,
        "detail": entry.detail,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


_DURATION: Final = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_UNITS: Final = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``72h``, ``1d12h``, ``90m``, ``3600s`` or ``2w`` as a timedelta.

    Raises:
        UsageError: for anything else.
    """
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or _DURATION.sub("", compact).strip():
        raise UsageError(
            f"{text!r} is not a duration; write a number and a unit, e.g. 30d, 72h, 1d12h, 90m "
            "or 3600s (w, d, h, m, s)"
        )
    total = timedelta(0)
    try:
        for amount, unit in parts:
            total += timedelta(**{_UNITS[unit]: int(amount)})
    except OverflowError:
        raise UsageError(
            f"{text.strip()[:40]!r} is longer than any duration payonce can count; write a "
            "shorter one (days count up to 999999999d)"
        ) from None
    return total


def format_duration(duration: timedelta) -> str:
    """The inverse of ``parse_duration`` for whole seconds: ``timedelta(days=1, hours=12)``
    is ``1d12h``."""
    seconds = int(duration.total_seconds())
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out) or "0s"


def env(name: str) -> str | None:
    """An environment variable; the CLI is the one place payonce reads them (STYLE)."""
    value = os.environ.get(name)
    return value if value else None

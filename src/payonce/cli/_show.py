"""``payonce show KEY``: one record, its outcome and its ledger entries."""

import json
from typing import Annotated, Any

import typer
from rich.json import JSON
from rich.table import Table

from payonce._intent import format_amount
from payonce._model import Entry, Record
from payonce._protocols import Store
from payonce.cli._common import (
    DEFAULT_STORE,
    JsonOption,
    Out,
    StoreOption,
    UsageError,
    all_entries,
    entry_dict,
    format_time,
    handled,
    open_for_reading,
    record_dict,
)

__all__ = ["entries_table", "show"]


def show(
    key: Annotated[str, typer.Argument(help="The record key (k1_…), as errors and logs show it.")],
    scope: Annotated[
        str | None,
        typer.Option(
            "--scope",
            help="The scope of the record. Found from the key's ledger entries when omitted.",
        ),
    ] = None,
    store_url: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
) -> None:
    """Show a record (status, amount, lease, attempts, times), its outcome and its ledger
    entries.

    Exit 2 when no record or ledger entry has the key, or when the key lives in several scopes
    and --scope is missing.
    """
    out = Out(as_json)
    with handled(out):
        store = open_for_reading(store_url)
        try:
            scope, record, entries = _find(store, key, scope)
        finally:
            store.close()
    outcome = None if record is None or record.outcome is None else json.loads(record.outcome)
    if out.json:
        out.emit(
            {
                "scope": scope,
                "key": key,
                "record": None if record is None else record_dict(record),
                "outcome": outcome,
                "entries": [entry_dict(e) for e in entries],
            }
        )
        return
    _print(out, scope, key, record, entries)


def _find(store: Store, key: str, scope: str | None) -> tuple[str, Record | None, list[Entry]]:
    entries = [e for e in all_entries(store) if e.key == key]
    if scope is None:
        scopes = sorted({e.scope for e in entries})
        if not scopes:
            raise UsageError(_absent(key, None))
        if len(scopes) > 1:
            raise UsageError(
                f"key {key} has ledger entries in {len(scopes)} scopes ({', '.join(scopes)}); "
                "pass --scope to choose one"
            )
        scope = scopes[0]
    mine = [e for e in entries if e.scope == scope]
    record = store.get(scope, key)
    if record is None and not mine:
        raise UsageError(_absent(key, scope))
    return scope, record, mine


def _absent(key: str, scope: str | None) -> str:
    where = "this store" if scope is None else f"scope {scope!r} of this store"
    hint = "" if key.startswith("k") and "_" in key else " Keys look like k1_ followed by 64 hex."
    return (
        f"no record or ledger entry has key {key} in {where}.{hint} Check --store, and compute "
        "the key of an intent with `payonce keys derive`."
    )


def _print(out: Out, scope: str, key: str, record: Record | None, entries: list[Entry]) -> None:
    console = out.console
    if record is None:
        gone = entries[-1].event.value if entries else "unknown"
        console.print(
            f"No live record for key {key} in scope {scope!r} (its last ledger event is "
            f"{gone}): only its ledger entries remain."
        )
    else:
        fields = Table(title=f"Record {key}", show_header=False, title_justify="left")
        fields.add_column("field", style="bold")
        fields.add_column("value", overflow="fold")
        rows: list[tuple[str, Any]] = [
            ("scope", record.scope),
            ("status", record.status.value),
            ("operation", record.operation),
            ("amount", format_amount(record.amount, record.currency)),
            ("provider key", record.provider_key),
            ("lease token", record.token),
            ("attempts", record.attempt),
            ("lease expires", format_time(record.lease_expires_at) or "-"),
            ("created", format_time(record.created_at)),
            ("updated", format_time(record.updated_at)),
        ]
        if record.reason:
            rows.append(("reason", record.reason))
        if record.family:
            rows.append(("family", f"{record.family} (generation {record.generation})"))
        for name, value in rows:
            fields.add_row(name, str(value))
        console.print(fields)
        if record.outcome is None:
            console.print(f"Outcome: none recorded ({record.status.value}).")
        else:
            console.print("Outcome:")
            console.print(JSON(record.outcome))
    console.print(entries_table(entries, title=f"Ledger entries ({len(entries)})"))


def entries_table(entries: list[Entry], *, title: str, with_key: bool = False) -> Table:
    """Ledger entries as a table, oldest first. With ``with_key`` (entries of many keys) the
    scope and key replace token, attempt and detail, which ``--json`` still gives."""
    table = Table(title=title, title_justify="left")
    table.add_column("seq", justify="right")
    table.add_column("at")
    if with_key:
        table.add_column("scope")
        table.add_column("key", overflow="fold")
    table.add_column("event", overflow="fold")
    table.add_column("status")
    if not with_key:
        table.add_column("token", justify="right")
        table.add_column("attempt", justify="right")
    table.add_column("amount", justify="right")
    if not with_key:
        table.add_column("detail", overflow="fold")
    for e in entries:
        row = [str(e.seq), format_time(e.at)]
        if with_key:
            row += [e.scope, e.key]
        row += [e.event.value, f"{_status(e.status_from)} → {_status(e.status_to)}"]
        if not with_key:
            row += [str(e.token), str(e.attempt)]
        row.append(format_amount(e.amount, e.currency))
        if not with_key:
            row.append("" if e.detail in ("{}", "null") else e.detail)
        table.add_row(*row)
    return table


def _status(status: object) -> str:
    return "-" if status is None else str(getattr(status, "value", status))

"""``payonce ledger verify | tail | export``."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from payonce import verify_ledger
from payonce.cli._common import entry_dict
from tests.cli.conftest import Cli, Seeded, json_out

_TRIGGERS = ("payonce_ledger_no_update", "payonce_ledger_no_delete")
_FIELDS = {
    "seq", "at", "scope", "key", "event", "status_from", "status_to", "token", "attempt",
    "amount", "currency", "detail", "prev_hash", "hash",
}  # fmt: skip


def _tamper(path: Path, sql: str) -> None:
    # As an attacker with file access would: the append-only triggers dropped first.
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for trigger in _TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute(sql)


def test_verify_reports_what_it_checked(known: Seeded, cli: Cli) -> None:
    store = known.open()
    try:
        expected = verify_ledger(store)
    finally:
        store.close()
    done = cli("ledger", "verify", "--store", known.url)
    assert done.returncode == 0, done.stderr
    assert "Ledger verified" in done.stdout
    report = json_out(cli("ledger", "verify", "--store", known.url, "--json"))
    assert report["verified"] is True
    assert report["entries"] == expected.entries
    assert report["keys"] == expected.keys == len(known.keys)
    assert report["records"] == expected.records
    assert report["last_seq"] == expected.last_seq


def test_verify_exits_1_and_names_the_edited_entry(known: Seeded, cli: Cli) -> None:
    _tamper(known.path, "UPDATE payonce_ledger SET amount = amount + 1 WHERE seq = 2")
    done = cli("ledger", "verify", "--store", known.url)
    assert done.returncode == 1
    assert "ledger verification failed at entry 2" in done.stderr
    assert "edited" in done.stderr
    assert "Traceback" not in done.stderr
    report = json_out(cli("ledger", "verify", "--store", known.url, "--json"))
    assert report["verified"] is False
    assert report["seq"] == 2
    assert report["exit_code"] == 1


def test_verify_exits_1_when_an_entry_was_deleted(known: Seeded, cli: Cli) -> None:
    _tamper(known.path, "DELETE FROM payonce_ledger WHERE seq = 3")
    report = json_out(cli("ledger", "verify", "--store", known.url, "--json"))
    assert report["verified"] is False
    assert "deleted" in report["reason"]


def test_verify_with_an_anchor_missing_from_the_store_exits_1(known: Seeded, cli: Cli) -> None:
    done = cli("ledger", "verify", "--anchor", "0" * 64, "--store", known.url)
    assert done.returncode == 1
    assert "anchored checkpoint" in done.stderr


def test_tail_shows_the_newest_entries(known: Seeded, cli: Cli) -> None:
    store = known.open()
    try:
        everything = list(store.entries(after=0, limit=1000))
    finally:
        store.close()
    newest = json_out(cli("ledger", "tail", "-n", "3", "--store", known.url, "--json"))
    assert newest == [entry_dict(e) for e in everything[-3:]]
    done = cli("ledger", "tail", "-n", "2", "--store", known.url)
    assert done.returncode == 0, done.stderr
    assert "Newest ledger entries (2)" in done.stdout
    shown = {e.key for e in everything[-2:]}
    older = {e.key for e in everything[:-2]} - shown
    assert older
    assert all(key in done.stdout for key in shown)
    assert not any(key in done.stdout for key in older)


def test_tail_refuses_a_count_below_one(known: Seeded, cli: Cli) -> None:
    done = cli("ledger", "tail", "-n", "0", "--store", known.url)
    assert done.returncode == 2
    assert "-n" in done.stderr


def test_export_writes_every_entry_with_every_field(known: Seeded, cli: Cli) -> None:
    store = known.open()
    try:
        everything = list(store.entries(after=0, limit=1000))
    finally:
        store.close()
    done = cli("ledger", "export", "--store", known.url)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == len(everything)
    assert all(set(line) == _FIELDS for line in lines)
    assert lines == [entry_dict(e) for e in everything]
    assert [line["hash"] for line in lines] == [e.hash for e in everything]


def test_export_to_a_file(known: Seeded, cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "ledger.jsonl"
    summary = json_out(
        cli("ledger", "export", "--out", str(target), "--store", known.url, "--json")
    )
    exported = cli("ledger", "export", "--store", known.url).stdout
    assert target.read_text(encoding="utf-8") == exported
    assert summary == {"entries": len(exported.splitlines()), "path": str(target)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ledger")] == []


def test_export_to_a_missing_directory_exits_2(known: Seeded, cli: Cli, tmp_path: Path) -> None:
    done = cli("ledger", "export", "--out", str(tmp_path / "no" / "x.jsonl"), "--store", known.url)
    assert done.returncode == 2
    assert "directory does not exist" in done.stderr


def test_ledger_commands_on_a_missing_store_exit_3(cli: Cli, no_db_left: Path) -> None:
    for command in (["verify"], ["tail"], ["export"]):
        done = cli("ledger", *command, "--store", f"sqlite:///{no_db_left}")
        assert done.returncode == 3, command
        assert "there is no store at" in done.stderr

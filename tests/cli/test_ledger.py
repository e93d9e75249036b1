"""``payonce ledger verify | seal | tail | export``."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from subprocess import CompletedProcess

from payonce import Intent, verify_ledger
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


def _on_an_edited_ledger(known: Seeded, cli: Cli, command: str) -> CompletedProcess[str]:
    """``payonce ledger COMMAND`` after entry 2 was edited: exit 1, naming that entry."""
    _tamper(known.path, "UPDATE payonce_ledger SET amount = amount + 1 WHERE seq = 2")
    done = cli("ledger", command, "--store", known.url)
    assert done.returncode == 1
    assert "ledger verification failed at entry 2" in done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_verify_exits_1_and_names_the_edited_entry(known: Seeded, cli: Cli) -> None:
    done = _on_an_edited_ledger(known, cli, "verify")
    assert "edited" in done.stderr
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


def test_verify_with_a_malformed_anchor_is_a_usage_error_not_tampering(
    known: Seeded, cli: Cli
) -> None:
    # Before, a typo in the anchor was reported as an edited ledger (exit 1, "stop writing").
    for typo in ("not-a-hash", "0" * 63, "g" * 64):
        done = cli("ledger", "verify", "--anchor", typo, "--store", known.url)
        assert done.returncode == 2, done.stderr
        assert "not a checkpoint hash" in done.stderr
        assert "tamper" not in done.stderr
        assert "edited" not in done.stderr


def test_seal_prints_a_checkpoint_that_verify_accepts_as_anchor(known: Seeded, cli: Cli) -> None:
    entries = json_out(cli("ledger", "verify", "--store", known.url, "--json"))["entries"]
    done = cli("ledger", "seal", "--store", known.url)
    assert done.returncode == 0, done.stderr
    assert f"Sealed checkpoint 1: entries 1 to {entries} ({entries} entries)." in done.stdout
    store = known.open()
    try:
        (checkpoint,) = store.checkpoints()
    finally:
        store.close()
    assert checkpoint.hash in done.stdout
    anchored = cli("ledger", "verify", "--anchor", checkpoint.hash, "--store", known.url)
    assert anchored.returncode == 0, anchored.stderr
    # The same hash in upper case, as some tools copy it, is the same anchor.
    upper = cli("ledger", "verify", "--anchor", checkpoint.hash.upper(), "--store", known.url)
    assert upper.returncode == 0, upper.stderr
    again = json_out(cli("ledger", "seal", "--store", known.url, "--json"))
    assert again == {"sealed": False, "verified": True, "checkpoint": None, "checkpoints": 1}
    assert "no ledger entry to seal since checkpoint 1" in cli(
        "ledger", "seal", "--store", known.url
    ).stdout.replace("\n", " ")


def test_seal_covers_only_the_entries_since_the_last_checkpoint(known: Seeded, cli: Cli) -> None:
    first = json_out(cli("ledger", "seal", "--store", known.url, "--json"))["checkpoint"]
    known.add("later", Intent("charge", 700, "usd", customer="cus_9", reference="later-1"))
    report = json_out(cli("ledger", "seal", "--store", known.url, "--json"))
    second = report["checkpoint"]
    assert report["sealed"] is True
    assert report["checkpoints"] == 2
    assert (second["number"], second["first_seq"]) == (2, first["last_seq"] + 1)
    assert second["count"] == 2  # the new intent's claimed and succeeded entries
    assert second["prev_hash"] == first["hash"]
    verified = json_out(cli("ledger", "verify", "--store", known.url, "--json"))
    assert verified["last_checkpoint"] == second["hash"]


def test_seal_refuses_a_tampered_ledger_and_seals_nothing(known: Seeded, cli: Cli) -> None:
    done = _on_an_edited_ledger(known, cli, "seal")
    assert "nothing was sealed" in done.stderr
    report = json_out(cli("ledger", "seal", "--store", known.url, "--json"))
    assert (report["sealed"], report["seq"], report["exit_code"]) == (False, 2, 1)
    store = known.open()
    try:
        assert list(store.checkpoints()) == []
    finally:
        store.close()
    # --no-verify seals what is there; the edited entry still fails verification afterwards.
    skipped = json_out(cli("ledger", "seal", "--no-verify", "--store", known.url, "--json"))
    assert (skipped["sealed"], skipped["verified"]) == (True, False)
    assert cli("ledger", "verify", "--store", known.url).returncode == 1


def test_seal_on_an_empty_store_seals_nothing(seeded: Seeded, cli: Cli) -> None:
    seeded.open().close()  # creates the file and its schema, no entry
    done = cli("ledger", "seal", "--store", seeded.url)
    assert done.returncode == 0, done.stderr
    assert "Nothing to seal: the ledger is empty." in done.stdout


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
    for command in (["verify"], ["seal"], ["tail"], ["export"]):
        done = cli("ledger", *command, "--store", f"sqlite:///{no_db_left}")
        assert done.returncode == 3, command
        assert "there is no store at" in done.stderr

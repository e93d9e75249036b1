"""``payonce purge``: finished records past retention; ``--dry-run`` changes nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from payonce import Status
from tests.cli.conftest import Cli, Seeded, json_out


def _snapshot(seeded: Seeded) -> tuple[int, dict[str, Status | None]]:
    store = seeded.open()
    try:
        entries = len(store.entries(after=0, limit=10_000))
        records = {}
        for name, key in seeded.keys.items():
            record = store.get(seeded.scopes[name], key)
            records[name] = None if record is None else record.status
    finally:
        store.close()
    return entries, records


def test_dry_run_reports_and_changes_nothing(known: Seeded, cli: Cli) -> None:
    before = _snapshot(known)
    report = json_out(cli("purge", "--dry-run", "--store", known.url, "--json"))
    assert _snapshot(known) == before
    assert report["dry_run"] is True
    assert report["retention"] == "30d"
    # Older than 30 days and finished: paid_old, declined_old (tenant-a), paid_b (tenant-b);
    # unknown_old is older but UNKNOWN, paid_new is finished but a day old.
    assert report["would_purge"] == 3
    assert report["by_scope"] == [
        {"scope": "tenant-a", "status": "FAILED", "records": 1},
        {"scope": "tenant-a", "status": "SUCCEEDED", "records": 1},
        {"scope": "tenant-b", "status": "SUCCEEDED", "records": 1},
    ]
    done = cli("purge", "--dry-run", "--store", known.url)
    assert done.returncode == 0, done.stderr
    assert "Would purge 3 finished record(s)" in done.stdout
    assert "nothing was changed" in done.stdout


def test_purge_deletes_what_the_dry_run_announced(known: Seeded, cli: Cli) -> None:
    announced = json_out(cli("purge", "--dry-run", "--store", known.url, "--json"))
    entries_before, _ = _snapshot(known)
    done = json_out(cli("purge", "--store", known.url, "--json"))
    assert done["purged"] == announced["would_purge"]
    entries_after, records = _snapshot(known)
    assert records == {
        "paid_old": None,
        "declined_old": None,
        "paid_new": Status.SUCCEEDED,
        "unknown_old": Status.UNKNOWN,  # never purged, however old
        "paid_b": None,
    }
    assert entries_after == entries_before + done["purged"]  # one `purged` entry each
    again = json_out(cli("purge", "--dry-run", "--store", known.url, "--json"))
    assert again["would_purge"] == 0


def test_retention_option_moves_the_cutoff(known: Seeded, cli: Cli) -> None:
    # 37 days: only paid_old (40 days) and paid_b (45 days) are older.
    report = json_out(
        cli("purge", "--dry-run", "--retention", "37d", "--store", known.url, "--json")
    )
    assert report["would_purge"] == 2
    assert report["retention"] == "37d"
    done = cli("purge", "--retention", "5w3d", "--store", known.url)
    assert done.returncode == 0, done.stderr
    assert "Purged 2 finished record(s)" in done.stdout
    assert "retention 38d" in done.stdout


def test_retention_below_a_day_is_refused(known: Seeded, cli: Cli) -> None:
    before = _snapshot(known)
    done = cli("purge", "--retention", "12h", "--store", known.url)
    assert done.returncode == 2
    assert "shorter than 24h" in done.stderr
    assert _snapshot(known) == before


def test_a_malformed_retention_is_refused(known: Seeded, cli: Cli) -> None:
    done = cli("purge", "--retention", "thirty days", "--store", known.url, "--json")
    assert done.returncode == 2
    assert "is not a duration" in json_out(done)["message"]


def test_help_states_the_default_retention(cli: Cli) -> None:
    done = cli("purge", "--help")
    assert done.returncode == 0
    assert "30 days by default" in done.stdout
    assert "--dry-run" in done.stdout


def test_purge_on_a_missing_store_exits_3(cli: Cli, no_db_left: Path) -> None:
    assert cli("purge", "--store", f"sqlite:///{no_db_left}").returncode == 3


def test_ages_are_what_the_fixture_says(known: Seeded) -> None:
    store = known.open()
    try:
        record = store.get("tenant-a", known.keys["paid_new"])
    finally:
        store.close()
    assert record is not None
    assert known.now - record.updated_at == timedelta(days=1)

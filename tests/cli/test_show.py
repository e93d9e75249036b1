"""``payonce show KEY``: a record, its outcome and its ledger entries, found by key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from payonce import Intent
from payonce._model import NewRecord
from tests.cli.conftest import Cli, Seeded, json_out


def test_show_prints_the_record_outcome_and_entries(known: Seeded, cli: Cli) -> None:
    key = known.keys["paid_old"]
    done = cli("show", key, "--store", known.url)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert key in text
    assert "tenant-a" in text  # the scope was found from the ledger
    assert "SUCCEEDED" in text
    assert "50.00 USD" in text
    assert '"id": "ch_paid_old"' in text  # the recorded outcome
    assert "claimed" in text  # its two ledger entries
    assert "succeeded" in text
    assert "Ledger entries (2)" in text


def test_show_json_matches_the_store(known: Seeded, cli: Cli) -> None:
    key = known.keys["declined_old"]
    shown = json_out(cli("show", key, "--store", known.url, "--json"))
    store = known.open()
    try:
        record = store.get("tenant-a", key)
        entries = [e for e in store.entries(after=0, limit=1000) if e.key == key]
    finally:
        store.close()
    assert record is not None
    assert shown["scope"] == "tenant-a"
    assert shown["record"]["status"] == "FAILED" == record.status.value
    assert shown["record"]["amount"] == record.amount
    assert shown["record"]["currency"] == "eur"
    assert shown["record"]["attempts"] == record.attempt
    assert shown["record"]["token"] == record.token
    assert shown["record"]["provider_key"] == record.provider_key
    assert shown["outcome"]["error"]["kind"] == "definite"
    assert [e["seq"] for e in shown["entries"]] == [e.seq for e in entries]
    assert [e["event"] for e in shown["entries"]] == ["claimed", "failed"]
    assert "intent" not in shown["record"]  # the stored intent holds raw customer ids (I8)
    assert "cus_2" not in str(shown)


def test_show_an_unknown_record_gives_its_reason(known: Seeded, cli: Cli) -> None:
    shown = json_out(cli("show", known.keys["unknown_old"], "--store", known.url, "--json"))
    assert shown["record"]["status"] == "UNKNOWN"
    assert shown["record"]["reason"]
    assert shown["outcome"] is None


def test_show_a_purged_record_keeps_its_entries(known: Seeded, cli: Cli) -> None:
    key = known.keys["paid_old"]
    assert cli("purge", "--store", known.url).returncode == 0
    done = cli("show", key, "--store", known.url)
    assert done.returncode == 0, done.stderr
    assert "No live record" in done.stdout
    assert "purged" in done.stdout
    shown = json_out(cli("show", key, "--store", known.url, "--json"))
    assert shown["record"] is None
    assert [e["event"] for e in shown["entries"]] == ["claimed", "succeeded", "purged"]


def test_show_with_scope_limits_to_that_scope(known: Seeded, cli: Cli) -> None:
    key = known.keys["paid_b"]
    assert (
        json_out(cli("show", key, "--scope", "tenant-b", "--store", known.url, "--json"))["record"][
            "operation"
        ]
        == "payout"
    )
    done = cli("show", key, "--scope", "tenant-a", "--store", known.url)
    assert done.returncode == 2
    assert "scope 'tenant-a'" in done.stderr
    assert "Traceback" not in done.stderr


def test_show_an_absent_key_exits_2_and_says_what_to_do(known: Seeded, cli: Cli) -> None:
    done = cli("show", "k1_" + "0" * 64, "--store", known.url)
    assert done.returncode == 2
    assert "no record or ledger entry has key" in done.stderr
    assert "payonce keys derive" in done.stderr
    failed = json_out(cli("show", "k1_" + "0" * 64, "--store", known.url, "--json"))
    assert failed["exit_code"] == 2


def test_show_refuses_a_key_in_two_scopes_without_scope(seeded: Seeded, cli: Cli) -> None:
    store = seeded.open()
    intent = Intent("charge", 100, "usd", customer="cus_9", reference="r")
    try:
        for scope in ("tenant-x", "tenant-y"):
            store.claim(
                NewRecord(
                    scope=scope,
                    key="k1_shared",
                    fingerprint="f" * 64,
                    intent="{}",
                    provider_key=f"po1_{scope}",
                    operation=intent.operation,
                    amount=intent.amount,
                    currency=intent.currency,
                ),
                now=seeded.now,
                lease_for=timedelta(minutes=1),
            )
    finally:
        store.close()
    done = cli("show", "k1_shared", "--store", seeded.url)
    assert done.returncode == 2
    assert "tenant-x, tenant-y" in done.stderr
    assert "--scope" in done.stderr
    chosen = json_out(
        cli("show", "k1_shared", "--scope", "tenant-y", "--store", seeded.url, "--json")
    )
    assert chosen["record"]["provider_key"] == "po1_tenant-y"
    assert chosen["record"]["status"] == "CLAIMED"


def test_show_on_a_missing_store_exits_3_and_creates_nothing(cli: Cli, no_db_left: Path) -> None:
    done = cli("show", "k1_x", "--store", f"sqlite:///{no_db_left}")
    assert done.returncode == 3
    assert "there is no store at" in done.stderr
    assert "payonce migrate" in done.stderr


def test_show_reads_the_store_from_payonce_store(known: Seeded, cli: Cli) -> None:
    done = cli("show", known.keys["paid_new"], "--json", env={"PAYONCE_STORE": known.url})
    assert json_out(done)["record"]["amount"] == 700

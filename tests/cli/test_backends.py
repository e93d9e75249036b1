"""The read, seal and purge commands on PostgreSQL and Redis, not only SQLite: the dry run reads
the ledger, the purge the records, and both must agree on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import redis

from payonce import Guard, Intent, OutcomeUnknownError, Store, open_store
from payonce.testing import ManualClock
from tests.cli.conftest import Cli, json_out
from tests.conftest import SECRET
from tests.faults import pg_worker
from tests.redis_cluster import delete_prefix

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["postgresql", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "postgresql":
        name, _ = pg_worker.create_database()
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            pg_worker.drop_database(name)
        return
    prefix = f"payonce-cli-{uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS)
    try:
        yield f"{REDIS}?prefix={prefix}"
    finally:
        delete_prefix(client, prefix)
        client.close()


def _seed(store: Store) -> dict[str, str]:
    now = datetime.now(UTC)
    keys = {}
    for name, age, outcome in (
        ("old", timedelta(days=40), "ok"),
        ("older", timedelta(days=50), "ok"),
        ("new", timedelta(days=2), "ok"),
        ("lost", timedelta(days=60), "unknown"),
    ):
        guard = Guard(store, secret=SECRET, scope="tenant-a", clock=ManualClock(now - age))

        def call(attempt: object, outcome: str = outcome) -> object:
            if outcome == "unknown":
                raise ConnectionResetError("lost")
            return {"id": "ch_1"}

        intent = Intent("charge", 1000, "usd", customer="cus_1", reference=f"r-{name}")
        try:
            keys[name] = guard.run(intent, call).key
        except OutcomeUnknownError as exc:
            keys[name] = exc.key  # type: ignore[attr-defined]
    return keys


def test_read_and_purge_commands(store_url: str, cli: Cli) -> None:
    store = open_store(store_url)
    try:
        keys = _seed(store)
    finally:
        store.close()
    assert json_out(cli("ledger", "verify", "--store", store_url, "--json"))["records"] == 4
    shown = json_out(cli("show", keys["lost"], "--store", store_url, "--json"))
    assert shown["record"]["status"] == "UNKNOWN"
    announced = json_out(cli("purge", "--dry-run", "--store", store_url, "--json"))
    assert announced["would_purge"] == 2  # old and older; new is young, lost is UNKNOWN
    purged = json_out(cli("purge", "--store", store_url, "--json"))
    assert purged["purged"] == announced["would_purge"]
    assert json_out(cli("show", keys["old"], "--store", store_url, "--json"))["record"] is None
    assert json_out(cli("ledger", "verify", "--store", store_url, "--json"))["verified"] is True
    sealed = json_out(cli("ledger", "seal", "--store", store_url, "--json"))["checkpoint"]
    anchored = cli("ledger", "verify", "--anchor", sealed["hash"], "--store", store_url, "--json")
    assert json_out(anchored)["last_checkpoint"] == sealed["hash"]
    exported = cli("ledger", "export", "--store", store_url).stdout.splitlines()
    assert (
        len(exported)
        == json_out(cli("ledger", "verify", "--store", store_url, "--json"))["entries"]
        == sealed["count"]
    )


def _left_behind(store_url: str) -> list[str]:
    """What payonce wrote at ``store_url``: its tables, or its keys under the URL's prefix."""
    if store_url.startswith("postgresql"):
        with pg_worker.admin_connection(store_url) as conn:
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE 'payonce%'"
            ).fetchall()
        return sorted(str(name) for (name,) in rows)
    prefix = store_url.partition("prefix=")[2]
    client = redis.Redis.from_url(REDIS)
    try:
        return sorted(k.decode() for k in client.scan_iter(match=f"*{prefix}*"))
    finally:
        client.close()


def test_read_commands_on_a_store_that_does_not_exist_exit_3_and_create_nothing(
    store_url: str, cli: Cli
) -> None:
    # A mistyped database or prefix: the read-only commands must not create the store and then
    # report an empty, verified ledger.
    for command in (["ledger", "verify"], ["show", "k1_x"], ["purge", "--dry-run"]):
        done = cli(*command, "--store", store_url, "--json")
        report = json_out(done)
        assert (done.returncode, report["error"]) == (3, "StoreMissingError"), command
        assert "payonce" in report["message"]
    assert _left_behind(store_url) == []
    # migrate creates it; then the same commands read it.
    assert cli("migrate", "--store", store_url, "--json").returncode == 0
    assert json_out(cli("ledger", "verify", "--store", store_url, "--json"))["verified"] is True

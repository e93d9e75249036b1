"""R15d on PostgreSQL: serialization failures and deadlocks (40001, 40P01) retry the database
work only — the gateway call is never repeated, and the outcome is recorded once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.sql
import pytest

from payonce import Attempt, Guard, Intent, Status, verify_ledger
from payonce.stores._postgres import PostgresStore
from tests.conftest import SCOPE, SECRET
from tests.faults import pg_worker

INTENT = Intent("charge", 5000, "usd", customer="cus_123", reference="order-r15d")


@pytest.fixture
def database() -> Iterator[str]:
    with pg_worker.migrated_database() as conninfo:
        yield conninfo


def _fail_ledger_inserts(conninfo: str, sqlstate: str, times: int) -> None:
    """The next ``times`` ledger inserts fail with ``sqlstate``, as a conflicting transaction
    would make them. The countdown is a sequence: unlike a table, it does not roll back with
    the failed statement."""
    fail = psycopg.sql.SQL(
        """
        CREATE FUNCTION payonce_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('payonce_test_countdown') <= {times} THEN
                RAISE EXCEPTION 'injected' USING ERRCODE = {sqlstate};
            END IF;
            RETURN NEW;
        END $$
        """
    ).format(times=psycopg.sql.Literal(times), sqlstate=psycopg.sql.Literal(sqlstate))
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE payonce_test_countdown")
        conn.execute(fail)
        conn.execute(
            "CREATE TRIGGER payonce_test_fail BEFORE INSERT ON payonce_ledger "
            "FOR EACH ROW EXECUTE FUNCTION payonce_test_fail()"
        )


def _failures_met(conninfo: str) -> Any:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT last_value FROM payonce_test_countdown").fetchone()
        return None if row is None else row[0]


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"], ids=["serialization", "deadlock"])
def test_r15d_database_retries_never_repeat_the_call(database: str, sqlstate: str) -> None:
    # Two failures: one on the claim's ledger row, one on the complete's.
    _fail_ledger_inserts(database, sqlstate, times=2)
    store = PostgresStore(database)
    calls: list[Attempt] = []
    try:
        guard = Guard(store, secret=SECRET, scope=SCOPE)

        def charge(attempt: Attempt) -> dict[str, str]:
            calls.append(attempt)
            return {"id": "ch_r15d"}

        outcome = guard.run(INTENT, charge)
        assert outcome.value == {"id": "ch_r15d"}
        assert len(calls) == 1
        assert _failures_met(database) >= 3  # both injected failures were met, then retried
        record = store.get(SCOPE, outcome.key)
        assert record is not None
        assert record.status is Status.SUCCEEDED
        assert guard.run(INTENT, charge).replayed
        assert len(calls) == 1
        assert verify_ledger(store).entries == 2
    finally:
        store.close()

"""Two PostgreSQL roles (SCENARIOS S4): an owner migrates, the service runs as a role that may
only SELECT and INSERT on the ledger, with the grants docs/stores-postgres.md gives.

Every store operation works as that role, and its attempts to rewrite history (UPDATE, DELETE,
TRUNCATE, switching the append-only triggers off) fail with a permission error. A role that may
not migrate is told to run ``payonce migrate`` as the owner. Roles are cluster-wide: each test
run makes its own, with random names, and drops them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from payonce import ConfigurationError, Status, StoreError, seal_checkpoint, verify_ledger
from payonce.stores._postgres import PostgresStore
from payonce.testing._contract_support import _new
from tests.faults import pg_worker

# As in docs/stores-postgres.md ("Roles"), run by the owner after `payonce migrate`.
APP_GRANTS = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON payonce_records TO {app}",
    "GRANT SELECT, INSERT ON payonce_ledger, payonce_checkpoints TO {app}",
    "GRANT SELECT ON payonce_migrations TO {app}",
    "GRANT EXECUTE ON FUNCTION payonce_claim, payonce_ledger_horizon TO {app}",
)
LEASE = timedelta(seconds=30)
T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Roles:
    database: str
    owner: str
    app: str

    def conninfo(self, role: str) -> str:
        return make_conninfo(pg_worker.ADMIN, dbname=self.database, user=role)


@pytest.fixture
def roles() -> Iterator[Roles]:
    name, conninfo = pg_worker.create_database()
    tag = secrets.token_hex(4)
    made = Roles(name, f"payonce_owner_{tag}", f"payonce_app_{tag}")
    with pg_worker.admin_connection() as server:
        try:
            for role in (made.owner, made.app):
                server.execute(f"CREATE ROLE {role} LOGIN")
            with pg_worker.admin_connection(conninfo) as database:
                database.execute(f"GRANT CREATE ON SCHEMA public TO {made.owner}")
            yield made
        finally:
            pg_worker.drop_database(name)
            for role in (made.app, made.owner):
                server.execute(f"DROP ROLE IF EXISTS {role}")


def _migrate_and_grant(roles: Roles) -> None:
    PostgresStore(roles.conninfo(roles.owner)).close()  # migrates, as `payonce migrate` does
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        for grant in APP_GRANTS:
            owner.execute(grant.format(app=roles.app))


def _claim_and_seal(conninfo: str, label: str) -> None:
    """One claim and a checkpoint over it, through a store connected as ``conninfo``'s role."""
    store = PostgresStore(conninfo)
    try:
        store.claim(_new(label), now=T0, lease_for=LEASE)
        assert seal_checkpoint(store, now=T0) is not None
    finally:
        store.close()


def _back_to_version_1(roles: Roles) -> None:
    """The database as an older payonce left it: migration 2 never ran."""
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        owner.execute("DROP FUNCTION payonce_ledger_horizon()")
        owner.execute("DELETE FROM payonce_migrations WHERE version = 2")


def test_the_service_role_runs_every_operation_with_select_and_insert_on_the_ledger(
    roles: Roles,
) -> None:
    _migrate_and_grant(roles)
    store = PostgresStore(roles.conninfo(roles.app))
    try:
        done, unknown, freed = _new("done"), _new("unknown"), _new("freed")
        lease = store.claim(done, now=T0, lease_for=LEASE).lease
        assert lease is not None
        # Its lease runs out: the Reconciler's scan and takeover, then the answer.
        later = T0 + LEASE + timedelta(seconds=1)
        assert [r.key for r in store.scan(now=later, limit=10)] == [done.key]
        taken = store.takeover(done.scope, done.key, token=lease.token, now=later, lease_for=LEASE)
        assert taken.lease is not None
        store.complete(
            done.scope,
            done.key,
            token=taken.lease.token,
            status=Status.SUCCEEDED,
            outcome='{"value":{"id":"ch_1"}}',
            now=later,
        )
        held = store.claim(unknown, now=later, lease_for=LEASE).lease
        assert held is not None
        store.mark_unknown(unknown.scope, unknown.key, token=held.token, reason="x", now=later)
        held = store.claim(freed, now=later, lease_for=LEASE).lease
        assert held is not None
        store.release(freed.scope, freed.key, token=held.token, reason="never ran", now=later)
        assert (
            store.purge(now=later + timedelta(days=2), retention=timedelta(days=1), limit=10) == 1
        )
        assert seal_checkpoint(store, now=later) is not None  # the horizon, as this role
        report = verify_ledger(store)
        # claimed, taken over, succeeded; claimed, marked unknown; claimed, released; purged
        assert report.entries == 8
    finally:
        store.close()


def test_an_auditor_role_that_may_only_read_verifies_the_ledger(roles: Roles) -> None:
    # Without EXECUTE on payonce_ledger_horizon() (or on a standby, where its lock is refused)
    # verification reads to the newest entry instead of failing.
    _migrate_and_grant(roles)
    _claim_and_seal(roles.conninfo(roles.app), "audited")
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        owner.execute(f"REVOKE INSERT, UPDATE, DELETE ON payonce_records FROM {roles.app}")
        owner.execute(f"REVOKE INSERT ON payonce_ledger, payonce_checkpoints FROM {roles.app}")
        owner.execute(
            f"REVOKE EXECUTE ON FUNCTION payonce_claim, payonce_ledger_horizon FROM {roles.app}"
        )
    store = PostgresStore(roles.conninfo(roles.app), create=False)
    try:
        with pytest.raises(StoreError, match="permission denied"):
            store.ledger_horizon()
        report = verify_ledger(store)
        assert (report.entries, report.records, report.checkpoints) == (1, 1, 1)
    finally:
        store.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE payonce_ledger SET detail = 'forged'",
        "DELETE FROM payonce_ledger",
        "TRUNCATE payonce_ledger",
        "ALTER TABLE payonce_ledger DISABLE TRIGGER USER",
        "UPDATE payonce_checkpoints SET hash = 'forged'",
        "DELETE FROM payonce_checkpoints",
    ],
)
def test_the_service_role_cannot_rewrite_history(roles: Roles, statement: str) -> None:
    _migrate_and_grant(roles)
    _claim_and_seal(roles.conninfo(roles.app), "kept")
    with (
        psycopg.connect(roles.conninfo(roles.app), autocommit=True) as app,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        app.execute(statement)
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        counts: Any = owner.execute(
            "SELECT (SELECT count(*) FROM payonce_ledger),"
            " (SELECT count(*) FROM payonce_checkpoints)"
        ).fetchone()
    assert counts == (1, 1)


def test_a_role_that_may_not_migrate_is_told_to_run_payonce_migrate(roles: Roles) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PostgresStore(roles.conninfo(roles.app))  # nothing migrated, no CREATE on the schema
    message = str(caught.value)
    assert "payonce migrate" in message
    assert "migration 1" in message
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        row = owner.execute("SELECT to_regclass('payonce_records')").fetchone()
    assert row == (None,)  # nothing was created


def test_the_horizon_is_not_open_to_every_role(roles: Roles) -> None:
    PostgresStore(roles.conninfo(roles.owner)).close()  # migrated, no grants to the app role
    with (
        psycopg.connect(roles.conninfo(roles.app), autocommit=True) as app,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        app.execute("SELECT payonce_ledger_horizon()")


def test_a_schema_at_version_1_is_brought_up_by_the_owner_not_the_service_role(
    roles: Roles,
) -> None:
    _migrate_and_grant(roles)
    _back_to_version_1(roles)
    with pytest.raises(ConfigurationError, match="migration 2"):
        PostgresStore(roles.conninfo(roles.app))

    _migrate_and_grant(roles)  # the owner opens (migrates), then grants EXECUTE on the function
    _claim_and_seal(roles.conninfo(roles.app), "after-upgrade")


def test_a_role_that_may_create_but_does_not_own_the_tables_cannot_apply_migration_2(
    roles: Roles,
) -> None:
    # Where the service role may CREATE in the schema (PostgreSQL 14 and older let everyone),
    # it must still not create the horizon function: the function would run with its rights.
    _migrate_and_grant(roles)
    _back_to_version_1(roles)
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        owner.execute(f"GRANT CREATE ON SCHEMA public TO {roles.app}")
    with pytest.raises(ConfigurationError) as caught:
        PostgresStore(roles.conninfo(roles.app))
    assert "migration 2" in str(caught.value)
    assert "only the owner of payonce_ledger" in str(caught.value)
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        made = owner.execute("SELECT to_regproc('payonce_ledger_horizon')").fetchone()
    assert made == (None,)


def test_the_horizon_function_quotes_an_awkward_schema_name(roles: Roles) -> None:
    # The schema's name reaches the function through format's %I and %L, never spliced between
    # dollar quotes that a name could close.
    schema = "Pay $body$ Once"
    database = make_conninfo(pg_worker.ADMIN, dbname=roles.database)
    with pg_worker.admin_connection(database) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION {roles.owner}')
        admin.execute(f'ALTER ROLE {roles.owner} SET search_path = "{schema}"')
    store = PostgresStore(roles.conninfo(roles.owner))
    try:
        store.claim(_new("awkward"), now=T0, lease_for=LEASE)
        assert seal_checkpoint(store, now=T0) is not None
        assert verify_ledger(store).entries == 1
    finally:
        store.close()
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        where = owner.execute(
            "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE p.proname = 'payonce_ledger_horizon'"
        ).fetchall()
    assert where == [(schema,)]  # beside the ledger


def test_migration_2_applied_by_a_superuser_leaves_the_function_to_the_ledger_s_owner(
    roles: Roles,
) -> None:
    _migrate_and_grant(roles)
    _back_to_version_1(roles)
    PostgresStore(make_conninfo(pg_worker.ADMIN, dbname=roles.database)).close()  # a superuser
    with psycopg.connect(roles.conninfo(roles.owner), autocommit=True) as owner:
        row = owner.execute(
            "SELECT pg_get_userbyid(proowner), prosecdef FROM pg_proc"
            " WHERE proname = 'payonce_ledger_horizon'"
        ).fetchone()
    assert row == (roles.owner, True)

"""PostgreSQL under faults: unsafe durability, 16 racing processes, a terminated connection.

The outage tests terminate the store's own backend (``pg_terminate_backend``) while its
statement is provably in flight: a side transaction holds the lock that statement needs, the
test waits until ``pg_stat_activity`` shows the store's backend waiting on it, then kills that
backend. Waiting for that state polls the server; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from payonce import (
    ConfigurationError,
    Event,
    Guard,
    Outcome,
    OutcomeUnknownError,
    Status,
    StoreUnavailableError,
    seal_checkpoint,
)
from payonce.stores import _postgres, _postgres_async
from payonce.stores._postgres import MIGRATIONS, PostgresStore
from payonce.stores._postgres_async import AsyncPostgresStore
from payonce.testing import ManualClock
from tests.fault_proxy import FaultProxy, Mode
from tests.faults import pg_worker, worker
from tests.faults.history import Ack, check_history
from tests.faults.pg_worker import Outage
from tests.faults.test_races import _check_round, _results
from tests.redis_cluster import free_port

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 16
THREADS_PER_PROCESS = 2
ROUNDS = 20
SLOW_CALL = 0.1  # seconds the provider holds the first call open
LEASE = timedelta(seconds=30)
Admin = psycopg.Connection[tuple[Any, ...]]


# -- durability ------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["off", "local"])
def test_unsafe_synchronous_commit_is_refused(database: str, admin: Admin, setting: str) -> None:
    unsafe = make_conninfo(database, options=f"-c synchronous_commit={setting}")

    with pytest.raises(ConfigurationError) as caught:
        PostgresStore(unsafe)

    message = str(caught.value)
    assert f"synchronous_commit is {setting}" in message
    assert "allow_unsafe_durability=True" in message
    assert caught.value.to_dict()["option"] == "allow_unsafe_durability"


def test_unsafe_durability_refused_by_the_async_store_at_open(database: str, admin: Admin) -> None:
    store = AsyncPostgresStore(make_conninfo(database, options="-c synchronous_commit=off"))

    async def open_and_close() -> None:
        try:
            await store.open()
        finally:
            await store.close()

    with pytest.raises(ConfigurationError, match="synchronous_commit is off"):
        asyncio.run(open_and_close())


def test_unsafe_durability_accepted_with_a_warning_when_allowed(
    database: str, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    unsafe = make_conninfo(database, options="-c synchronous_commit=off")

    with caplog.at_level(logging.WARNING, logger="payonce.stores.postgres"):
        store = PostgresStore(unsafe, allow_unsafe_durability=True)
    try:
        assert store.get("tenant-a", "k1_absent") is None
    finally:
        store.close()

    assert any("synchronous_commit is off" in r.getMessage() for r in caplog.records)


def test_secrets_stay_out_of_repr(database: str, admin: Admin) -> None:
    # A dummy: the loopback server trusts the role, so any password connects.
    store = PostgresStore(make_conninfo(database, password="hunter2-not-used"))  # noqa: S106
    try:
        assert "hunter2" not in repr(store)
        assert "payonce_test_" in repr(store)
    finally:
        store.close()


# -- a server that cannot be used ------------------------------------------------------------------


def _unusable(database: str) -> list[tuple[str, str]]:
    """(conninfo, what libpq says about it) for servers and databases the store cannot use."""
    return [
        # (A database or role that does not exist is no outage: see test_postgres_review_open.)
        (make_conninfo(database, host="127.0.0.1", port=free_port()), "Connection refused"),
        # libpq fails these at once, as it does a refused option value: still outages (a
        # server not yet listening on its socket, a name the DNS does not resolve yet).
        (make_conninfo(database, host="/nonexistent-payonce-sockets"), "No such file"),
        (make_conninfo(database, host="payonce-no-such-host.invalid"), "resolve host"),
    ]


def test_an_unusable_server_is_refused_with_libpq_s_reason(database: str) -> None:
    # The pool reports only that it timed out; the error names why and where, and no password.
    for conninfo, says in _unusable(database):
        with pytest.raises(StoreUnavailableError) as caught:
            PostgresStore(
                make_conninfo(conninfo, password="hunter2-not-used"),  # noqa: S106
                timeout=timedelta(seconds=0.5),
            )
        message = str(caught.value)
        assert says in message, message
        assert "could not connect to PostgreSQL (host=" in message
        assert "PoolTimeout" not in message
        assert "hunter2" not in message


def _async_open_errors(
    conninfos: list[tuple[str, str]], timeout: timedelta, expected: type[Exception]
) -> list[str]:
    """The message of the ``expected`` error each conninfo's ``AsyncPostgresStore.open()``
    raises (its store then closed)."""

    async def open_each() -> list[str]:
        messages = []
        for conninfo, _ in conninfos:
            store = AsyncPostgresStore(conninfo, timeout=timeout)
            with pytest.raises(expected) as caught:
                await store.open()
            await store.close()
            messages.append(str(caught.value))
        return messages

    return asyncio.run(open_each())


def test_an_unusable_server_is_refused_by_the_async_store_with_its_reason(database: str) -> None:
    unusable = _unusable(database)
    messages = _async_open_errors(unusable, timedelta(seconds=0.5), StoreUnavailableError)
    for (_, says), message in zip(unusable, messages, strict=True):
        assert says in message, message
        assert "could not connect to PostgreSQL (host=" in message


@pytest.mark.parametrize(
    "conninfo",
    [
        "host=127.0.0.1 dbname",
        "postgresql://u:hunter2@host/db?no_such_option=1",
        "postgresql://u:hunter2@host/db?connect_timeout=soon",  # psycopg reads it, not libpq
        "host=127.0.0.1 port=hunter2 password=hunter2",  # a port is read before the pool starts
        42,
    ],
)
def test_a_malformed_connection_string_is_refused_before_connecting(conninfo: object) -> None:
    for store in (PostgresStore, AsyncPostgresStore):
        with pytest.raises(ConfigurationError) as caught:
            store(conninfo)  # type: ignore[arg-type]
        assert caught.value.option == "conninfo_or_pool"
        assert "hunter2" not in str(caught.value)


def _refused_options(database: str) -> list[tuple[str, str]]:
    """(conninfo, what libpq says) for option values libpq refuses before any traffic; the
    password is also the refused value, so the error must not show it."""
    secret = "hunter2"  # noqa: S105 - a dummy: the loopback server trusts the role
    spaced = "hunter2  \tspaced"  # libpq's message is folded onto one line: masked before
    return [
        (make_conninfo(database, sslmode=secret, password=secret), "invalid sslmode value"),
        (make_conninfo(database, sslmode=spaced, password=spaced), "invalid sslmode value"),
        (make_conninfo(database, target_session_attrs="any-of-them"), "target_session_attrs"),
        # Checked as libpq sets up the socket, in a message that begins with the server's name.
        (make_conninfo(database, keepalives_idle="often"), 'option "keepalives_idle"'),
    ]


def test_an_option_libpq_refuses_is_bad_input_not_an_outage(database: str) -> None:
    # libpq checks these values only as a connection starts, and a pool retries them until its
    # timeout as if the server were down: the store asks libpq after its first wait instead.
    for conninfo, says in _refused_options(database):
        with pytest.raises(ConfigurationError) as caught:
            PostgresStore(conninfo, timeout=timedelta(seconds=20))
        message = str(caught.value)
        assert says in message, message
        assert "hunter2" not in message
        assert caught.value.option == "conninfo_or_pool"


def test_an_option_libpq_refuses_is_bad_input_to_the_async_store(database: str) -> None:
    refused = _refused_options(database)
    messages = _async_open_errors(refused, timedelta(seconds=20), ConfigurationError)
    for (_, says), message in zip(refused, messages, strict=True):
        assert says in message, message
        assert "hunter2" not in message


def _server_up_after_first_wait(
    monkeypatch: pytest.MonkeyPatch, module: Any, proxy: FaultProxy
) -> list[str]:
    """Every connection through ``proxy`` is reset until the store, past its first wait, asks
    libpq about its options; from then on the proxy relays (a server that came up late)."""
    asked: list[str] = []
    check = module._refused_option

    def checked(conninfo: str) -> ConfigurationError | None:
        asked.append(conninfo)
        refused = check(conninfo)
        proxy.set_default(Mode.PASS)
        return refused

    monkeypatch.setattr(module, "_refused_option", checked)
    return asked


def test_a_server_up_after_the_first_wait_is_still_waited_for(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(("127.0.0.1", 5432), default=Mode.RESET) as proxy:
        asked = _server_up_after_first_wait(monkeypatch, _postgres, proxy)
        store = PostgresStore(
            make_conninfo(database, host="127.0.0.1", port=proxy.port),
            timeout=timedelta(seconds=20),
        )
        try:
            assert store.get("tenant-a", "k1_absent") is None
        finally:
            store.close()
    assert len(asked) == 1
    assert proxy.log[0].mode is Mode.RESET


def test_the_pool_keeps_its_first_connection_while_it_fills(database: str) -> None:
    # The store opens once the pool holds min_size connections; one that failed is retried by
    # the same pool, which keeps what it connected meanwhile (a pool restarted after a first
    # wait would throw the working connection away and start again).
    with FaultProxy(("127.0.0.1", 5432)) as proxy:
        proxy.plan(Mode.PASS, Mode.RESET)
        store = PostgresStore(
            make_conninfo(database, host="127.0.0.1", port=proxy.port),
            min_size=2,
            timeout=timedelta(seconds=20),
        )
        try:
            assert store.get("tenant-a", "k1_absent") is None
            log = proxy.log
            assert [c.mode for c in log] == [Mode.PASS, Mode.RESET, Mode.PASS]
            assert not log[0].done
        finally:
            store.close()


def test_a_server_up_after_the_first_wait_is_still_waited_for_by_the_async_store(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def open_and_read(store: AsyncPostgresStore) -> None:
        try:
            assert await store.get("tenant-a", "k1_absent") is None
        finally:
            await store.close()

    with FaultProxy(("127.0.0.1", 5432), default=Mode.RESET) as proxy:
        asked = _server_up_after_first_wait(monkeypatch, _postgres_async, proxy)
        store = AsyncPostgresStore(
            make_conninfo(database, host="127.0.0.1", port=proxy.port),
            timeout=timedelta(seconds=20),
        )
        asyncio.run(open_and_read(store))
    assert len(asked) == 1
    assert proxy.log[0].mode is Mode.RESET


# -- schema ----------------------------------------------------------------------------------------


def test_ledger_and_checkpoints_refuse_update_and_delete(database: str, admin: Admin) -> None:
    store = PostgresStore(database)
    try:
        guard = Guard(store, secret=worker.SECRET, scope=worker.SCOPE, clock=ManualClock())
        guard.run(worker.intent_for("append-only"), lambda attempt: {"id": "ch_1"})
        assert seal_checkpoint(store, now=datetime.now(UTC)) is not None
    finally:
        store.close()
    for statement in (
        "UPDATE payonce_ledger SET detail = '{}'",
        "DELETE FROM payonce_ledger",
        "TRUNCATE payonce_ledger",
        "UPDATE payonce_checkpoints SET count = 0",
        "DELETE FROM payonce_checkpoints",
        "TRUNCATE payonce_checkpoints",
    ):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            admin.execute(statement)
    assert admin.execute("SELECT count(*) FROM payonce_ledger").fetchone() == (2,)
    assert admin.execute("SELECT count(*) FROM payonce_checkpoints").fetchone() == (1,)


def test_concurrent_starters_migrate_once() -> None:
    name, conninfo = pg_worker.create_database()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            stores = list(pool.map(lambda _: PostgresStore(conninfo, min_size=0), range(6)))
        for store in stores:
            store.close()
        with pg_worker.admin_connection(conninfo) as conn:
            applied = conn.execute("SELECT version FROM payonce_migrations ORDER BY version")
            assert applied.fetchall() == [(number,) for number, _ in MIGRATIONS]
    finally:
        pg_worker.drop_database(name)


# -- the multi-process race (SCENARIOS R5) ---------------------------------------------------------


def test_r5_sixteen_processes_race_on_one_key(database: str, admin: Admin, tmp_path: Path) -> None:
    """16 processes x 2 threads race on one key, 20 rounds, with up to 5 ms of latency injected
    before every store call: one movement and one outcome each."""
    movements = tmp_path / "movements.txt"
    command = [
        sys.executable, "-m", "tests.faults.pg_worker", f"--conninfo={database}",
        f"--movements={movements}", "--reference=r5-pg", f"--rounds={ROUNDS}",
        f"--threads={THREADS_PER_PROCESS}", f"--sleep-in-fn={SLOW_CALL}", "--lease=30",
        "--wait=10", "--store-latency=0.005",
    ]  # fmt: skip
    acknowledged: list[Ack | Outcome] = []
    with ExitStack() as stack:
        procs = []
        for n in range(PROCESSES):
            stderr = stack.enter_context((tmp_path / f"worker-{n}.err").open("w"))
            proc = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, text=True,
            )  # fmt: skip
            stack.enter_context(proc)
            stack.callback(proc.kill)  # runs first: a failed round must not leave it blocked
            procs.append(proc)
        streams = [p.stdout for p in procs if p.stdout is not None]
        for rnd in range(ROUNDS):
            for stream in streams:
                assert json.loads(stream.readline()) == {"ready": rnd}
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            results = [r for s in streams for r in _results(s, THREADS_PER_PROCESS)]
            assert len(results) == PROCESSES * THREADS_PER_PROCESS
            _check_round(results, worker.read_movements(movements))
            acknowledged.extend(Ack(r["key"], r["body"]) for r in results if r["ok"])
        for proc in procs:
            assert proc.wait(timeout=60) == 0

    store = PostgresStore(database)
    try:
        all_movements = worker.read_movements(movements)
        assert len(all_movements) == ROUNDS
        history = check_history(store, all_movements, acknowledged)
        assert len(history.records) == ROUNDS
    finally:
        store.close()


# -- outage: the store's connection terminated mid-statement ---------------------------------------


@pytest.fixture
def outage(database: str, admin: Admin, tmp_path: Path) -> Iterator[Callable[[str], Outage]]:
    made: list[Outage] = []

    def make(label: str) -> Outage:
        made.append(Outage(database, tmp_path, f"payonce-outage-{label}", lease=LEASE))
        return made[-1]

    yield make
    for state in made:
        state.close()


def test_outage_during_claim(outage: Callable[[str], Outage], admin: Admin, database: str) -> None:
    state = outage("claim")
    with pg_worker.admin_connection(database) as blocker:
        # An uncommitted conflicting row: the claim's INSERT ... ON CONFLICT waits for it.
        blocker.execute("BEGIN")
        blocker.execute(
            "INSERT INTO payonce_records (scope, key, status, fingerprint, intent, provider_key,"
            " operation, amount, currency, generation, token, attempt, ledger_head, created_at,"
            " updated_at) VALUES (%s, %s, 'CLAIMED', 'x', '{}', 'x', 'charge', 1, 'usd', 0, 1,"
            " 1, 'x', 0, 0)",
            (worker.SCOPE, state.key),
        )
        future = state.run_in_thread(state.provider())
        state.terminate_when_blocked(admin, future)
        with pytest.raises(StoreUnavailableError) as caught:
            future.result(timeout=30)
        blocker.execute("ROLLBACK")

    assert caught.value.to_dict()["operation"] == "claim"
    assert state.calls == []  # no gateway call without a durable claim
    assert state.store.get(worker.SCOPE, state.key) is None
    assert state.events() == []
    # The store recovers on a fresh connection; the same intent runs once.
    outcome = state.guard.run(state.intent, state.provider())
    assert not outcome.replayed
    movements = worker.read_movements(state.movements)
    assert len(movements) == 1
    check_history(state.store, movements, [outcome])


def test_outage_during_complete(
    outage: Callable[[str], Outage], admin: Admin, database: str
) -> None:
    state = outage("complete")
    with pg_worker.admin_connection(database) as blocker:

        def lock_the_record() -> None:
            # Inside the call, after the money moved: the complete's UPDATE will wait for this.
            blocker.execute("BEGIN")
            blocker.execute(
                "SELECT 1 FROM payonce_records WHERE scope = %s AND key = %s FOR UPDATE",
                (worker.SCOPE, state.key),
            )

        future = state.run_in_thread(state.provider(after=lock_the_record))
        state.terminate_when_blocked(admin, future)
        with pytest.raises(OutcomeUnknownError) as caught:
            future.result(timeout=30)
        blocker.execute("ROLLBACK")

    assert isinstance(caught.value.__cause__, StoreUnavailableError)
    assert caught.value.__cause__.to_dict()["operation"] == "complete"
    movements = worker.read_movements(state.movements)
    assert len(movements) == 1
    record = state.store.get(worker.SCOPE, state.key)
    assert record is not None
    assert (record.status, record.outcome) == (Status.CLAIMED, None)  # nothing half-written
    assert state.events() == [Event.CLAIMED]
    check_history(state.store, movements, unresolved={state.key})

    # After the lease, a resumable retry takes over with the same provider key; the provider
    # replays its first answer, so the outcome is recorded once and nothing moves twice.
    state.clock.advance(LEASE + timedelta(seconds=1))
    outcome = state.guard.run(state.intent, state.provider(), resumable=True)
    assert [a.number for a in state.calls] == [1, 2]
    assert len({a.provider_key for a in state.calls}) == 1
    assert worker.read_movements(state.movements) == movements
    assert outcome.value == movements[0]["value"]
    check_history(state.store, movements, [outcome])
    assert state.guard.run(state.intent, state.provider()).replayed


def test_store_answers_again_after_the_terminated_connection(
    outage: Callable[[str], Outage], admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every connection idle for any time is polled (see test_postgres_pools.py for the
    # threshold that spares connections back in use within milliseconds).
    monkeypatch.setattr(_postgres, "_PROBE_IDLE", timedelta(0))
    state = outage("idle")
    assert state.store.get(worker.SCOPE, state.key) is None
    assert pg_worker.terminate_idle(admin, state.tag) >= 1

    # Every pooled connection the server ended while idle is replaced before use: no call fails.
    for _ in range(3):
        assert state.store.get(worker.SCOPE, state.key) is None

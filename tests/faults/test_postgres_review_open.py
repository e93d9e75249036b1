"""Opening a PostgreSQL store with input no server can accept: refused credentials
(``ConfigurationError`` after the first second, not an outage waited out for the whole timeout),
a role or database that does not exist (``ConfigurationError`` once the timeout has passed: one
may be created meanwhile), option values of the wrong type, an overlong timeout and a NUL in the
connection string.

Wrong and missing passwords need a server that asks for one: the loopback server trusts every
role, so those tests start a private cluster with scram-sha-256 authentication on a free
loopback port, and stop it at the end. They never skip.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from payonce import ConfigurationError, StoreUnavailableError
from payonce.stores._postgres import PostgresStore, _refused_login
from payonce.stores._postgres_async import AsyncPostgresStore
from tests.faults import pg_worker

PASSWORD = "review-SECRET-pw"  # noqa: S105 - the private test cluster's, nothing else's
WRONG = "review-WRONG-pw"
# Long enough that a refusal waited out as an outage fails the test; the refusal takes about a
# second (the store's first wait) plus one direct connection.
TIMEOUT = timedelta(seconds=20)
WITHIN = 10.0  # seconds: far below TIMEOUT, far above the store's first wait


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bin(name: str) -> str:
    found = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(f"no {name} to start a private PostgreSQL cluster: install PostgreSQL")
    return on_path


def _as_server_user(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def scram_server() -> Iterator[str]:
    """A private cluster asking every role for its scram-sha-256 password; its conninfo
    without a password."""
    home = Path(tempfile.mkdtemp(prefix="payonce_review_pg_"))
    data, log, pwfile = home / "data", home / "log", home / "pw"
    pwfile.write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    initdb = [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256"]
    initdb += [f"--pwfile={pwfile}", "--no-sync", "--locale=C", "-E", "UTF8"]
    subprocess.run(_as_server_user(initdb), check=True, capture_output=True)
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={home}"
    pg_ctl = _pg_bin("pg_ctl")
    start = [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]
    subprocess.run(_as_server_user(start), check=True, capture_output=True)
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        stop = [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]
        subprocess.run(_as_server_user(stop), check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def _sync_open(conninfo: str, timeout: timedelta = TIMEOUT) -> None:
    PostgresStore(conninfo, timeout=timeout).close()


def _async_open(conninfo: str, timeout: timedelta = TIMEOUT) -> None:
    async def scenario() -> None:
        store = AsyncPostgresStore(conninfo, timeout=timeout)
        try:
            await store.open()
        finally:
            await store.close()

    asyncio.run(scenario())


OPENS = pytest.mark.parametrize("open_store", [_sync_open, _async_open], ids=["sync", "async"])


def _refusal(open_store: Callable[[str], None], conninfo: str) -> ConfigurationError:
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        open_store(conninfo)
    assert time.monotonic() - started < WITHIN, "a refusal was waited out as an outage"
    assert caught.value.option == "conninfo"
    return caught.value


# -- credentials and a missing database are not an outage -----------------------------------------


@OPENS
def test_a_wrong_password_is_a_configuration_error(
    scram_server: str, open_store: Callable[[str], None]
) -> None:
    for conninfo in (
        make_conninfo(scram_server, password=WRONG),
        # The URL form: the password in the authority and as a query parameter.
        f"postgresql://postgres:{WRONG}@127.0.0.1:{_port(scram_server)}/postgres",
        f"postgresql://postgres@127.0.0.1:{_port(scram_server)}/postgres?password={WRONG}",
    ):
        error = _refusal(open_store, conninfo)
        message = str(error)
        assert "password authentication failed" in message, message
        assert "fix the user and password" in message
        assert WRONG not in message
        assert "retry the same intent" not in message


@OPENS
def test_a_missing_password_is_a_configuration_error(
    scram_server: str, open_store: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    message = str(_refusal(open_store, scram_server))
    assert "no password supplied" in message, message
    assert "fix the user and password" in message


@OPENS
def test_the_right_password_still_opens(
    scram_server: str, open_store: Callable[[str], None]
) -> None:
    open_store(make_conninfo(scram_server, password=PASSWORD))


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name, conninfo = pg_worker.create_database()
    try:
        yield conninfo
    finally:
        pg_worker.drop_database(name)


# A role or database that does not exist may be created meanwhile (an init job): the store waits
# out its timeout for it, as for a server that is starting, and only then refuses the name.


def _missing(open_store: Callable[[str, timedelta], None], conninfo: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        open_store(conninfo, timedelta(seconds=1.5))
    assert caught.value.option == "conninfo"
    return caught.value


@OPENS
@pytest.mark.parametrize(
    ("field", "name"),
    [("user", "payonce_review_no_such_role"), ("dbname", "payonce_review_no_such_db")],
    ids=["role", "database"],
)
def test_an_unknown_role_or_database_is_a_configuration_error(
    database: str, open_store: Callable[[str, timedelta], None], field: str, name: str
) -> None:
    conninfo = make_conninfo(database, password=WRONG, **{field: name})
    message = str(_missing(open_store, conninfo))
    kind = "role" if field == "user" else "database"
    assert f'{kind} "{name}" does not exist' in message, message
    assert "create that role or database" in message
    assert WRONG not in message


@pytest.mark.parametrize(
    ("says", "at_first", "at_end"),
    [
        ('FATAL:  password authentication failed for user "app"', True, True),
        ('FATAL:  database "pay" does not exist', False, True),
        ('FATAL:  role "app" does not exist', False, True),
        # An LDAP, RADIUS or PAM server that is down fails the login this way: it may pass.
        ('FATAL:  LDAP authentication failed for user "app"', False, False),
        ("Connection refused", False, False),
    ],
    ids=["password", "database", "role", "ldap", "refused"],
)
def test_which_refusals_are_final_and_when(says: str, at_first: bool, at_end: bool) -> None:
    # Refused at the first second, a database or role an init job creates a moment later
    # failed the open; an LDAP outage was called a configuration error.
    failure = psycopg.OperationalError(f"connection failed: {says}")
    for waited, refused in ((False, at_first), (True, at_end)):
        error = _refused_login("host=db", "host=db password=pw", failure, waited=waited)
        assert (error is not None) is refused, (says, waited)


@OPENS
def test_a_server_that_is_down_is_still_an_outage(
    open_store: Callable[[str, timedelta], None],
) -> None:
    conninfo = f"host=127.0.0.1 port={_free_port()} user=postgres dbname=test"
    with pytest.raises(StoreUnavailableError, match="Connection refused"):
        open_store(conninfo, timedelta(seconds=0.5))


def _port(conninfo: str) -> str:
    return str(conninfo_to_dict(conninfo)["port"])


# -- option values of the wrong type, an overlong timeout -----------------------------------------

_NOWHERE = "postgresql://postgres:hunter2@127.0.0.1:1/payonce_review"  # never connected to


def _constructed(store_type: type[Any], **options: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        store_type(_NOWHERE, **options)
    assert "hunter2" not in str(caught.value)
    return caught.value


STORES = pytest.mark.parametrize(
    "store_type", [PostgresStore, AsyncPostgresStore], ids=["sync", "async"]
)


@STORES
@pytest.mark.parametrize("name", ["allow_unsafe_durability", "create"])
@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_flags_must_be_bools(store_type: type[Any], name: str, value: object) -> None:
    # Checked before any connection: the target (port 1) is never tried.
    error = _constructed(store_type, **{name: value})
    assert error.option == name
    assert "True or False" in str(error)


@STORES
@pytest.mark.parametrize(
    ("name", "value"),
    [("max_size", "10"), ("max_size", 2.5), ("max_size", True), ("min_size", None)],
)
def test_sizes_must_be_ints(store_type: type[Any], name: str, value: object) -> None:
    error = _constructed(store_type, **{name: value})
    assert error.option == name
    assert "whole number" in str(error)


@STORES
@pytest.mark.parametrize("days", [10**6, 999_999_999, 2])
def test_a_timeout_over_a_day_is_refused(store_type: type[Any], days: int) -> None:
    error = _constructed(store_type, timeout=timedelta(days=days))
    assert error.option == "timeout"
    assert "at most 86400 s" in str(error)


def test_a_string_false_never_accepts_unsafe_durability(database: str) -> None:
    unsafe = make_conninfo(database, options="-c synchronous_commit=off")
    with pytest.raises(ConfigurationError) as caught:
        PostgresStore(unsafe, allow_unsafe_durability="false")  # type: ignore[arg-type]
    assert caught.value.option == "allow_unsafe_durability"
    with pytest.raises(ConfigurationError):
        PostgresStore(database, create="false")  # type: ignore[arg-type]
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert row == (0,), "tables were created"


# -- a NUL in the connection string ---------------------------------------------------------------


@STORES
def test_a_nul_in_the_connection_string_is_refused(store_type: type[Any], database: str) -> None:
    conninfo = make_conninfo(database, password="hunter2") + "\x00_staging"  # noqa: S106
    url = "postgresql://postgres:hunter2@127.0.0.1:5432/payonce_review\x00_staging"
    for given in (conninfo, url):
        with pytest.raises(ConfigurationError) as caught:
            store_type(given)
        message = str(caught.value)
        assert "NUL" in message, message
        assert "hunter2" not in message
        assert "_staging" not in message
        assert caught.value.option == "conninfo_or_pool"

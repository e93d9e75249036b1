"""Support for the command-line tests: run ``python -m payonce`` as a subprocess, and build
SQLite stores with known contents through the real guard (records at chosen ages)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from payonce import Guard, Intent, PayonceError, SQLiteStore, Store
from payonce.testing import ManualClock
from tests.conftest import SECRET
from tests.stripe_server import StripeMock, stripe_mock

REPO = Path(__file__).resolve().parents[2]
# Variables the CLI reads: the tests set them explicitly, never inherit them.
_CLI_ENV = ("PAYONCE_STORE", "PAYONCE_SECRET", "STRIPE_API_KEY")


Cli = Callable[..., subprocess.CompletedProcess[str]]


class DeclinedError(Exception):
    """A definite failure of a wrapped call, declared to the guard."""


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI process: this one's without the variables the CLI reads, wide
    and colourless output, unbuffered, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if k not in _CLI_ENV}
    environ.update(COLUMNS="200", NO_COLOR="1", PYTHONUNBUFFERED="1")
    environ.update(env or {})
    return environ


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m payonce ARGS`` in ``cwd``; wide, colourless output."""
    return subprocess.run(
        [sys.executable, "-m", "payonce", *args],
        cwd=cwd,
        env=cli_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_out(done: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a ``--json`` command printed."""
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@dataclass
class Seeded:
    """A SQLite store in ``path`` whose records were made by a guard at chosen ages.

    ``keys`` maps the test's names to record keys; ``now`` is the wall-clock time the ages
    count back from (the CLI runs on the system clock).
    """

    path: Path
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    keys: dict[str, str] = field(default_factory=dict)
    scopes: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def _guard(self, store: Store, scope: str, age: timedelta) -> Guard:
        clock = ManualClock(self.now - age)
        return Guard(store, secret=SECRET, scope=scope, clock=clock, definite=(DeclinedError,))

    def add(
        self,
        name: str,
        intent: Intent,
        *,
        scope: str = "tenant-a",
        age: timedelta = timedelta(0),
        outcome: str = "succeeded",
    ) -> str:
        """Run ``intent`` through a guard ``age`` ago, ending ``succeeded``, ``failed`` or
        ``unknown``; returns the record key."""

        def call(attempt: Any) -> Any:
            if outcome == "failed":
                raise DeclinedError("card_declined")
            if outcome == "unknown":
                raise ConnectionResetError("the answer was lost")
            return {"id": f"ch_{name}", "status": "succeeded"}

        store = SQLiteStore(self.path)
        try:
            guard = self._guard(store, scope, age)
            try:
                key = guard.run(intent, call).key
            except PayonceError as exc:
                key = exc.key  # type: ignore[attr-defined]
        finally:
            store.close()
        self.keys[name], self.scopes[name] = key, scope
        return str(key)

    def open(self) -> SQLiteStore:
        return SQLiteStore(self.path)


@pytest.fixture
def seeded(tmp_path: Path) -> Seeded:
    return Seeded(tmp_path / "store.db")


@pytest.fixture
def known(seeded: Seeded) -> Seeded:
    """The store most tests read: finished records old and new, in two scopes, one unknown."""
    day = timedelta(days=1)
    seeded.add(
        "paid_old", Intent("charge", 5000, "usd", customer="cus_1", reference="o-1"), age=40 * day
    )
    seeded.add(
        "declined_old",
        Intent("charge", 1200, "eur", customer="cus_2", reference="o-2"),
        age=35 * day,
        outcome="failed",
    )
    seeded.add("paid_new", Intent("charge", 700, "usd", customer="cus_3", reference="o-3"), age=day)
    seeded.add(
        "unknown_old",
        Intent("charge", 900, "usd", customer="cus_4", reference="o-4"),
        age=50 * day,
        outcome="unknown",
    )
    seeded.add(
        "paid_b",
        Intent("payout", 3000, "usd", destination="acct_1", reference="p-1"),
        scope="tenant-b",
        age=45 * day,
    )
    return seeded


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeMock]:
    with stripe_mock() as server:
        yield server


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """``cli(*args, env=..., stdin=...)`` runs the command line in ``tmp_path``."""

    def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path, **kwargs)

    return run


@pytest.fixture
def no_db_left(tmp_path: Path) -> Iterator[Path]:
    """A path that must still not exist after the test (a read-only command created nothing)."""
    path = tmp_path / "missing.db"
    yield path
    assert not path.exists()

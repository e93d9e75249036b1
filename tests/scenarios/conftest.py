"""Fixtures of the scenario tests: the Stripe-compatible server (once per session), a world
per gateway (G1: stripe-stateful-mock behind the fault proxy; G2: SimulatedGateway without
idempotency), each over the ``store`` fixture's four backends, and ``shared``: a store a worker
process can open too (indirectly parametrised by backend)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from payonce import Store
from payonce.testing import ManualClock
from tests import conftest
from tests.scenarios.harness import GATEWAYS, World, open_world
from tests.stripe_server import StripeMock, stripe_mock


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeMock]:
    with stripe_mock() as server:
        yield server


@pytest.fixture(params=GATEWAYS)
def world(request: pytest.FixtureRequest, store: Store, clock: ManualClock) -> Iterator[World]:
    server = request.getfixturevalue("stripe_server") if request.param == "g1" else None
    with open_world(str(request.param), store, clock, server) as opened:
        yield opened


@pytest.fixture
def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Store, list[str]]]:
    backend = str(request.param)
    store = conftest.make_store(backend, tmp_path)
    if backend == "sqlite":
        where = [str(tmp_path / "payonce.db"), ""]
    elif backend == "postgres":
        where = [conftest._POSTGRES.conninfo, ""]  # the shared test database
    else:
        where = [conftest._REDIS.url, conftest._REDIS.prefixes[-1]]
    yield backend, store, where
    store.close()

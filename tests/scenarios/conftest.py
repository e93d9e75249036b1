"""Fixtures of the scenario tests: the Stripe-compatible server (once per session) and a world
per gateway (G1: stripe-stateful-mock behind the fault proxy; G2: SimulatedGateway without
idempotency), each over the ``store`` fixture's four backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from payonce import Store
from payonce.testing import ManualClock
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

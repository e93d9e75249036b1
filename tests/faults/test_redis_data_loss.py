"""R15e on Redis: the store loses its data mid-run (a restart without persistence, FLUSHALL).

What keeps money safe then is the provider key: derived from the intent, not stored, so the retry
after the loss sends the very key the first call sent, and a provider that deduplicates on it
(Stripe, inside its 24 h window) answers with the first charge. This is the degraded mode
docs/stores-redis.md describes: the replay costs a provider round trip instead of a store read.
"""

from __future__ import annotations

import uuid

import redis

from payonce import Guard, Intent, verify_ledger
from payonce.gateways.simulated import SimulatedGateway
from payonce.stores._redis import RedisStore
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.redis_cluster import delete_prefix

INTENT = Intent("charge", 5000, "usd", payment_method="tok_visa", reference="order-r15e")
PREFIX = f"payonce-r15e-{uuid.uuid4().hex[:12]}"  # never another run's keys


def test_r15e_data_loss_never_charges_twice_inside_the_provider_window() -> None:
    client = redis.Redis()
    delete_prefix(client, PREFIX)
    clock = ManualClock()
    gateway = SimulatedGateway(idempotent=True, clock=clock)
    store = RedisStore("redis://127.0.0.1:6379/0", prefix=PREFIX, allow_unsafe_durability=True)
    try:
        guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway)
        first = guard.execute(INTENT)
        assert delete_prefix(client, PREFIX) > 0  # every record and ledger entry is gone
        again = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, gateway=gateway).execute(
            INTENT
        )
        assert again.provider_key == first.provider_key
        assert again.value["id"] == first.value["id"]  # the provider replayed the first charge
        assert len(gateway.movements()) == 1
        assert gateway.calls_received == 2
        verify_ledger(store)  # the new ledger is consistent in itself
    finally:
        store.close()
        delete_prefix(client, PREFIX)
        client.close()

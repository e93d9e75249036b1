"""SCENARIOS R21: a randomized soak on G1 and G2 over every store.

4 tenants x a few keys, random retries and duplicates, random faults (dropped answer, reset,
500, 429, decline, a crash at each guard fault point, lease expiry, the provider's window
passing), then the Reconciler, then I1-I5 and I7 (nothing left CLAIMED; UNKNOWN only when
flagged for review). Bounded to ``PAYONCE_SOAK_OPS`` operations (default 120 on G1, 300 on G2)
and ``PAYONCE_SOAK_SECONDS`` of wall time (default 4 s per run). The seed is fixed per test id
so that CI is reproducible; ``PAYONCE_SOAK_SEED=<n>`` replays one, ``PAYONCE_SOAK_SEED=random``
explores. A blackholed answer costs a real client timeout, so it is left to R9.

G3 (SimulatedGateway with its idempotency on) runs too: there the guard resends inside the
window, so a lost answer can be followed by a refused resend within one ``execute``.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from datetime import timedelta

import pytest

from payonce import Intent, Outcome, PayonceError, RetryPolicy, Store
from payonce.testing import ManualClock
from tests.scenarios.harness import DROP, LEASE, RESET, Crash, World, check, crash_at, sim_world

TENANTS = ("tenant-a", "tenant-b", "tenant-c", "tenant-d")
KEYS_PER_TENANT = 5
POINTS = ("after_claim", "before_complete", "after_complete")


def _intents(world: World, rng: random.Random) -> dict[tuple[str, int], Intent]:
    out = {}
    for scope in TENANTS:
        for k in range(KEYS_PER_TENANT):
            pm = "tok_visa"
            if world.g1:  # the mock's faults travel in the payment method
                pm = rng.choices(
                    [
                        "tok_visa",
                        "tok_chargeDeclined",
                        "tok_500",
                        f"tok_429|tok_visa|{world.nonce}{k}",
                    ],
                    weights=[7, 1, 1, 1],
                )[0]
            out[(scope, k)] = world.intent(f"soak-{scope}-{k}", 100 * (k + 1), pm=pm)
    return out


def _seed(request: pytest.FixtureRequest) -> int:
    chosen = os.environ.get("PAYONCE_SOAK_SEED")
    if chosen == "random":
        return random.SystemRandom().randrange(2**32)
    if chosen:
        return int(chosen)
    return zlib.crc32(request.node.nodeid.encode())


def test_r21_randomized_soak(world: World, request: pytest.FixtureRequest) -> None:
    _soak(world, _seed(request))


def test_r21_randomized_soak_on_a_deduplicating_provider(
    store: Store, clock: ManualClock, request: pytest.FixtureRequest
) -> None:
    _soak(sim_world(store, clock, idempotent=True), _seed(request))


def _soak(world: World, seed: int) -> None:
    print(f"R21 seed {seed} on {world.name}")
    rng = random.Random(seed)
    max_ops = int(os.environ.get("PAYONCE_SOAK_OPS") or (120 if world.g1 else 300))
    deadline = time.monotonic() + float(os.environ.get("PAYONCE_SOAK_SECONDS") or 4.0)
    intents = _intents(world, rng)
    policy = RetryPolicy(max_attempts=3, base_delay=timedelta(milliseconds=50))
    guards = {scope: world.guard(scope, retry=policy) for scope in TENANTS}
    faults = [None, DROP, RESET, "crash", "advance", "reconcile"]
    weights = [10, 2, 2, 2, 1, 1]
    if not world.g1:
        faults += ["status_500", "status_429", "decline", "day"]
        weights += [1, 1, 1, 0.2]
    if world.name == "g3":
        faults += ["in_progress_409", "before_send"]
        weights += [1, 1]
    acks: list[Outcome] = []
    errors: dict[str, int] = {}
    ops = 0
    while ops < max_ops and time.monotonic() < deadline:
        ops += 1
        scope = rng.choice(TENANTS)
        intent = intents[(scope, rng.randrange(KEYS_PER_TENANT))]
        fault = rng.choices(faults, weights=weights)[0]
        guard = guards[scope]
        if fault == "advance":
            world.clock.advance(LEASE + timedelta(seconds=1))
            continue
        if fault == "day":
            world.clock.advance(timedelta(hours=25))
            continue
        if fault == "reconcile":
            world.reconciler().run_once()
            continue
        if fault == "crash":
            guard = world.guard(scope, retry=policy, faults=crash_at(rng.choice(POINTS)))
        elif fault is not None:
            world.fault(fault)
        try:
            acks.append(guard.execute(intent))
        except (PayonceError, Crash) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
    # Converge: no fault left queued, every lease and every review flag's rest passed.
    world.clear_faults()
    world.reconcile(after=timedelta(hours=1, minutes=1))
    print(f"R21 {ops} ops, {len(acks)} acknowledged, errors {errors}")
    assert ops >= 20, "the soak must make progress"
    assert acks, "some operations must succeed"
    try:
        check(world, acks)
    except AssertionError as exc:
        raise AssertionError(f"R21 seed {seed}: {exc}") from exc
    # Every key of every tenant: at most one charge (I1, across tenants too: keys differ).
    keys = {world.key_of(i, scope) for (scope, _), i in intents.items()}
    assert len(keys) == len(intents)
    per_key: dict[str, int] = {}
    for charge in world.charges():
        per_key[charge["payonce_key"]] = per_key.get(charge["payonce_key"], 0) + 1
    assert all(n == 1 for n in per_key.values()), per_key

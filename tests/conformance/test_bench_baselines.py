"""The stores benchmark's hand-written baselines still do payonce's own work.

They call payonce's claim function and scripts with every argument built by hand, so a change of
a script's arguments or of the key layout must fail here, not halfway through a benchmark run:
each baseline's fresh call must leave a record payonce replays and a ledger that verifies.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from benchmarks import stores_bench as bench

from payonce import Guard, Store, verify_ledger
from payonce.stores._postgres import PostgresStore
from payonce.stores._redis import RedisStore
from tests.faults import pg_worker
from tests.redis_cluster import delete_prefix


def _never_called(attempt: object) -> object:
    raise AssertionError("payonce called the function: the baseline's record was not replayed")


def _check(baseline: bench.PgBaseline | bench.RedisBaseline, store: Store, n: int) -> None:
    guard = Guard(store, secret=bench.SECRET, scope=bench.SCOPE)
    for i in range(n):
        intent, d = bench._pre_pair(900_000 + i)
        assert baseline.fresh(d) == bench.VALUE
        assert baseline.replay(d) == bench.VALUE
        assert baseline.replay_claim(d) == bench.VALUE
        outcome = guard.run(intent, _never_called)
        assert outcome.replayed
        assert outcome.value == bench.VALUE
    assert verify_ledger(store).entries == 2 * n


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"payonce-benchcheck-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(bench.REDIS_URL)
    try:
        delete_prefix(client, prefix)
    finally:
        client.close()


def test_the_redis_baseline_runs_payonce_s_own_scripts(redis_prefix: str) -> None:
    client = redis.Redis.from_url(bench.REDIS_URL)
    store = RedisStore(bench.REDIS_URL, prefix=redis_prefix, buckets=bench.RedisBackend.buckets)
    try:
        baseline = bench.RedisBaseline(client, redis_prefix, bench.RedisBackend.buckets)
        _check(baseline, store, 3)
    finally:
        store.close()
        client.close()


def test_the_postgres_baseline_runs_payonce_s_own_statements() -> None:
    with pg_worker.migrated_database() as conninfo:
        store = PostgresStore(conninfo)
        baseline = bench.PgBaseline(conninfo)
        try:
            _check(baseline, store, 3)
        finally:
            baseline.close()
            store.close()

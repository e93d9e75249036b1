"""A failover that loses a claim hands its fencing token out again (Redis, the local server).

Redis replicates asynchronously: a master can acknowledge a claim and die before its replica has
it. The record and its chain head live in one slot, so they are lost together, and the next claim
of the key continues the chain from the older head and gets the same token T again. The worker
that held the lost claim (a zombie, still in its gateway call) then writes with token T: it must
be refused (``LeaseLostError``, nothing changed), and the new holder's writes must go through.

The loss is simulated as the failover leaves it: the bucket is put back as it was before the
claim (record deleted, chain head, ledger, indexes and the seq counter reset), the same way
``test_redis_data_loss.py`` simulates a loss by deleting keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from payonce import Event, LeaseLostError, Status, verify_ledger
from payonce._model import Claimed, NewRecord
from payonce.stores._redis import AsyncRedisStore, RedisStore
from payonce.stores._redis_core import RedisCore, _ident
from tests.redis_cluster import delete_prefix

LOCAL_URL = "redis://127.0.0.1:6379/0"
SCOPE = "tenant-a"
KEY = "k1_token_reuse"
LEASE = timedelta(seconds=30)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NEW = NewRecord(SCOPE, KEY, "fp", '{"a":1}', "po1_token_reuse", "charge", 100, "usd")


@pytest.fixture
def prefix(local_redis: redis.Redis) -> Iterator[str]:
    prefix = f"payonce-reuse-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(local_redis, prefix)


class _Snapshot:
    """The state of the key's bucket before a claim or a takeover, and how to go back to it."""

    def __init__(self, client: redis.Redis, store: RedisCore) -> None:
        self.client = client
        self.ident = _ident(SCOPE, KEY)
        self.bucket = store._bucket(self.ident)
        self.seq_key = store._seq_key
        self.record = client.hgetall(self.bucket.rec + self.ident)
        self.chain = client.hget(self.bucket.chain, self.ident)
        self.seq = int(client.get(self.seq_key) or 0)

    def lose_what_came_after(self) -> None:
        """The failover: the promoted replica never had the transition made since the snapshot
        (the record as it was, or none; its chain head, ledger, indexes and the seq counter)."""
        b, ident = self.bucket, self.ident
        assert self.client.unlink(b.rec + ident) == 1
        if self.record:
            self.client.hset(b.rec + ident, mapping=self.record)
        else:
            self.client.zrem(b.open, ident)
            self.client.zrem(b.live, ident)
        if self.chain is None:
            self.client.hdel(b.chain, ident)
        else:
            self.client.hset(b.chain, ident, self.chain)
        assert self.client.zremrangebyscore(b.log, f"({self.seq}", "+inf") == 1
        self.client.set(self.seq_key, self.seq)


def _an_earlier_life(store: RedisStore) -> None:
    """The key was claimed and released before: the lost claim continues a real chain."""
    first = store.claim(NEW, now=T0 - timedelta(minutes=5), lease_for=LEASE)
    assert first.lease is not None
    store.release(SCOPE, KEY, token=first.lease.token, reason="refused", now=T0)


def _claim(store: RedisStore, now: datetime) -> Claimed:
    claimed = store.claim(NEW, now=now, lease_for=LEASE)
    assert claimed.lease is not None
    return claimed


@pytest.mark.parametrize(
    "later",
    [timedelta(0), timedelta(seconds=1)],
    ids=["claimed again at the same instant", "claimed again later"],
)
def test_a_zombie_of_a_lost_claim_cannot_write_over_the_new_claim_with_the_same_token(
    local_redis: redis.Redis, prefix: str, later: timedelta
) -> None:
    # At the same instant, the new claim's ledger entry is byte for byte the lost one, so the
    # zombie's write matches the record's token, status and ledger head exactly; a second later
    # it differs, and the write used to be re-derived on the new record. Either way only the
    # lease nonce tells the two leases apart.
    a = RedisStore(LOCAL_URL, prefix=prefix)  # the zombie's process
    b = RedisStore(LOCAL_URL, prefix=prefix)  # another process, after the failover
    try:
        _an_earlier_life(a)
        before = _Snapshot(local_redis, a)
        zombie = _claim(a, T0)
        before.lose_what_came_after()
        assert b.get(SCOPE, KEY) is None

        live = _claim(b, T0 + later)
        assert live.lease is not None
        assert zombie.lease is not None
        assert live.lease.token == zombie.lease.token  # the token is handed out again

        token = zombie.lease.token
        when = T0 + later + timedelta(seconds=2)
        with pytest.raises(LeaseLostError):
            a.complete(SCOPE, KEY, token=token, status=Status.SUCCEEDED, outcome='"A"', now=when)
        with pytest.raises(LeaseLostError):
            a.mark_unknown(SCOPE, KEY, token=token, reason="timeout", now=when)
        with pytest.raises(LeaseLostError):
            a.release(SCOPE, KEY, token=token, reason="refused", now=when)
        assert b.get(SCOPE, KEY) == live.record  # nothing changed

        done = b.complete(SCOPE, KEY, token=token, status=Status.SUCCEEDED, outcome='"B"', now=when)
        assert (done.status, done.outcome) == (Status.SUCCEEDED, '"B"')
        events = [(e.event, e.token) for e in b.entries(after=0, limit=100)]
        assert events == [
            (Event.CLAIMED, 1),
            (Event.RELEASED, 1),
            (Event.CLAIMED, 2),
            (Event.SUCCEEDED, 2),
        ]
        verify_ledger(b)
    finally:
        a.close()
        b.close()


def test_the_same_store_never_hands_out_the_token_of_a_lease_it_holds_in_flight(
    local_redis: redis.Redis, prefix: str
) -> None:
    # One store instance (one process) serves both the zombie and the retry: the nonce cannot
    # tell them apart here (both write by token), so the new claim continues past the token of
    # the lease this store still holds, and the zombie's token is simply stale.
    store = RedisStore(LOCAL_URL, prefix=prefix)
    try:
        _an_earlier_life(store)
        before = _Snapshot(local_redis, store)
        zombie = _claim(store, T0)
        before.lose_what_came_after()

        live = _claim(store, T0)
        assert zombie.lease is not None
        assert live.lease is not None
        assert live.lease.token == zombie.lease.token + 1

        when = T0 + timedelta(seconds=2)
        with pytest.raises(LeaseLostError):
            store.complete(
                SCOPE, KEY, token=zombie.lease.token, status=Status.SUCCEEDED, outcome='"A"',
                now=when,
            )  # fmt: skip
        done = store.complete(
            SCOPE, KEY, token=live.lease.token, status=Status.SUCCEEDED, outcome='"B"', now=when
        )
        assert done.outcome == '"B"'
        assert verify_ledger(store).entries == 4
    finally:
        store.close()


def test_the_async_store_refuses_the_zombie_too(local_redis: redis.Redis, prefix: str) -> None:
    sync = RedisStore(LOCAL_URL, prefix=prefix)

    async def scenario() -> tuple[int, int, Status]:
        a = AsyncRedisStore(LOCAL_URL, prefix=prefix)
        b = AsyncRedisStore(LOCAL_URL, prefix=prefix)
        try:
            _an_earlier_life(sync)
            before = _Snapshot(local_redis, sync)
            zombie = await a.claim(NEW, now=T0, lease_for=LEASE)
            before.lose_what_came_after()
            live = await b.claim(NEW, now=T0, lease_for=LEASE)
            assert zombie.lease is not None
            assert live.lease is not None
            when = T0 + timedelta(seconds=2)
            with pytest.raises(LeaseLostError):
                await a.complete(
                    SCOPE, KEY, token=zombie.lease.token, status=Status.SUCCEEDED,
                    outcome='"A"', now=when,
                )  # fmt: skip
            done = await b.complete(
                SCOPE, KEY, token=live.lease.token, status=Status.SUCCEEDED, outcome='"B"',
                now=when,
            )  # fmt: skip
            return zombie.lease.token, live.lease.token, done.status
        finally:
            await a.close()
            await b.close()

    try:
        zombie_token, live_token, status = asyncio.run(scenario())
    finally:
        sync.close()
    assert zombie_token == live_token
    assert status is Status.SUCCEEDED


def test_the_same_store_never_reissues_the_token_of_a_takeover_it_holds_in_flight(
    local_redis: redis.Redis, prefix: str
) -> None:
    # As for claims: a takeover this store made is lost in a failover (the record goes back
    # to the lease it took over), and the same store takes the record over again. The new lease
    # must not get the lost one's token, or the lost one's holder could write over it.
    store = RedisStore(LOCAL_URL, prefix=prefix)
    try:
        first = _claim(store, T0)
        assert first.lease is not None
        before = _Snapshot(local_redis, store)
        later = T0 + LEASE + timedelta(seconds=1)
        zombie = store.takeover(SCOPE, KEY, token=first.lease.token, now=later, lease_for=LEASE)
        assert zombie.lease is not None
        before.lose_what_came_after()

        again = later + timedelta(seconds=1)
        live = store.takeover(SCOPE, KEY, token=first.lease.token, now=again, lease_for=LEASE)
        assert live.lease is not None
        assert live.lease.token == zombie.lease.token + 1

        when = again + timedelta(seconds=1)
        with pytest.raises(LeaseLostError):
            store.complete(
                SCOPE, KEY, token=zombie.lease.token, status=Status.SUCCEEDED,
                outcome='"ZOMBIE"', now=when,
            )  # fmt: skip
        done = store.complete(
            SCOPE, KEY, token=live.lease.token, status=Status.SUCCEEDED, outcome='"LIVE"', now=when
        )
        assert done.outcome == '"LIVE"'
        verify_ledger(store)
    finally:
        store.close()

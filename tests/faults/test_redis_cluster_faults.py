"""Redis Cluster conditions that pass, on a real 3-master cluster started on loopback ports.

* Contention on one bucket: on Cluster a write's ``seq`` is allocated a round trip before its
  script, and a write of another record of the same bucket can take a higher one first; the
  script then refuses the write, which backs off (jittered) and tries again. Every attempt
  overtaken is made to happen deterministically here: a rival store writes to the bucket
  between each allocation and its script. What is left after the bound is an outage
  (``StoreUnavailableError``: retry the same intent), never a permanent store error.
* Resharding: while a bucket's slot is MIGRATING, the read scripts that visit record keys they
  cannot declare are refused ("non local key") on the source once records moved: an outage too.
  Once index keys moved ahead of their records (Redis moves a slot's keys in batches, newest
  first) they run on the importing master and find the records missing: ``newest`` refuses
  (missing one would let a new generation claim a key whose payment exists), the scan, the heads
  and the purge skip them. The same reads answer in full once the migration ends.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from payonce import ConfigurationError, Status, StoreUnavailableError, verify_ledger
from payonce._model import NewRecord
from payonce.stores._redis import AsyncRedisStore, RedisStore
from payonce.stores._redis_core import _ATTEMPTS, _BACKOFF_CAP, Effect, Pause, Script, _ident
from tests.faults.test_redis_faults import race_processes
from tests.ledger.test_verify_live import _Busy
from tests.redis_cluster import HOST, Cluster, delete_prefix, redis_cluster

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def _new(key: str, family: str | None = None, generation: int = 0) -> NewRecord:
    return NewRecord(
        "tenant-a", key, "fp", "{}", "po1_" + key, "charge", 100, "usd", family, generation
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with redis_cluster(3) as running:
        yield running


@pytest.fixture(scope="module")
def cluster_client(cluster: Cluster) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster.url)
    yield client
    client.close()


@pytest.fixture
def prefix(cluster_client: RedisCluster) -> Iterator[str]:
    prefix = f"payonce-cf-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(cluster_client, prefix)


def _url(cluster: Cluster) -> str:
    return f"redis+cluster://{HOST}:{cluster.ports[0]}"


# -- a bucket's seqs overtaken -------------------------------------------------------------------


class _Rival:
    """Another writer of the same (single) bucket: each ``write`` claims a fresh key, whose
    entry takes a seq above every one allocated before."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.writes = 0

    def write(self) -> None:
        self.writes += 1
        claimed = self.store.claim(_new(f"k1_rival_{self.writes}"), now=T0, lease_for=LEASE)
        assert claimed.lease is not None


def _overtaking(effect: Effect, rival: _Rival | None) -> None:
    """After a seq allocation, the rival (if any) writes before the script that uses it."""
    if rival is not None and isinstance(effect, Script) and effect.name == "seq":
        rival.write()


class _OvertakenStore(RedisStore):
    """A store whose every seq is overtaken while ``rival`` is set; its pauses are recorded,
    not slept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.rival: _Rival | None = None
        self.pauses: list[timedelta] = []
        super().__init__(*args, **kwargs)

    def _perform(self, effect: Effect, operation: str) -> Any:
        if isinstance(effect, Pause):
            self.pauses.append(effect.delay)
            return None
        reply = super()._perform(effect, operation)
        _overtaking(effect, self.rival)
        return reply


class _AsyncOvertakenStore(AsyncRedisStore):
    """As ``_OvertakenStore``, async (the rival writes through its sync store)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.rival: _Rival | None = None
        self.pauses: list[timedelta] = []
        super().__init__(*args, **kwargs)

    async def _perform(self, effect: Effect, operation: str) -> Any:
        if isinstance(effect, Pause):
            self.pauses.append(effect.delay)
            return None
        reply = await super()._perform(effect, operation)
        _overtaking(effect, self.rival)
        return reply


def _check_refusal(error: StoreUnavailableError, operation: str, pauses: list[timedelta]) -> None:
    message = str(error)
    assert error.to_dict()["operation"] == operation
    assert "overtaken by concurrent writes to the same bucket" in message
    assert "did not land" in message
    assert "retrying is safe" in message
    assert "retry the same intent" in message
    # A pause between attempts, none after the last; jittered, each within the cap.
    assert len(pauses) == _ATTEMPTS - 1
    assert all(timedelta(0) <= p <= _BACKOFF_CAP for p in pauses)
    assert len(set(pauses)) > 1


@pytest.fixture
def rival(cluster: Cluster, prefix: str) -> Iterator[_Rival]:
    store = RedisStore(_url(cluster), prefix=prefix, buckets=1)
    yield _Rival(store)
    store.close()


def test_a_claim_overtaken_in_its_bucket_every_time_is_an_outage_that_passes(
    cluster: Cluster, prefix: str, rival: _Rival
) -> None:
    store = _OvertakenStore(_url(cluster), prefix=prefix, buckets=1)
    try:
        store.rival = rival
        with pytest.raises(StoreUnavailableError) as caught:
            store.claim(_new("k1_overtaken"), now=T0, lease_for=LEASE)
        assert rival.writes == _ATTEMPTS  # every attempt was overtaken
        _check_refusal(caught.value, "claim", store.pauses)
        assert store.get("tenant-a", "k1_overtaken") is None  # nothing written

        store.rival = None  # the load drops: the same claim goes through
        claimed = store.claim(_new("k1_overtaken"), now=T0, lease_for=LEASE)
        assert claimed.lease is not None
        verify_ledger(store)
    finally:
        store.close()


def test_a_complete_overtaken_in_its_bucket_every_time_is_an_outage_that_passes(
    cluster: Cluster, prefix: str, rival: _Rival
) -> None:
    store = _OvertakenStore(_url(cluster), prefix=prefix, buckets=1)
    try:
        claimed = store.claim(_new("k1_overtaken"), now=T0, lease_for=LEASE)
        assert claimed.lease is not None
        token = claimed.lease.token
        store.rival = rival
        with pytest.raises(StoreUnavailableError) as caught:
            store.complete(
                "tenant-a", "k1_overtaken", token=token, status=Status.SUCCEEDED, outcome="{}",
                now=T0,
            )  # fmt: skip
        _check_refusal(caught.value, "complete", store.pauses)
        assert store.get("tenant-a", "k1_overtaken") == claimed.record  # nothing written

        store.rival = None
        done = store.complete(
            "tenant-a", "k1_overtaken", token=token, status=Status.SUCCEEDED, outcome="{}", now=T0
        )
        assert done.status is Status.SUCCEEDED
        verify_ledger(store)
    finally:
        store.close()


def test_an_async_claim_overtaken_every_time_is_an_outage_too(
    cluster: Cluster, prefix: str, rival: _Rival
) -> None:
    store = _AsyncOvertakenStore(_url(cluster), prefix=prefix, buckets=1)

    async def scenario() -> None:
        try:
            await store.connect()
            store.rival = rival
            with pytest.raises(StoreUnavailableError) as caught:
                await store.claim(_new("k1_overtaken"), now=T0, lease_for=LEASE)
            _check_refusal(caught.value, "claim", store.pauses)
        finally:
            await store.close()

    asyncio.run(scenario())


# -- a bucket's slot in migration ----------------------------------------------------------------


def _records_of_a_workload(store: RedisStore) -> None:
    """Open records of a family (scan, newest, heads) and a finished one (purge)."""
    for n in range(3):
        store.claim(_new(f"k1_open_{n}", "fam", n), now=T0, lease_for=LEASE)
    done = store.claim(_new("k1_done"), now=T0, lease_for=LEASE)
    assert done.lease is not None
    store.complete(
        "tenant-a", "k1_done", token=done.lease.token, status=Status.SUCCEEDED, outcome="{}", now=T0
    )


@pytest.mark.parametrize("moved", ["records", "indexes"])
def test_a_read_of_a_bucket_whose_slot_is_migrating_is_an_outage_until_it_ends(
    cluster: Cluster, cluster_client: RedisCluster, prefix: str, moved: str
) -> None:
    # The slot of the only bucket is put in migration by hand, as redis-cli --cluster reshard
    # does it, and some of the bucket's keys are moved (its records, or every other key: the
    # indexes, chain and log); then the migration is called off.
    store = RedisStore(_url(cluster), prefix=prefix, buckets=1)
    late = T0 + timedelta(days=10)
    reads = {
        "scan": lambda: store.scan(now=late, limit=10),
        "newest": lambda: store.newest("tenant-a", "fam"),
        "heads": lambda: store.heads(after=None, limit=10),
    }

    async def async_scan() -> None:
        astore = AsyncRedisStore(_url(cluster), prefix=prefix, buckets=1)
        try:
            await astore.scan(now=late, limit=10)
        finally:
            await astore.close()

    tag = f"{{{prefix}:0}}"
    slot = cluster_client.keyslot(tag)
    owner = cluster_client.get_node_from_key(tag)
    other = next(n for n in cluster_client.get_primaries() if n.port != owner.port)
    # One connection each: ASKING applies to the next command on the same connection.
    source = redis.Redis(host=HOST, port=owner.port, single_connection_client=True)
    target = redis.Redis(host=HOST, port=other.port, single_connection_client=True)
    try:
        _records_of_a_workload(store)
        before = {name: read() for name, read in reads.items()}
        in_slot = [
            k.decode() if isinstance(k, bytes) else k
            for k in source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
        ]
        records = [k for k in in_slot if ":rec:" in k]
        assert len(records) == 4
        keys = records if moved == "records" else [k for k in in_slot if k not in records]
        source_id = source.execute_command("CLUSTER MYID")
        target_id = target.execute_command("CLUSTER MYID")
        try:
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            source.execute_command("MIGRATE", HOST, other.port, "", 0, 5000, "KEYS", *keys)

            if moved == "records":
                for name, read in reads.items():
                    with pytest.raises(StoreUnavailableError, match="non local key") as caught:
                        read()
                    assert "retry the same intent" in str(caught.value), name
                with pytest.raises(StoreUnavailableError, match="non local key"):
                    store.purge(now=late, retention=timedelta(days=3), limit=10)
                with pytest.raises(StoreUnavailableError, match="non local key"):
                    asyncio.run(async_scan())
            else:
                # The index keys went first: the reads run on the importing master, where the
                # records are not. newest refuses (a generation it missed could be claimed
                # again); the scan, the heads and the purge skip them, for a later pass.
                with pytest.raises(StoreUnavailableError, match="being migrated") as caught:
                    store.newest("tenant-a", "fam")
                assert "retry the same intent" in str(caught.value)
                assert store.scan(now=late, limit=10) == []
                assert store.heads(after=None, limit=10) == []
                assert store.purge(now=late, retention=timedelta(days=3), limit=10) == 0
            # A single record's read declares its key: redis-py follows the ASK redirect.
            record = store.get("tenant-a", "k1_done")
            assert record is not None
            assert record.status is Status.SUCCEEDED
        finally:
            # Called off: the owner stops redirecting, the records go back (the importing
            # master serves them after ASKING), and the importing master forgets it too.
            source.execute_command("CLUSTER SETSLOT", slot, "STABLE")
            target.execute_command("ASKING")
            target.execute_command("MIGRATE", HOST, owner.port, "", 0, 5000, "KEYS", *keys)
            target.execute_command("CLUSTER SETSLOT", slot, "STABLE")
        assert target.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0  # all went back

        assert {name: read() for name, read in reads.items()} == before
        asyncio.run(async_scan())
        assert store.purge(now=late, retention=timedelta(days=3), limit=10) == 1
    finally:
        source.close()
        target.close()
        store.close()


# -- verification beside a write whose seq is in flight ------------------------------------------


class _HeldStore(RedisStore):
    """A writer whose first ``seq`` allocation once ``hold`` is set is held before its script,
    until ``go``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.allocated, self.go = threading.Event(), threading.Event()
        self.hold = True
        super().__init__(*args, **kwargs)

    def _perform(self, effect: Effect, operation: str) -> Any:
        reply = super()._perform(effect, operation)
        seq = isinstance(effect, Script) and effect.name == "seq"
        if seq and self.hold and not self.allocated.is_set():
            self.allocated.set()
            assert self.go.wait(30), "the test never let the held write go on"
        return reply


@pytest.fixture
def held(cluster: Cluster, prefix: str) -> Iterator[tuple[_HeldStore, RedisStore, RedisStore]]:
    """A held writer, another writer and a reader, on one prefix of two buckets."""
    writer = _HeldStore(_url(cluster), prefix=prefix, buckets=2)
    rival = RedisStore(_url(cluster), prefix=prefix, buckets=2)
    checker = RedisStore(_url(cluster), prefix=prefix, buckets=2)
    try:
        yield writer, rival, checker
    finally:
        writer.go.set()
        for store in (writer, rival, checker):
            store.close()


def _in_another_bucket(store: RedisStore, key: str) -> str:
    """A key of scope tenant-a whose bucket is not ``key``'s."""
    bucket = store._bucket(_ident("tenant-a", key))
    return next(
        f"k1_other_{n}"
        for n in range(64)
        if store._bucket(_ident("tenant-a", f"k1_other_{n}")) != bucket
    )


def test_verify_beside_a_write_whose_seq_is_in_flight_finds_nothing_missing(
    held: tuple[_HeldStore, RedisStore, RedisStore],
) -> None:
    # The writer's claim holds seq s; another bucket's write lands s + 1; the claim and its
    # complete land while verification reads. Read past s + 1 without a horizon, the claim (at
    # s) would never be read and the complete would seem to chain to nothing.
    writer, rival, checker = held
    other = _in_another_bucket(writer, "k1_held")

    def write() -> None:
        claimed = writer.claim(_new("k1_held"), now=T0, lease_for=LEASE)
        assert claimed.lease is not None
        writer.complete(
            "tenant-a", "k1_held", token=claimed.lease.token, status=Status.SUCCEEDED,
            outcome="{}", now=T0,
        )  # fmt: skip

    def let_the_write_land() -> None:
        writer.go.set()
        future.result(timeout=30)

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(write)
        assert writer.allocated.wait(30)
        assert rival.claim(_new(other), now=T0, lease_for=LEASE).lease is not None
        busy = _Busy(checker, "entries", after=let_the_write_land)
        report = verify_ledger(busy)  # type: ignore[arg-type]
    assert (report.entries, report.records) == (3, 2)
    assert verify_ledger(checker).entries == 3


def test_an_audit_continued_from_its_cursor_never_skips_a_success_that_was_in_flight(
    held: tuple[_HeldStore, RedisStore, RedisStore],
) -> None:
    # A guarded call's complete holds seq s while another bucket's write lands s + 1 and an
    # audit runs. Without a horizon that audit's cursor passes s, the complete then lands at s,
    # and every audit continued from the cursor skips that success.
    from payonce import Guard, Intent, Reconciler  # noqa: PLC0415
    from payonce.gateways.simulated import SimulatedGateway  # noqa: PLC0415
    from payonce.testing import ManualClock  # noqa: PLC0415

    writer, rival, checker = held
    writer.hold = False
    clock = ManualClock(T0)
    guard = Guard(writer, secret=b"s" * 32, scope="tenant-a", clock=clock)
    intent = Intent("charge", 500, "usd", customer="cus_1", reference="audited")
    other = _in_another_bucket(writer, guard.key_for(intent))

    def charge(attempt: Any) -> dict[str, str]:
        writer.hold = True  # the complete's seq is held
        return {"id": "ch_audited"}

    def seen(report: Any) -> int:
        return int(report.checked + len(report.unverified) + report.skipped)

    reconciler = Reconciler(checker, SimulatedGateway(clock=clock), clock=clock)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(guard.run, intent, charge)
        assert writer.allocated.wait(30)
        assert rival.claim(_new(other), now=T0, lease_for=LEASE).lease is not None
        first = reconciler.audit()
        writer.go.set()
        assert future.result(timeout=30).value == {"id": "ch_audited"}
    assert seen(first) == 0  # the success was not written yet
    again = reconciler.audit(after=first.cursor)
    assert seen(again) == 1  # read from the cursor on


# -- a master that hangs; a plain client of a cluster node ---------------------------------------


class _FirstPipelineTimesOut(RedisStore):
    """A store whose first pipeline to one master times out, as on a master that hangs (how a
    failover usually starts); everything after it reaches the cluster."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.armed = False  # set once the records are written
        self.timeouts = 0
        super().__init__(*args, **kwargs)

    def _pipelined(self, client: Any, calls: Any) -> list[Any]:
        if self.armed and self.timeouts == 0:
            self.timeouts += 1
            raise redis.exceptions.TimeoutError("Timeout reading from the master")
        return super()._pipelined(client, calls)


def test_a_read_across_buckets_whose_master_timed_out_goes_through_the_cluster_client(
    cluster: Cluster, prefix: str
) -> None:
    # The fan-out sends each master its share itself, from the client's slot map. Before, a
    # timeout was raised as it was: nothing asked the client to refresh that map, so after a
    # failover whose old master hangs, every later scan, newest and ledger read went to the
    # dead node until the process restarted. Now the calls go through the cluster client,
    # which refreshes the map (and fails the first call of a master still down, an outage).
    store = _FirstPipelineTimesOut(_url(cluster), prefix=prefix)
    try:
        for i in range(6):
            assert store.claim(_new(f"k1_hung_{i}"), now=T0, lease_for=LEASE).lease is not None
        store.armed = True
        due = store.scan(now=T0 + LEASE + timedelta(seconds=1), limit=100)
        assert store.timeouts == 1
        assert sorted(r.key for r in due) == [f"k1_hung_{i}" for i in range(6)]
    finally:
        store.close()


def test_the_cluster_clients_built_from_a_url_retry_a_call_twice_at_most(
    cluster: Cluster, prefix: str
) -> None:
    # Each attempt may wait a whole socket timeout (5 s) on a master that hangs; redis-py's own
    # default of ten retries held every claim and complete for about a minute.
    store = RedisStore(_url(cluster), prefix=prefix)
    try:
        assert store._client.retry.get_retries() == 2
    finally:
        store.close()

    async def main() -> None:
        astore = AsyncRedisStore(_url(cluster), prefix=prefix)
        try:
            assert astore._client.retry.get_retries() == 2
        finally:
            await astore.close()

    asyncio.run(main())


def test_a_plain_url_of_a_cluster_node_is_refused_at_open(cluster: Cluster, prefix: str) -> None:
    # Before, the store opened whenever its meta key's slot was on that node, and every claim
    # then failed with CROSSSLOT as a store error blaming changed keys.
    url = f"redis://{HOST}:{cluster.ports[0]}/0"
    with pytest.raises(ConfigurationError, match="is a Redis Cluster node") as caught:
        RedisStore(url, prefix=prefix)
    assert caught.value.option == "url"
    assert "redis+cluster://" in str(caught.value)

    async def main() -> None:
        astore = AsyncRedisStore(url, prefix=prefix)
        try:
            with pytest.raises(ConfigurationError, match="is a Redis Cluster node"):
                await astore.connect()
        finally:
            await astore.close()

    asyncio.run(main())


def test_a_redirect_seen_by_a_plain_client_names_the_cluster_url() -> None:
    # A plain client whose CONFIG GET is refused cannot read cluster-enabled at open: the
    # node's MOVED or CROSSSLOT answer then says what to use.
    from payonce.stores._redis import _opening, _translate  # noqa: PLC0415

    moved = redis.exceptions.MovedError("3999 127.0.0.1:7001")
    crossslot = redis.exceptions.ClusterCrossSlotError()
    opening = _opening(moved)
    assert isinstance(opening, ConfigurationError)
    assert "redis+cluster://" in str(opening)
    for error in (moved, crossslot):
        translated = _translate(error, "claim")
        assert not isinstance(translated, StoreUnavailableError)
        assert "nothing was written" in str(translated)
        assert "redis+cluster://host:port" in str(translated)


# -- the multi-process race (SCENARIOS R5) ---------------------------------------------------------


def test_r5_concurrent_duplicates_processes_on_redis_cluster(
    cluster: Cluster, cluster_client: RedisCluster, tmp_path: Path
) -> None:
    """The race of test_redis_faults on the cluster: 16 processes x 2 threads, 20 rounds."""
    prefix = f"payonce-race-{uuid.uuid4().hex[:12]}"
    try:
        race_processes(f"redis+cluster://{HOST}:{cluster.ports[0]}", prefix, tmp_path, "r5-cluster")
    finally:
        delete_prefix(cluster_client, prefix)

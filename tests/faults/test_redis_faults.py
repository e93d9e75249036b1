"""Races and outages on Redis (SCENARIOS R5 and the store outage of issue 3).

* 16 processes x 2 threads race on one key of the local Redis, 20 rounds on fresh keys, with
  up to 5 ms of latency injected before every store call: one movement per key, one outcome
  byte for byte, every other caller replays or is told to wait (on Redis Cluster too, from
  test_redis_cluster_faults).
* An outage: ``CLIENT PAUSE WRITE`` on a throwaway server while the guard claims, and while it
  records the outcome, with a short socket timeout on the store's client. The caller gets a
  clear ``StoreUnavailableError`` (or, once the call ran, ``OutcomeUnknownError`` caused by it),
  the provider is never called without a durable claim, and after the pause a retry of the same
  intent ends with exactly one movement and one acknowledged outcome.

The race runs on the system clock (processes cannot share a ManualClock) with a 30 s lease, far
longer than any round; the outage tests move a ManualClock past the lease instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from payonce import (
    Attempt,
    Guard,
    OutcomeUnknownError,
    Status,
    StoreUnavailableError,
)
from payonce._model import NewRecord, Record
from payonce.stores._redis import AsyncRedisStore, RedisStore
from payonce.testing import ManualClock
from tests.faults import worker
from tests.faults.history import Ack, check_history
from tests.faults.test_races import _check_round, _results
from tests.redis_cluster import redis_server

ROOT = Path(__file__).resolve().parents[2]
LOCAL_URL = "redis://127.0.0.1:6379/0"
PROCESSES = 16
THREADS_PER_PROCESS = 2
ROUNDS = 20
SLOW_CALL = 0.2  # seconds the provider holds the first call open while duplicates arrive
STORE_LATENCY = 0.005  # seconds, at most, injected before each store call of the race workers
LEASE = timedelta(seconds=30)
SOCKET_TIMEOUT = 0.25  # seconds: how long the store's client waits on a paused server
PAUSE_MS = 20_000  # an upper bound only: each test unpauses explicitly
_T = datetime(2026, 6, 1, 12, 0, 5, tzinfo=UTC)


def test_r5_concurrent_duplicates_processes_on_redis(tmp_path: Path, local_prefix: str) -> None:
    """16 processes x 2 threads race on one key in Redis, 20 rounds, each on a fresh key."""
    race_processes(LOCAL_URL, local_prefix, tmp_path, "r5-redis")


def race_processes(url: str, prefix: str, tmp_path: Path, reference: str) -> None:
    """R5 on the Redis at ``url``: 16 processes x 2 threads race on one key per round, 20 rounds,
    with up to ``STORE_LATENCY`` injected before every store call of every worker."""
    movements = tmp_path / "movements.txt"
    command = [
        sys.executable, "-m", "tests.faults.redis_worker", f"--url={url}", f"--prefix={prefix}",
        f"--movements={movements}", f"--reference={reference}", f"--rounds={ROUNDS}",
        f"--threads={THREADS_PER_PROCESS}", f"--sleep-in-fn={SLOW_CALL}", "--lease=30",
        "--wait=10", f"--store-latency={STORE_LATENCY}",
    ]  # fmt: skip
    acknowledged: list[Ack] = []
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

    store = RedisStore(url, prefix=prefix)
    try:
        all_movements = worker.read_movements(movements)
        assert len(all_movements) == ROUNDS
        history = check_history(store, all_movements, acknowledged)
        assert len(history.records) == ROUNDS
        assert {r.status for r in history.records.values()} == {Status.SUCCEEDED}
    finally:
        store.close()


# -- outage ---------------------------------------------------------------------------------------


class Outage:
    """A throwaway Redis, an admin connection that pauses it, and a store with a short timeout."""

    def __init__(self, port: int, tmp_path: Path) -> None:
        self.admin = redis.Redis(port=port)
        # No client-side retries: a paused server must surface as one timeout, at once.
        self.client = redis.Redis(
            port=port, socket_timeout=SOCKET_TIMEOUT, retry=Retry(NoBackoff(), 0)
        )
        self.store = RedisStore(self.client, prefix="outage")
        self.clock = ManualClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
        self.movements = tmp_path / "movements.txt"
        self.intent = worker.intent_for("outage-order")

    def guard(self, *, resumable: bool = False) -> Guard:
        return worker.impatient_guard(self.store, self.clock, lease=LEASE, resumable=resumable)

    def pause(self) -> None:
        self.admin.client_pause(PAUSE_MS, all=False)  # CLIENT PAUSE ... WRITE

    def unpause(self) -> None:
        self.admin.client_unpause()

    def move(self, attempt: Attempt) -> dict[str, str]:
        """The provider, deduplicating provider keys as Stripe does."""
        return worker.move(self.movements, attempt.provider_key, attempt.number, dedupe=True)

    def close(self) -> None:
        self.store.close()
        self.client.close()
        self.admin.close()


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    with redis_server() as port:
        setup = Outage(port, tmp_path)
        try:
            yield setup
        finally:
            setup.unpause()
            setup.close()


def test_an_outage_during_a_read_says_that_nothing_changed(outage: Outage) -> None:
    # A write cut off may have landed; a read cannot have changed anything, and its error must
    # not send the caller looking for an effect.
    outage.admin.client_pause(PAUSE_MS, all=True)  # CLIENT PAUSE ... ALL: reads wait too
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            outage.store.replay_view(worker.SCOPE, "k1_" + "0" * 64)
    finally:
        outage.unpause()
    message = str(caught.value)
    assert caught.value.to_dict()["operation"] == "replay_view"
    assert "TimeoutError" in message
    assert "it only reads, so nothing changed" in message
    assert "may or may not" not in message


def _resolve(outage: Outage) -> Any:
    """After the outage: past the lease, the same intent again, resumable; returns the outcome."""
    outage.clock.advance(LEASE + timedelta(seconds=1))
    return outage.guard(resumable=True).run(outage.intent, outage.move)


def test_pause_during_claim_fails_clearly_without_calling_the_provider(outage: Outage) -> None:
    called: list[Attempt] = []

    def fn(attempt: Attempt) -> dict[str, str]:
        called.append(attempt)
        return outage.move(attempt)

    outage.pause()
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            outage.guard().run(outage.intent, fn)
    finally:
        outage.unpause()

    assert called == []  # no gateway call without a durable claim
    assert caught.value.to_dict()["operation"] == "claim"
    assert "Redis was unavailable" in str(caught.value)
    assert "TimeoutError" in str(caught.value)
    assert "may or may not have taken effect" in str(caught.value)
    key = outage.guard().key_for(outage.intent)
    # The paused claim was dropped with its connection, or applied once the pause ended.
    stranded = outage.store.get(worker.SCOPE, key)
    assert stranded is None or stranded.status is Status.CLAIMED

    outcome = _resolve(outage)

    assert outcome.replayed is False
    movements = worker.read_movements(outage.movements)
    assert len(movements) == 1
    assert outcome.value == movements[0]["value"]
    check_history(outage.store, movements, [outcome])


def test_pause_during_complete_loses_and_doubles_nothing(outage: Outage) -> None:
    def fn(attempt: Attempt) -> dict[str, str]:
        answer = outage.move(attempt)  # the money moved; now the store goes away
        outage.pause()
        return answer

    try:
        with pytest.raises(OutcomeUnknownError) as caught:
            outage.guard().run(outage.intent, fn)
    finally:
        outage.unpause()

    cause = caught.value.__cause__
    assert isinstance(cause, StoreUnavailableError)
    assert cause.to_dict()["operation"] == "complete"
    key = outage.guard().key_for(outage.intent)
    held = outage.store.get(worker.SCOPE, key)
    assert held is not None
    assert held.status in (Status.CLAIMED, Status.SUCCEEDED)

    outcome = _resolve(outage)
    again = outage.guard().run(outage.intent, outage.move)

    movements = worker.read_movements(outage.movements)
    assert len(movements) == 1  # the resumed attempt reused the provider key: replayed there
    assert outcome.value == again.value == movements[0]["value"]
    assert again.replayed is True
    assert again.body == outcome.body
    check_history(outage.store, movements, [outcome, again])


def test_store_calls_during_a_pause_raise_unavailable(outage: Outage) -> None:
    new = NewRecord(
        scope=worker.SCOPE,
        key="k1_direct",
        fingerprint="fp_direct",
        intent='{"reference":"direct"}',
        provider_key="po1_direct",
        operation="charge",
        amount=1000,
        currency="usd",
    )
    claimed = outage.store.claim(new, now=outage.clock.now(), lease_for=LEASE)
    assert claimed.lease is not None
    token = claimed.lease.token

    def complete() -> Record:
        return outage.store.complete(
            new.scope, new.key, token=token, status=Status.SUCCEEDED, outcome="{}", now=_T
        )

    outage.pause()
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            complete()
        # Reads still answer during a WRITE pause: replays keep working.
        view = outage.store.replay_view(new.scope, new.key)
    finally:
        outage.unpause()

    assert caught.value.to_dict()["operation"] == "complete"
    assert view is not None
    assert view.status is Status.CLAIMED
    # The holder retries the same write once Redis is back; it applies exactly once.
    done = complete()
    assert (done.status, done.outcome) == (Status.SUCCEEDED, "{}")
    assert outage.store.get(new.scope, new.key) == done
    events = [e.event for e in outage.store.entries(after=0, limit=10)]
    assert events == ["claimed", "succeeded"]


# -- error replies that pass: a server busy in a script, a full server ---------------------------


def _run_forever(client: redis.Redis) -> None:
    """A script that loops until SCRIPT KILL: the server answers BUSY to everyone else."""
    with pytest.raises(redis.ResponseError, match="killed"):
        client.eval("while true do end", 0)


def _until(probe: Callable[[], bool], what: str) -> None:
    """Poll a server's state until ``probe`` holds; the bound guards a hang, times nothing."""
    deadline = time.monotonic() + 30
    while not probe():
        assert time.monotonic() < deadline, f"the server never became {what}"
        time.sleep(0.01)  # a poll interval, not a timing assumption


def _busy(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def test_a_server_busy_in_a_script_is_an_outage_for_single_calls_and_pipelines() -> None:
    # A read across buckets is one pipeline, whose error redis-py annotates ("Command # 1 (…)
    # of pipeline caused error: BUSY …"): it is an outage like the single call's plain BUSY,
    # not a permanent store error, and the message keeps Redis's words.
    with redis_server("--busy-reply-threshold", "10") as port:
        url = f"redis://127.0.0.1:{port}/0"
        store = RedisStore(url, prefix="busy")
        astore = AsyncRedisStore(url, prefix="busy")
        with (
            asyncio.Runner() as loop,
            redis.Redis(port=port) as looping,
            redis.Redis(port=port) as probe,
        ):
            assert loop.run(astore.scan(now=_T, limit=10)) == []  # opened before the script
            runner = threading.Thread(target=_run_forever, args=(looping,))
            runner.start()
            try:
                _until(lambda: _busy(probe), "busy")
                with pytest.raises(StoreUnavailableError) as single:
                    store.get(worker.SCOPE, "k1_busy")
                with pytest.raises(StoreUnavailableError) as fanned:
                    store.scan(now=_T, limit=10)
                with pytest.raises(StoreUnavailableError) as afanned:
                    loop.run(astore.scan(now=_T, limit=10))
                # Opening a store reads the server's CONFIG: BUSY there is an outage too, not
                # a CONFIG refusal that only allow_unsafe_durability would get past.
                with pytest.raises(StoreUnavailableError) as opening:
                    RedisStore(url, prefix="busy-open")
            finally:
                probe.script_kill()
                runner.join(timeout=60)
            for caught in (single, fanned, afanned):
                assert "Redis was unavailable (ResponseError: BUSY Redis is busy" in str(
                    caught.value
                )
            assert fanned.value.to_dict()["operation"] == "scan"
            assert opening.value.to_dict()["operation"] == "open"
            assert "BUSY" in str(opening.value)
            # The script ended: both stores answer.
            assert store.scan(now=_T, limit=10) == loop.run(astore.scan(now=_T, limit=10)) == []
            loop.run(astore.close())
        store.close()


def _refused_then_through(
    setup: Outage,
    refuse: Callable[[], None],
    fix: Callable[[], None],
    says: str,
    next_step: str,
) -> None:
    """With the server refusing writes (``refuse``), a guarded call is an outage of the claim:
    the provider is not called and no record is left, and the error names what the operator does
    (``next_step``); once an operator's ``fix`` lets writes in again, the same intent goes through
    once."""
    called: list[Attempt] = []

    def fn(attempt: Attempt) -> dict[str, str]:
        called.append(attempt)
        return setup.move(attempt)

    refuse()
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            setup.guard().run(setup.intent, fn)
    finally:
        fix()
    assert says in str(caught.value)
    assert next_step in str(caught.value)
    assert caught.value.to_dict()["operation"] == "claim"
    assert called == []
    key = setup.guard().key_for(setup.intent)
    assert setup.store.get(worker.SCOPE, key) is None
    outcome = setup.guard().run(setup.intent, fn)
    assert outcome.replayed is False
    assert len(called) == 1
    check_history(setup.store, worker.read_movements(setup.movements), [outcome])


def test_a_full_server_refuses_the_claim_as_an_outage_and_nothing_is_charged(
    tmp_path: Path,
) -> None:
    # maxmemory reached with noeviction (the only policy payonce accepts): Redis answers OOM to
    # writes, an outage an operator fixes by freeing memory.
    with redis_server() as port:
        setup = Outage(port, tmp_path)
        try:
            _refused_then_through(
                setup,
                refuse=lambda: setup.admin.config_set("maxmemory", "1"),
                fix=lambda: setup.admin.config_set("maxmemory", "0"),
                says="OutOfMemoryError",
                next_step="free memory or raise maxmemory",
            )
        finally:
            setup.close()


def test_a_server_that_cannot_persist_refuses_the_claim_as_an_outage(tmp_path: Path) -> None:
    # MISCONF: RDB snapshots are on and the last one failed (its directory is gone, as with a
    # failed or full disk), so Redis refuses writes until an operator fixes the disk.
    rdb = tmp_path / "rdb"
    rdb.mkdir()
    persisting = ("--save", "3600 1", "--stop-writes-on-bgsave-error", "yes", "--dir", str(rdb))
    with redis_server(*persisting) as port:
        setup = Outage(port, tmp_path)

        def fail_a_save() -> None:
            shutil.rmtree(rdb)
            setup.admin.bgsave()
            _until(
                lambda: setup.admin.info("persistence")["rdb_last_bgsave_status"] == "err",
                "unable to persist",
            )

        try:
            _refused_then_through(
                setup,
                refuse=fail_a_save,
                fix=lambda: setup.admin.config_set("stop-writes-on-bgsave-error", "no"),
                says="MISCONF",
                next_step="fix the server's persistence",
            )
        finally:
            # Without a save point the server stops on SIGTERM: its final save would fail.
            setup.admin.config_set("save", "")
            setup.close()


_ANNOTATIONS: Final = {
    "single call": "{reply}",
    "pipeline": "Command # 2 (EVALSHA 0123abcd 1 {{t:3}}:rec:k1) of pipeline caused error: {reply}",
    "pipeline, ')' in the command": "Command # 12 (EVALSHA ab 1 {{t:(3)}}:rec:k1) of pipeline "
    "caused error: {reply}",
    "pipeline, the error's args": "Command # 2 (EVALSHA 0123abcd 1 {{t:3}}:rec:k1) of pipeline "
    "caused error: ('{reply}',)",
}


@pytest.mark.parametrize("annotated", list(_ANNOTATIONS))
@pytest.mark.parametrize("status_code", [False, True], ids=["text only", "status_code"])
@pytest.mark.parametrize(
    ("reply", "passes"),
    [
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("BUSY Redis is busy running a script.", True),
        (  # the reply's start: the message shows 200 characters of it
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
            "persist to disk.",
            True,
        ),
        (
            "Script attempted to access a non local key in a cluster node script: "
            "766bb1a11d6c5fafb7b70a0e48ea6b359b6d04af, on @user_script:14.",
            True,
        ),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("BUSYKEY Target key name already exists.", False),
        ("BUSYGROUP Consumer Group name already exists", False),
    ],
)
def test_an_error_reply_is_an_outage_by_its_code_however_redis_py_words_it(
    reply: str, passes: bool, annotated: str, status_code: bool
) -> None:
    # Recent redis-py keeps every reply's code on the error; older releases keep only the text
    # for codes it has no class for (BUSY, NOREPLICAS), which a pipeline prefixes with the
    # failing command (and some async cluster pipelines wrap in the error's args).
    from payonce.stores._redis import _translate  # noqa: PLC0415

    exc = redis.ResponseError(_ANNOTATIONS[annotated].format(reply=reply))
    if status_code:
        exc.status_code = reply.split(" ", 1)[0]
    translated = _translate(exc, "complete")
    assert isinstance(translated, StoreUnavailableError) is passes
    shown = str(translated)
    assert f"ResponseError: {reply})" in shown or f"ResponseError ({reply})" in shown


def _raised_from(error: Exception, cause: Exception) -> Exception:
    """``error`` as ``raise error from cause`` leaves it."""
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "passes"),
    [
        (redis.exceptions.SlotNotCoveredError("Slot 1 is not covered"), True),
        (redis.exceptions.RedisClusterException("Cluster mode is not enabled on this node"), False),
        (redis.exceptions.RedisClusterException("keys must map to the same key slot"), False),
        (
            _raised_from(
                redis.exceptions.RedisClusterException("Redis Cluster cannot be connected"),
                redis.ConnectionError("Connection refused"),
            ),
            True,
        ),
    ],
    ids=["slot not covered", "not a cluster", "cross slot", "cannot be connected"],
)
def test_a_cluster_error_is_an_outage_only_when_it_passes(error: Exception, passes: bool) -> None:
    # A misconfiguration must not be called an outage: that would tell the caller to retry,
    # and the Reconciler's loop to wait it out, for ever.
    from payonce.stores._redis import _translate  # noqa: PLC0415

    assert isinstance(_translate(error, "claim"), StoreUnavailableError) is passes


def test_credentials_refused_under_a_running_store_are_not_an_outage() -> None:
    # At open they are a ConfigurationError; later (a password rotated under the store) a
    # StoreError that names the credentials, not a call to retry once Redis answers.
    from payonce import StoreError  # noqa: PLC0415
    from payonce.stores._redis import _translate  # noqa: PLC0415

    refused = redis.exceptions.AuthenticationError("invalid username-password pair")
    for error in (refused, _raised_from(redis.exceptions.RedisClusterException("x"), refused)):
        translated = _translate(error, "claim")
        assert type(translated) is StoreError
        assert "Redis refused the store's credentials" in str(translated)


@contextmanager
def _local_store(prefix: str, *, buckets: int) -> Iterator[RedisStore]:
    store = RedisStore(LOCAL_URL, prefix=prefix, buckets=buckets)
    try:
        yield store
    finally:
        store.close()


def test_newest_refuses_a_family_whose_indexed_record_was_deleted_the_scans_skip_it(
    local_prefix: str, local_redis: Any
) -> None:
    # On one server only a record key deleted outside payonce gets here (on Cluster, a slot in
    # migration: tests/faults/test_redis_cluster_faults.py). A ``newest`` that skipped the record
    # would let a reference-less intent claim a new generation of a paid key: it refuses, as a
    # store error to repair, not an outage to wait out. The Reconciler's scan and the heads skip
    # the orphan, so one of them does not stop every bucket.
    from payonce import StoreError  # noqa: PLC0415

    client = local_redis  # changes the store's keys behind its back
    with _local_store(local_prefix, buckets=1) as store:
        new = NewRecord("tenant-a", "k1", "fp", "{}", "po1_k1", "charge", 100, "usd", "fam", 0)
        assert store.claim(new, now=_T, lease_for=LEASE).lease is not None
        (record_key,) = [k for k in client.scan_iter(match=f"*{local_prefix}*") if b":rec:" in k]
        client.unlink(record_key)
        with pytest.raises(StoreError, match="deleted outside payonce") as caught:
            store.newest("tenant-a", "fam")
        assert not isinstance(caught.value, StoreUnavailableError)
        assert store.scan(now=_T + timedelta(days=1), limit=10) == []
        assert store.heads(after=None, limit=10) == []


def test_orphaned_index_entries_take_no_place_from_live_records_in_a_page(
    local_prefix: str, local_redis: Any
) -> None:
    # The client merges every bucket's first ``limit`` rows: a bucket that answered fewer while
    # it had more (its page spent on orphans) would let the merge's cursor pass its next live
    # records, and the purge's candidates would stay the orphans for good. Bucket A holds the
    # three smallest keys, the first two orphaned (and the oldest finished).
    from payonce.stores._redis_core import _ident  # noqa: PLC0415

    client = local_redis  # changes the store's keys behind its back
    with _local_store(local_prefix, buckets=2) as store:
        names = [f"k1_{n:03d}" for n in range(200)]
        bucket_a = store._bucket(_ident("tenant-a", names[0]))
        in_a = [n for n in names if store._bucket(_ident("tenant-a", n)) == bucket_a]
        in_b = [n for n in names if n > in_a[2] and n not in in_a][:4]
        keys = sorted([*in_a[:3], *in_b])
        for age, key in enumerate(keys):
            new = NewRecord("tenant-a", key, "fp", "{}", "po1_" + key, "charge", 1, "usd")
            lease = store.claim(new, now=_T, lease_for=LEASE).lease
            assert lease is not None
            store.complete("tenant-a", key, token=lease.token, status=Status.SUCCEEDED,
                           outcome="{}", now=_T + timedelta(seconds=age))  # fmt: skip
        for key in in_a[:2]:
            client.unlink(next(client.scan_iter(match=f"*{local_prefix}*rec:*{key}")))
        live = keys[2:]

        seen, after = [], None
        while rows := store.heads(after=after, limit=2):
            seen += [key for _, key, _ in rows]
            after = (rows[-1][0], rows[-1][1])
        assert seen == live
        purged, late = 0, _T + timedelta(days=9)
        while done := store.purge(now=late, retention=timedelta(days=1), limit=2):
            purged += done
        assert purged == len(live)


def test_a_claim_refuses_a_key_whose_indexed_record_was_deleted(
    local_prefix: str, local_redis: Any
) -> None:
    # A paid record deleted outside payonce (an operator's DEL, an eviction allowed by
    # allow_unsafe_durability) while its indexes stay: a new lease would call the gateway for
    # the same payment again. The claim refuses, writing nothing, as ``newest`` does.
    from payonce import StoreError  # noqa: PLC0415

    client = local_redis  # changes the store's keys behind its back
    with _local_store(local_prefix, buckets=1) as store:
        new = NewRecord("tenant-a", "k1", "fp", "{}", "po1_k1", "charge", 100, "usd")
        lease = store.claim(new, now=_T, lease_for=LEASE).lease
        assert lease is not None
        store.complete("tenant-a", "k1", token=lease.token, status=Status.SUCCEEDED,
                       outcome="{}", now=_T)  # fmt: skip
        (record_key,) = [k for k in client.scan_iter(match=f"*{local_prefix}*") if b":rec:" in k]
        client.unlink(record_key)
        later = _T + timedelta(days=2)
        with pytest.raises(StoreError, match="deleted outside payonce") as caught:
            store.claim(new, now=later, lease_for=LEASE)
        assert not isinstance(caught.value, StoreUnavailableError)
        assert store.get("tenant-a", "k1") is None
        assert [e.event.value for e in store.entries(after=0, limit=10)] == [
            "claimed",
            "succeeded",
        ]


def _two_released_keys(store: RedisStore) -> None:
    """k1 and then k2 claimed and released (no record left of either): seqs 1 to 4."""
    for key in ("k1", "k2"):
        new = NewRecord("tenant-a", key, "fp", "{}", "po1_" + key, "charge", 100, "usd")
        lease = store.claim(new, now=_T, lease_for=LEASE).lease
        assert lease is not None
        store.release("tenant-a", key, token=lease.token, reason="not sent", now=_T)


@pytest.mark.parametrize(("deleted", "first_missing"), [((1, 2), 1), ((4, 4), 4), ((3, 4), 3)])
def test_verify_catches_deleted_entries_of_keys_without_a_record_on_one_server(
    local_prefix: str, local_redis: Any, deleted: tuple[int, int], first_missing: int
) -> None:
    # No record head can reveal these (the keys were released), and before a seal no checkpoint
    # can. On one server the script writing an entry draws its seq, so seqs have no gaps and the
    # counter is the horizon: a hole, and a missing tail below the counter, are deletions.
    from payonce import LedgerCorruptedError, verify_ledger  # noqa: PLC0415

    client = local_redis  # changes the store's keys behind its back
    with _local_store(local_prefix, buckets=1) as store:
        assert store.gapless_ledger is True
        _two_released_keys(store)
        assert verify_ledger(store).entries == 4
        (log,) = [k for k in client.scan_iter(match=f"*{local_prefix}*") if k.endswith(b":log")]
        client.zremrangebyscore(log, *deleted)
        with pytest.raises(LedgerCorruptedError) as caught:
            verify_ledger(store)
        assert caught.value.seq == first_missing
        assert "entries were deleted" in str(caught.value)


def test_the_cluster_layout_keeps_its_ledger_gaps_allowed() -> None:
    # On Cluster a seq is drawn a round trip before its script, whose compare-and-set may miss.
    from payonce.stores._redis_core import RedisCore  # noqa: PLC0415

    core = RedisCore(prefix="payonce", buckets=4, cluster=True, read_first=None)
    assert core.gapless_ledger is False
    assert RedisCore(prefix="payonce", buckets=4, cluster=False, read_first=None).gapless_ledger

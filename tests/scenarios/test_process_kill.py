"""SCENARIOS R6-R8: a worker process SIGKILLed at every fault point of DESIGN §11, against the
Stripe-compatible server (G1) and SimulatedGateway without idempotency (G2), on SQLite,
PostgreSQL and Redis. Then a retry, the Reconciler and the I1-I5 check.

- G2: the simulated provider lives in the test process and serves the worker over a local
  authenticated connection (``multiprocessing.connection``), so that its ledger outlives the
  worker. The worker sends itself SIGKILL at the point: the guard's points through ``faults``,
  ``gateway.before_send`` just before its request leaves and ``gateway.after_send`` just after
  the provider's answer arrived.
- G1: ``gateway.before_send`` and ``gateway.after_send``, where the worker is inside the SDK's
  HTTP call: the fault proxy stalls the request (never forwarded) or holds Stripe's answer, and
  the test SIGKILLs the worker then. (G1's kills at the guard's points are in
  test_process_crash.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from payonce import InProgressError, Intent, OutcomeUnknownError, Status, Store
from payonce._reconciler import REVIEW
from payonce.testing import ManualClock
from tests import conftest
from tests.fault_proxy import Mode
from tests.scenarios.harness import API_KEY, World, check, open_world
from tests.stripe_server import StripeMock

ROOT = Path(__file__).resolve().parents[2]
WORKER_LEASE = timedelta(seconds=30)
# The worker's claim is stamped by its own system clock, a little after the test's clock was
# read: move well past its lease.
AFTER_LEASE = WORKER_LEASE + timedelta(seconds=30)
EVENT_TIMEOUT = 30.0  # seconds; only a safety net so that a broken test fails, never a timing
BACKENDS = ("sqlite", "postgres", "redis")
POINTS = (
    "before_claim",
    "after_claim",
    "gateway.before_send",
    "gateway.after_send",
    "before_complete",
    "after_complete",
)

WORKER = """
import os, signal, sys
from datetime import timedelta
backend, where, prefix, point, gateway, address, secret, reference, nonce, account = sys.argv[1:11]
from payonce import Guard, Intent
if backend == "sqlite":
    from payonce import SQLiteStore
    store = SQLiteStore(where)
elif backend == "postgres":
    from payonce.stores import PostgresStore
    store = PostgresStore(where)
else:
    from payonce.stores import RedisStore
    store = RedisStore(where, prefix=prefix)

def kill(name):
    if name == point:
        os.kill(os.getpid(), signal.SIGKILL)

if gateway == "g1":
    import stripe
    from payonce.gateways.stripe import StripeGateway
    client = stripe.StripeClient(sys.argv[11], base_addresses={"api": address},
                                 stripe_account=account)
    provider = StripeGateway(client)
else:
    from multiprocessing.connection import Client
    host, port, authkey = address.split(":")

    class Remote:
        idempotency_window = None  # G2: the provider does not deduplicate

        def __init__(self):
            self.conn = Client((host, int(port)), authkey=bytes.fromhex(authkey))

        def execute(self, intent, provider_key, *, key):
            kill("gateway.before_send")
            self.conn.send(("execute", intent.canonical(), provider_key, key, {}))
            answer = self.conn.recv()
            kill("gateway.after_send")
            return answer

        def lookup(self, intent, provider_key, *, key, since=None):
            self.conn.send(("lookup", intent.canonical(), provider_key, key, {"since": since}))
            return self.conn.recv()

    provider = Remote()
guard = Guard(store, secret=bytes.fromhex(secret), scope="tenant-a",
              lease=timedelta(seconds=30), gateway=provider, faults=kill)
intent = Intent("charge", 2500, "usd", payment_method="tok_visa", reference=reference,
                metadata={"scenario": nonce})
print(guard.execute(intent).value["id"])
"""


class ProviderServer:
    """Serves a gateway of this process to worker processes: ``(method, intent fields,
    provider key, key)`` in, the gateway's answer out."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.authkey = os.urandom(16)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.authkey)
        self.threads: list[threading.Thread] = []
        self.closing = threading.Event()

    @property
    def address(self) -> str:
        host, port = self.listener.address
        return f"{host}:{port}:{self.authkey.hex()}"

    def __enter__(self) -> ProviderServer:
        self._start(self._accept)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing a listening socket does not wake a blocked accept(): a last client does.
        self.closing.set()
        host, port = self.listener.address
        with suppress(OSError), Client((host, port), authkey=self.authkey):
            pass
        self.listener.close()
        for thread in self.threads:
            thread.join(timeout=5)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
            except OSError:
                return  # closed
            if self.closing.is_set():
                conn.close()
                return
            self._start(self._serve, conn)

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    method, fields, provider_key, key, options = conn.recv()
                except (EOFError, OSError):
                    return  # the worker died
                intent = Intent.from_dict(fields)
                answer = getattr(self.gateway, method)(intent, provider_key, key=key, **options)
                with suppress(OSError):
                    conn.send(answer)


def _worker(
    world: World, backend: str, where: list[str], point: str, address: str
) -> subprocess.Popen[str]:
    intent = world.intent("process-kill", 2500)
    argv = [
        sys.executable, "-c", WORKER, backend, *where, point, world.name, address,
        conftest.SECRET.hex(), intent.reference or "", world.nonce, world.account or "", API_KEY,
    ]  # fmt: skip
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _killed(worker: subprocess.Popen[str]) -> None:
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == -signal.SIGKILL, err[-2000:]


def _retry_and_check(world: World, point: str, *, charged: bool, resend: bool) -> None:
    """What the kill left, the retry after the lease, the Reconciler and I1-I5."""
    intent = world.intent("process-kill", 2500)
    key = world.key_of(intent)
    record = world.record(intent)
    assert len(world.charges(key)) == (1 if charged else 0)
    if point == "before_claim":
        assert record is None
    elif point == "after_complete":
        assert record is not None
        assert record.status is Status.SUCCEEDED
    else:
        assert record is not None
        assert record.status is Status.CLAIMED  # a durable claim, never half a record
        with pytest.raises(InProgressError):  # the dead worker's lease is still live
            world.guard().execute(intent)
    world.clock.advance(AFTER_LEASE)
    acks = []
    if charged or resend or point == "before_claim":
        outcome = world.guard().execute(intent)
        assert outcome.replayed is (point == "after_complete")
        [charge] = world.charges(key)
        assert outcome.value["id"] == charge["id"]
        if record is not None and point != "after_complete":
            # Resent (G1) or looked up (G2) under the key fixed at claim: never a new one.
            assert {c.provider_key for c in world.calls()} <= {record.provider_key}
        acks.append(outcome)
    else:
        # G2, nothing charged, and the provider does not deduplicate: the taker-over cannot
        # prove a resend safe; it looks up, finds nothing and leaves it to the Reconciler.
        with pytest.raises(OutcomeUnknownError):
            world.guard().execute(intent)
        assert world.calls() == []
    world.reconcile()
    final = world.record(intent)
    assert final is not None
    if acks:
        assert final.status is Status.SUCCEEDED
    else:
        assert final.status is Status.UNKNOWN
        assert (final.reason or "").startswith(REVIEW)  # flagged, never silently dropped
    assert len(world.charges(key)) == len(acks)
    check(world, acks)


@pytest.mark.parametrize(
    ("shared", "point"),
    [(backend, point) for backend in BACKENDS for point in POINTS],
    indirect=["shared"],
)
def test_r6_r7_r8_sigkill_at_every_fault_point_without_provider_dedup(
    shared: tuple[str, Store, list[str]], point: str
) -> None:
    backend, store, where = shared
    clock = ManualClock(datetime.now(UTC))
    with open_world("g2", store, clock, None) as world, ProviderServer(world.sim) as server:
        _killed(_worker(world, backend, where, point, server.address))
        charged = point in ("gateway.after_send", "before_complete", "after_complete")
        _retry_and_check(world, point, charged=charged, resend=False)


@pytest.mark.parametrize(
    ("shared", "point"),
    [(backend, point) for backend in BACKENDS for point in ("gateway.before_send",
                                                            "gateway.after_send")],
    indirect=["shared"],
)  # fmt: skip
def test_r6_r7_sigkill_inside_the_stripe_call(
    shared: tuple[str, Store, list[str]], stripe_server: StripeMock, point: str
) -> None:
    backend, store, where = shared
    clock = ManualClock(datetime.now(UTC))
    with open_world("g1", store, clock, stripe_server) as world:
        assert world.proxy is not None
        world.proxy.plan(Mode.STALL if point == "gateway.before_send" else Mode.HOLD)
        # The worker's own point is a name it never reaches: the test kills it from outside.
        worker = _worker(world, backend, where, "none", world.proxy.url)
        try:
            call = world.proxy.connection(1, timeout=EVENT_TIMEOUT)
            arrived = call.requested if point == "gateway.before_send" else call.upstream_answered
            assert arrived.wait(EVENT_TIMEOUT), "the worker's request never got that far"
        finally:
            worker.send_signal(signal.SIGKILL)
        _killed(worker)
        assert call.forwarded is (point == "gateway.after_send")
        _retry_and_check(world, point, charged=point == "gateway.after_send", resend=True)

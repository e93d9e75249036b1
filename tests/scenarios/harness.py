"""The scenario harness: one ``World`` per gateway over one store, and the I1-I5 check.

- G1 (``g1``): stripe-stateful-mock through the loopback fault proxy, called by ``StripeGateway``
  on the real SDK. Every request closes its connection, so that the proxy's plan applies to the
  very next call. Its movements are read back from the server (``GET /v1/charges`` and
  ``/v1/refunds`` through the SDK) and matched by ``metadata["payonce_key"]``.
- G2 (``g2``): ``SimulatedGateway(idempotent=False)``: every call that executes moves money, so
  only payonce keeps it to one. Its movements come from its own ledger.

Both are wrapped by ``Recorded``, which logs every call (provider key, the record's attempt at
call time, clock time) so that a movement can be tied to the attempt that made it.

Faults are named once here (``World.fault``) and mapped to each gateway: a dropped answer is
the proxy's DROP_RESPONSE on G1 and ``after_send`` on G2, and so on.

``check(world, acks)`` runs ``tests.faults.history.check_history`` with the gateway's movements,
allows only records flagged for review to stay UNKNOWN, and adds what the checker cannot see on
its own: every acknowledged id is a real object of that amount and currency (I2), FAILED
records have no object that moved money (I3), every object with a ``payonce_key`` has a record
(I4: no orphan) and the money recorded equals the money moved, per currency (I5).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
import stripe

from payonce import Event, Guard, Intent, Reconciler, Record, Status, Store
from payonce._keys import Keys
from payonce._model import GatewayAnswer
from payonce._reconciler import REVIEW
from payonce.gateways._simulated import Fault, SimulatedGateway
from payonce.gateways.stripe import StripeGateway
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.fault_proxy import Canned, FaultProxy, Mode
from tests.faults.history import History, check_history
from tests.stripe_server import StripeMock

GATEWAYS = ("g1", "g2")
API_KEY = "sk_test_payonceScenarioKey7d3e9a1f0c52"  # the secret scan (S6) looks for it
KEYS = Keys(SECRET)
LEASE = timedelta(seconds=60)
#: The fields a stored outcome value may hold (S7): ids, status, amounts, currency, codes.
ALLOWED_VALUE = frozenset(
    {
        "id", "object", "status", "amount", "currency", "amount_refunded", "captured",
        "amount_received", "charge", "payment_intent", "amount_reversed", "type", "code",
        "decline_code", "param",
    }
)  # fmt: skip
#: What each SUCCEEDED operation adds to the money moved (I5); a cancel releases a hold, which
#: moved nothing, and a charge that was only authorised (a hold) moves nothing either.
MONEY_SIGN = {"charge": 1, "capture": 1, "refund": -1}

# Network faults: each maps to a proxy mode on G1 and a scripted fault on G2.
DROP = "drop"  # the provider acted, the answer was lost
BLACKHOLE = "blackhole"  # the provider acted, the client timed out
RESET = "reset"  # the request never reached the provider
IN_USE = "in_use"  # the provider is still processing a request with the same key
# Stripe's 409 for a key whose first request is still executing (the mock cannot give it): the
# proxy answers it on the wire, so the real SDK and StripeGateway read a real HTTP answer.
IN_USE_409 = Canned(
    409,
    json.dumps(
        {
            "error": {
                "code": "idempotency_key_in_use",
                "message": "There is currently another in-progress request using this "
                "Idempotency Key. Please try again later.",
                "type": "invalid_request_error",
            }
        }
    ).encode(),
    (("Retry-After", "1"), ("Stripe-Should-Retry", "true")),
)


class Crash(BaseException):
    """Stands in for a killed worker at a guard fault point: nothing after it runs."""


def crash_at(point: str) -> Any:
    def faults(name: str) -> None:
        if name == point:
            raise Crash(point)

    return faults


@dataclass(frozen=True, slots=True)
class SentCall:
    """One ``execute`` as the wrapper saw it."""

    scope: str
    key: str
    provider_key: str
    attempt: int
    at: datetime
    kind: str | None = None
    generation: int = 0


class _TaggedSimulated(SimulatedGateway):
    """SimulatedGateway that remembers which attempt made each movement."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.local = threading.local()
        self.attempts: list[tuple[int, int]] = []  # (attempt, generation) of each movement

    def _move(self, obj: Any, op: str, amount: int, pk: str, key: str) -> None:
        super()._move(obj, op, amount, pk, key)
        stack = getattr(self.local, "stack", None) or [(1, 0)]
        self.attempts.append(stack[-1])


class _Generations:
    """Counts each key's ``claimed`` ledger entries as the ledger grows: the generation of a
    key's current lifetime (a released key claimed again starts the next one)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._after = 0
        self._claims: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()

    def of(self, scope: str, key: str) -> int:
        with self._lock:
            while batch := list(self._store.entries(after=self._after, limit=1000)):
                for entry in batch:
                    if entry.event is Event.CLAIMED:
                        self._claims[(entry.scope, entry.key)] += 1
                self._after = batch[-1].seq
            return max(self._claims[(scope, key)] - 1, 0)


class Recorded:
    """A gateway wrapper that logs every call; shares its log with its siblings."""

    def __init__(
        self,
        inner: Any,
        store: Store,
        clock: ManualClock,
        *,
        scope: str | None,
        log: list[SentCall],
        generations: _Generations,
    ) -> None:
        self.inner = inner
        self.store = store
        self.clock = clock
        self.scope = scope
        self.log = log
        self.generations = generations
        self.idempotency_window = inner.idempotency_window
        self.lookups = 0

    def execute(self, intent: Intent, provider_key: str, *, key: str) -> GatewayAnswer:
        if self.scope is not None:
            record = self.store.get(self.scope, key)
        else:  # the Reconciler's: it serves every scope
            record = next((r for r in all_records(self.store) if r.key == key), None)
        attempt = record.attempt if record is not None else 0
        scope = record.scope if record is not None else SCOPE
        generation = self.generations.of(scope, key)
        local = getattr(self.inner, "local", None)
        stack: list[tuple[int, int]] = []
        if local is not None:
            stack = getattr(local, "stack", None) or []
            local.stack = stack
        stack.append((attempt, generation))
        try:
            result: GatewayAnswer = self.inner.execute(intent, provider_key, key=key)
        finally:
            stack.pop()
        self.log.append(
            SentCall(
                scope, key, provider_key, attempt, self.clock.now(), result.kind.value, generation
            )
        )
        return result

    def lookup(
        self, intent: Intent, provider_key: str, *, key: str, since: datetime | None = None
    ) -> GatewayAnswer | None:
        self.lookups += 1
        found: GatewayAnswer | None = self.inner.lookup(intent, provider_key, key=key, since=since)
        return found


def stripe_client(url: str, *, account: str | None = None, timeout: float = 5.0) -> Any:
    """A StripeClient whose every request opens (and closes) its own connection; with
    ``account``, acting on that connected account (the mock keeps each account's objects apart,
    so that a world lists only its own)."""
    session = requests.Session()
    session.headers["Connection"] = "close"
    return stripe.StripeClient(
        API_KEY,
        base_addresses={"api": url},
        http_client=stripe.RequestsClient(timeout=timeout, session=session),
        stripe_account=account,
    )


@dataclass
class World:
    """One scenario's provider, store and clock."""

    name: str
    store: Store
    clock: ManualClock
    nonce: str
    sim: _TaggedSimulated | None = None
    proxy: FaultProxy | None = None
    direct: Any = None  # G1: a client straight to the server, for reading it back
    log: list[SentCall] = field(default_factory=list)
    timeout: float = 5.0
    account: str | None = None  # G1: the connected account this world's objects live on
    generations: _Generations = field(init=False)

    def __post_init__(self) -> None:
        self.generations = _Generations(self.store)

    @property
    def g1(self) -> bool:
        return self.name == "g1"

    # -- building blocks ---------------------------------------------------------------------

    def gateway(self, scope: str | None = SCOPE, *, timeout: float | None = None) -> Recorded:
        """A recorded gateway: on G1 with a client of its own (one per thread)."""
        if self.g1:
            assert self.proxy is not None
            client = stripe_client(
                self.proxy.url, account=self.account, timeout=timeout or self.timeout
            )
            inner: Any = StripeGateway(client)
        else:
            inner = self.sim
        return Recorded(
            inner, self.store, self.clock, scope=scope, log=self.log, generations=self.generations
        )

    def guard(
        self,
        scope: str = SCOPE,
        *,
        gateway: Recorded | None = None,
        store: Store | None = None,
        **kw: Any,
    ) -> Guard:
        kw.setdefault("lease", LEASE)
        kw.setdefault("wait", timedelta(0))
        return Guard(
            store or self.store,
            secret=SECRET,
            scope=scope,
            clock=self.clock,
            gateway=gateway or self.gateway(scope),
            **kw,
        )

    def reconciler(self, **kw: Any) -> Reconciler:
        gateway = self.gateway(None)
        return Reconciler(self.store, gateway, clock=self.clock, **kw)  # type: ignore[arg-type]

    def reconcile(self, after: timedelta = LEASE + timedelta(seconds=1)) -> None:
        """Let every lease expire (and, with a longer ``after``, the review flags' rest), then
        run passes until one finds nothing left to settle."""
        self.clock.advance(after)
        reconciler = self.reconciler()
        for _ in range(5):
            report = reconciler.run_once(batch=500)
            if report.succeeded + report.failed == 0:
                return

    def intent(
        self,
        ref: str,
        amount: int = 1000,
        *,
        pm: str | None = "tok_visa",
        **kw: Any,
    ) -> Intent:
        """A charge (or any operation via ``operation=``) tagged with this world's nonce."""
        operation = kw.pop("operation", "charge")
        return Intent(
            operation,
            amount,
            kw.pop("currency", "usd"),
            payment_method=pm if operation == "charge" else None,
            reference=f"{ref}-{self.nonce}",
            metadata={"scenario": self.nonce},
            **kw,
        )

    def refund(self, target: str, amount: int, ref: str) -> Intent:
        return Intent(
            "refund",
            amount,
            "usd",
            target=target,
            reference=f"{ref}-{self.nonce}",
            metadata={"scenario": self.nonce},
        )

    def key_of(self, intent: Intent, scope: str = SCOPE) -> str:
        key = KEYS.material(scope, intent).key
        assert key is not None
        return key

    def record(self, intent: Intent, scope: str = SCOPE) -> Record | None:
        return self.store.get(scope, self.key_of(intent, scope))

    # -- faults --------------------------------------------------------------------------------

    def fault(self, *kinds: str | None) -> None:
        """Queue faults for the next calls (None: no fault). Kinds: drop, blackhole, reset,
        in_use, and on G2 any SimulatedGateway fault kind."""
        if self.g1:
            assert self.proxy is not None
            modes: dict[str | None, Mode | Canned] = {
                None: Mode.PASS,
                DROP: Mode.DROP_RESPONSE,
                BLACKHOLE: Mode.BLACKHOLE,
                RESET: Mode.RESET,
                IN_USE: IN_USE_409,
            }
            self.proxy.plan(*(modes[k] for k in kinds))
            return
        assert self.sim is not None
        names = {
            DROP: "after_send",
            BLACKHOLE: "after_send",
            RESET: "before_send",
            IN_USE: "in_progress_409",
        }
        self.sim.script([None if k is None else Fault(names.get(k, k)) for k in kinds])

    def clear_faults(self) -> None:
        """Drop the faults still queued (a fault queued for an operation that replayed)."""
        # Neither the proxy nor the provider has a public way to drop its queue.
        if self.proxy is not None:
            self.proxy._plan.clear()
        if self.sim is not None:
            self.sim._queue.clear()

    def calls(self, key: str | None = None) -> list[SentCall]:
        return [c for c in self.log if key is None or c.key == key]

    # -- the provider's side ---------------------------------------------------------------------

    def objects(self) -> list[dict[str, Any]]:
        """Every charge and refund of this world at the provider, as plain dicts."""
        out: list[dict[str, Any]] = []
        if self.g1:
            captured: dict[str, bool] = {}
            for kind, service in (("charge", "charges"), ("refund", "refunds")):
                for listed in getattr(self.direct.v1, service).list().data:
                    obj = listed.to_dict()
                    meta = obj.get("metadata") or {}
                    # A compensation carries payonce's metadata only: it belongs to this world
                    # when the charge it acts on does.
                    if meta.get("scenario") != self.nonce and obj.get("charge") not in captured:
                        continue
                    moved = obj["status"] == "succeeded"
                    if kind == "charge":
                        captured[obj["id"]] = moved and bool(obj.get("captured"))
                        net = obj["amount"] if captured[obj["id"]] else 0
                    else:  # a refund of a charge never captured releases a hold: no money
                        net = obj["amount"] if moved and captured[obj["charge"]] else 0
                    out.append(
                        {
                            "id": obj["id"],
                            "object": kind,
                            "amount": obj["amount"],
                            "currency": obj["currency"],
                            "customer": obj.get("customer"),
                            "payonce_key": meta.get("payonce_key"),
                            "moved": moved,
                            "net": net,
                            "amount_refunded": obj.get("amount_refunded") or 0,
                            "target": obj.get("charge"),
                        }
                    )
            return out
        assert self.sim is not None
        moved_ids = {m.object_id for m in self.sim.movements()}
        for obj in self.sim.objects():
            moved = obj.id in moved_ids
            # A refund moves its amount; a charge what was captured (0 for a hold).
            refunded = obj.amount if moved else 0
            net = refunded if obj.object == "refund" else obj.amount_captured
            out.append(
                {
                    "net": net,
                    "id": obj.id,
                    # A PaymentIntent moves money like a charge does.
                    "object": "charge" if obj.object == "payment_intent" else obj.object,
                    "amount": obj.amount,
                    "currency": obj.currency,
                    "customer": obj.customer,
                    "payonce_key": obj.payonce_key,
                    "moved": moved,
                    "amount_refunded": obj.amount_refunded,
                    "target": obj.target,
                }
            )
        return out

    def charges(self, key: str | None = None) -> list[dict[str, Any]]:
        """The charges that moved money, of record key ``key`` if given."""
        return [
            o
            for o in self.objects()
            if o["object"] == "charge" and o["moved"] and (key is None or o["payonce_key"] == key)
        ]

    def movements(self) -> list[dict[str, Any]]:
        """The provider's money movements in ``check_history``'s shape."""
        owners = _owners(self.store)
        if not self.g1:
            assert self.sim is not None
            return [
                {
                    "provider_key": m.provider_key,
                    "attempt": attempt,
                    "generation": generation,
                    "key": m.payonce_key,
                }
                for m, (attempt, generation) in zip(
                    self.sim.movements(), self.sim.attempts, strict=True
                )
            ]
        out = []
        for obj in self.objects():
            if not obj["moved"] or obj["payonce_key"] is None:
                continue
            key = obj["payonce_key"]
            _, provider_key = owners.get(key, (SCOPE, KEYS.provider_key(SCOPE, key)))
            # The first call of the key's last lifetime made it (a lifetime is only closed
            # and claimed again after a release: nothing was sent); later calls replayed.
            sent = [c for c in self.log if c.provider_key == provider_key]
            last = max((c.generation for c in sent), default=0)
            first = min(
                (c for c in sent if c.generation == last), key=lambda c: c.attempt, default=None
            )
            out.append(
                {
                    "provider_key": provider_key,
                    "attempt": first.attempt if first is not None else 1,
                    "generation": first.generation if first is not None else 0,
                    "key": key,
                }
            )
        return out


def _owners(store: Store) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for record in all_records(store):
        out[record.key] = (record.scope, record.provider_key)
    return out


def all_records(store: Store) -> list[Record]:
    out: list[Record] = []
    after: tuple[str, str] | None = None
    while rows := list(store.heads(after=after, limit=500)):
        for scope, key, _ in rows:
            record = store.get(scope, key)
            if record is not None:
                out.append(record)
        after = (rows[-1][0], rows[-1][1])
    return out


@contextlib.contextmanager
def open_world(
    name: str, store: Store, clock: ManualClock, server: StripeMock | None
) -> Iterator[World]:
    nonce = uuid.uuid4().hex[:12]
    if name == "g1":
        assert server is not None
        # Every request opens a connection of its own: room for a soak's worth of them.
        with FaultProxy((server.host, server.port), lifetime=120.0, max_connections=5000) as proxy:
            account = str(
                stripe_client(server.url).v1.accounts.create(params={"type": "custom"})["id"]
            )
            direct = stripe_client(server.url, account=account)
            yield World(name, store, clock, nonce, proxy=proxy, direct=direct, account=account)
        return
    yield World(name, store, clock, nonce, sim=_TaggedSimulated(idempotent=False, clock=clock))


def sim_world(
    store: Store,
    clock: ManualClock,
    *,
    idempotent: bool,
    sleep: Any = None,
) -> World:
    """A world on SimulatedGateway alone (G3: what the mock cannot do, such as 409 in flight and
    a call that outlives its lease), with its idempotency on (Stripe-like) or off."""
    sim = _TaggedSimulated(idempotent=idempotent, clock=clock, sleep=sleep)
    return World("g3" if idempotent else "g2", store, clock, uuid.uuid4().hex[:12], sim=sim)


def check(world: World, acks: Iterable[Any] = ()) -> History:
    """Assert I1-I5 over the world (see the module docstring); return the rebuilt history."""
    acks = list(acks)
    records = all_records(world.store)
    flagged = {
        r.key for r in records if r.status is Status.UNKNOWN and (r.reason or "").startswith(REVIEW)
    }
    history = check_history(world.store, world.movements(), acks, unresolved=flagged)
    objects = world.objects()
    by_id = {o["id"]: o for o in objects}
    by_key = {r.key: r for r in records}
    problems: list[str] = []
    for ack in acks:
        value = json.loads(ack.body)["value"]
        record = by_key.get(ack.key)
        obj = by_id.get(value.get("id"))
        if obj is None or not obj["moved"]:
            problems.append(f"I2: {ack.key} acknowledged {value.get('id')}, not at the provider")
        elif record is not None and record.operation in ("cancel", "capture"):
            # Both answer with the charge they act on (G2), or a refund releasing it (G1).
            continue
        elif record is not None and (obj["amount"], obj["currency"]) != (
            record.amount,
            record.currency,
        ):
            problems.append(f"I2: {ack.key}: provider holds {obj}, record says {record.amount}")
        elif obj["payonce_key"] != ack.key:
            problems.append(f"I2: {ack.key}: object {obj['id']} is stamped {obj['payonce_key']}")
    for obj in objects:
        if obj["payonce_key"] is not None and obj["payonce_key"] not in by_key and obj["moved"]:
            problems.append(f"I4: orphan {obj['object']} {obj['id']} has no record")
        record = by_key.get(obj["payonce_key"])
        if obj["moved"] and record is not None and record.status is Status.FAILED:
            problems.append(f"I3: {record.key} is FAILED but {obj['id']} moved money")
    recorded: dict[str, int] = defaultdict(int)
    for record in records:
        if record.status is Status.SUCCEEDED and record.operation in MONEY_SIGN:
            if record.operation == "charge" and _hold(record):
                continue
            recorded[record.currency] += MONEY_SIGN[record.operation] * record.amount
    moved: dict[str, int] = defaultdict(int)
    for obj in objects:
        if obj["moved"] and obj["payonce_key"] in by_key:
            sign = 1 if obj["object"] == "charge" else -1
            moved[obj["currency"]] += sign * obj["net"]
    # A record flagged for review counts as nothing recorded: if money moved for it, I5 fails.
    if {c: a for c, a in recorded.items() if a} != {c: a for c, a in moved.items() if a}:
        problems.append(f"I5: recorded {dict(recorded)} but the provider moved {dict(moved)}")
    assert not problems, "\n".join([*problems, _dump(world, records, objects)])
    return history


def _hold(record: Record) -> bool:
    """Whether a SUCCEEDED charge only authorised the money (captured later, or released)."""
    value = json.loads(record.outcome or "{}").get("value") or {}
    return value.get("captured") is False or value.get("status") == "requires_capture"


def _dump(world: World, records: list[Record], objects: list[dict[str, Any]]) -> str:
    """The state behind a failed check, to read the failure without rerunning it."""
    lines = ["records:"]
    lines += [
        f"  {r.scope} {r.key[:14]} {r.operation} {r.amount} {r.status.value} attempt {r.attempt}"
        f" created {r.created_at:%H:%M:%S} reason {r.reason!r}"
        for r in records
    ]
    lines.append("provider objects:")
    lines += [
        f"  {o['object']} {o['id']} {o['amount']} moved={o['moved']}"
        f" key {str(o['payonce_key'])[:14]}"
        for o in objects
    ]
    lines.append("calls:")
    lines += [
        f"  {c.scope} {c.key[:14]} attempt {c.attempt} {c.at:%H:%M:%S} {c.kind}" for c in world.log
    ]
    return "\n".join(lines)

"""The Redis store's logic without I/O (L4): every operation of ``RedisStore`` and
``AsyncRedisStore`` as a generator of Redis effects, and the encoding of records and entries.

The ledger entry's SHA-256 cannot be computed in Lua, so each transition is computed here with
``payonce._transitions`` from the record as the client last saw it, and the script
(``_redis_lua``) applies it only if the record is still exactly that one (token, status and
ledger head); otherwise the script answers with the record as it is now and the operation
decides again: ``LeaseLostError``, a refusal, or another attempt. The record a store instance
just wrote is remembered, so a complete after a claim costs one round trip.

The lease a store instance issued (claim, takeover) is remembered with its ``lease_id`` nonce,
and that instance's complete, mark_unknown and release fence on the nonce as well as on the
token: a failover that lost a claim lets the next claim get the same token again, and only the
nonce tells the lost lease from the new one. The same memory makes a claim or a takeover of a
key whose lease this instance still holds in flight, but which Redis lost, continue past that
lease's token.

An operation yields effects (a script, a client command, a fan-out over buckets) and receives
their replies; ``RedisStore`` and ``AsyncRedisStore`` perform them blocking or awaited, so the
two cannot drift apart (the guard's own design, DESIGN §10).
"""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
import threading
import zlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeAlias, TypeVar

from payonce._chain import checkpoint_digest, from_micros, to_micros
from payonce._errors import (
    ConfigurationError,
    ConflictError,
    LeaseLostError,
    StoreError,
    StoreMissingError,
    StoreUnavailableError,
)
from payonce._keys import canonical_flat, canonical_json
from payonce._model import Checkpoint, Claimed, Entry, Event, NewRecord, Record, ReplayView, Status
from payonce._transitions import (
    claim_transition,
    complete_transition,
    purge_transition,
    release_transition,
    takeover_eligible,
    takeover_transition,
    unknown_transition,
)
from payonce.stores._read_first import ReadFirst

__all__ = [
    "SCRIPT_NAMES", "Command", "Effect", "Fanout", "Op", "Pause", "RedisCore", "Script", "text",
]  # fmt: skip

_T = TypeVar("_T")

_LAYOUT: Final = "1"  # the key layout of _redis_lua; a new layout gets a new number
_ATTEMPTS: Final = 32  # compare-and-set rounds before giving up (each sees a newer record)
# The pause before another attempt after a seq refusal (Cluster: a write of another record of
# the bucket took a higher seq first): full jitter up to FIRST * 2**refusals, at most CAP, so
# writers that collided do not collide again in step. At most about half a second in all.
_BACKOFF_FIRST: Final = timedelta(milliseconds=1)
_BACKOFF_CAP: Final = timedelta(milliseconds=20)
_REMEMBERED: Final = 4096  # records remembered for one-round-trip fenced writes
_MUTABLE: Final = (
    "status", "token", "attempt", "lease_expires_at", "outcome", "reason", "ledger_head",
    "updated_at",
)  # fmt: skip
_TIMES: Final = frozenset({"lease_expires_at", "created_at", "updated_at"})
_STATUSES: Final = {s.value: s for s in Status}
_EVENTS: Final = {e.value: e for e in Event}
_SEALED: Final = "sealed"  # the watermark member of a bucket's log (entries are JSON arrays)
_SEAL_BATCH: Final = 5000
_VIEW: Final = ("status", "fingerprint", "outcome", "attempt", "provider_key")
# The scripts of _redis_lua each operation may yield, by name.
SCRIPT_NAMES: Final = (
    "claim", "apply", "purge", "purge_candidates", "scan", "heads", "newest",
    "append_checkpoint", "seq", "meta",
)  # fmt: skip


# -- effects ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Script:
    """Effect: run a registered script; the driver sends back its reply."""

    name: str
    keys: list[str]
    args: list[str]


@dataclass(slots=True)
class Command:
    """Effect: one client method call (``hgetall``, ``zrangebyscore``...)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Fanout:
    """Effect: independent calls (one per bucket); the driver sends back their replies in order."""

    calls: list[Script | Command]


@dataclass(slots=True)
class Pause:
    """Effect: wait ``delay`` (sleep, or await), then send back None; a backoff between
    attempts, never on an operation's first try."""

    delay: timedelta


Effect: TypeAlias = Script | Command | Fanout | Pause
Op: TypeAlias = Generator[Effect, Any, _T]


# -- encoding --------------------------------------------------------------------------------------


def text(value: Any) -> Any:
    """A reply value as str: clients with and without decode_responses answer alike."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _ident(scope: str, name: str) -> str:
    """Order-preserving, unambiguous encoding of (scope, name); see ``_redis_lua``."""
    return scope.replace("\0", "\0\1") + "\0\0" + name.replace("\0", "\0\1")


def _fields(reply: Any) -> dict[str, str]:
    """A hash as returned by HGETALL (a dict) or by a script (a flat array)."""
    if isinstance(reply, Mapping):
        return {text(k): text(v) for k, v in reply.items()}
    items = [text(v) for v in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


def _record(reply: Any) -> Record | None:
    f = _fields(reply)
    if not f:
        return None
    lease = f.get("lease_expires_at")
    return Record(
        scope=f["scope"],
        key=f["key"],
        status=_STATUSES[f["status"]],
        fingerprint=f["fingerprint"],
        intent=f["intent"],
        provider_key=f["provider_key"],
        operation=f["operation"],
        amount=int(f["amount"]),
        currency=f["currency"],
        token=int(f["token"]),
        attempt=int(f["attempt"]),
        lease_expires_at=None if lease is None else from_micros(int(lease)),
        outcome=f.get("outcome"),
        reason=f.get("reason"),
        ledger_head=f["ledger_head"],
        created_at=from_micros(int(f["created_at"])),
        updated_at=from_micros(int(f["updated_at"])),
        family=f.get("family"),
        generation=int(f["generation"]),
    )


def _pairs(record: Record, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(fields to delete, flat field/value pairs to set) for ``names`` of ``record``."""
    deleted: list[str] = []
    pairs: list[str] = []
    for name in names:
        value = getattr(record, name)
        if value is None:
            deleted.append(name)
            continue
        pairs.append(name)
        if type(value) is str:  # most fields: no conversion (the common case first, for speed)
            pairs.append(value)
        elif name in _TIMES:
            pairs.append(str(to_micros(value)))
        elif isinstance(value, Status):
            pairs.append(value)  # a StrEnum: the member is its value's str, sent as such
        else:
            pairs.append(str(value))
    return deleted, pairs


_RECORD_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Record))


def _claim_pairs(r: Record) -> list[str]:
    """``_pairs(r, _RECORD_FIELDS)[1]`` for the record a claim writes, field by field: this is
    every claim's path, and the loop costs three times as much. A claimed record holds a lease
    and has no outcome and no reason yet; any other record takes the loop."""
    if r.lease_expires_at is None or r.outcome is not None or r.reason is not None:
        return _pairs(r, _RECORD_FIELDS)[1]
    pairs = [
        "scope", r.scope, "key", r.key, "status", r.status, "fingerprint", r.fingerprint,
        "intent", r.intent, "provider_key", r.provider_key, "operation", r.operation,
        "amount", str(r.amount), "currency", r.currency, "token", str(r.token),
        "attempt", str(r.attempt), "lease_expires_at", str(to_micros(r.lease_expires_at)),
        "ledger_head", r.ledger_head, "created_at", str(to_micros(r.created_at)),
        "updated_at", str(to_micros(r.updated_at)),
    ]  # fmt: skip
    if r.family is not None:
        pairs += ("family", r.family)
    pairs += ("generation", str(r.generation))
    return pairs


def _encode_entry(e: Entry) -> str:
    # Status and Event are StrEnums: JSON writes a member as its value, so ``.value`` (a Python
    # descriptor call each) is left out.
    fields = [to_micros(e.at), e.scope, e.key, e.event, e.status_from, e.status_to, e.token]
    fields += [e.attempt, e.amount, e.currency, e.detail, e.prev_hash, e.hash]
    return canonical_flat(fields)  # a flat list: the compact JSON array, quickly


def _decode_entry(member: Any, seq: int) -> Entry:
    at, scope, key, event, status_from, status_to, token, attempt, amount, currency, *rest = (
        json.loads(text(member))
    )
    detail, prev_hash, hash_ = rest
    return Entry(
        seq=seq,
        at=from_micros(at),
        scope=scope,
        key=key,
        event=_EVENTS[event],
        status_from=None if status_from is None else _STATUSES[status_from],
        status_to=None if status_to is None else _STATUSES[status_to],
        token=token,
        attempt=attempt,
        amount=amount,
        currency=currency,
        detail=detail,
        prev_hash=prev_hash,
        hash=hash_,
    )


def _encode_checkpoint(c: Checkpoint) -> str:
    fields = [c.number, to_micros(c.at), c.first_seq, c.last_seq, c.count, c.digest]
    return canonical_json([*fields, c.prev_hash, c.hash])


def _decode_checkpoint(raw: Any) -> Checkpoint:
    number, at, first_seq, last_seq, count, digest, prev_hash, hash_ = json.loads(text(raw))
    return Checkpoint(number, from_micros(at), first_seq, last_seq, count, digest, prev_hash, hash_)


def _exhausted(operation: str) -> StoreUnavailableError:
    """Contention that passes: every attempt of the write in hand was refused and retried (an
    earlier bucket of a purge may have landed, and each attempt raised the Cluster counter)."""
    return StoreUnavailableError(
        f"each of its {_ATTEMPTS} attempts was overtaken by concurrent writes to the same bucket "
        "(one hash slot: on Redis Cluster, entries of other records of the bucket took the "
        "ledger sequence numbers it was given), so the write it was making did not land. This "
        "passes as the load on the bucket drops, and retrying is safe (more buckets spread the "
        "load)",
        operation=operation,
    )


def _backoff(attempt: int, refusals: int) -> Generator[Pause, None, None]:
    """The jittered pause after a seq refusal, the ``refusals``-th (from 0) of an operation
    whose ``attempt``-th try (from 0) it answered; none after the last try."""
    if attempt + 1 < _ATTEMPTS:
        ceiling = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** min(refusals, 16))
        yield Pause(ceiling * random.random())  # noqa: S311 - jitter, not a secret


# -- the shared core -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The key names of one bucket (one hash tag, one Cluster slot)."""

    rec: str
    chain: str
    open: str
    live: str
    done: str
    log: str
    fam: str

    @classmethod
    def of(cls, prefix: str, number: int) -> _Bucket:
        tag = f"{{{prefix}:{number}}}"
        names = ("rec:", "chain", "open", "live", "done", "log", "fam:")
        return cls(*(f"{tag}:{name}" for name in names))


def _check_options(prefix: str, buckets: int) -> None:
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{}\0"):
        raise ConfigurationError(
            f"prefix={prefix!r} must be a non-empty string without '{{', '}}' or NUL, e.g. "
            "'payonce' or 'payonce-staging'; payonce adds its own hash tags.",
            option="prefix",
        )
    # A bool is an int to Python, not a bucket count.
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 16384:
        raise ConfigurationError(
            f"buckets={buckets!r} must be an integer from 1 to 16384 (default 16).",
            option="buckets",
        )


# How to repair a record deleted outside payonce while its index entries stayed.
_RESTORE: Final = (
    "restore the record from a backup (the gateway holds the payment under its provider key)"
)


class RedisCore:
    """Layout, caching and every operation as a generator of effects; no I/O."""

    def __init__(
        self, *, prefix: str, buckets: int, cluster: bool, read_first: bool | None
    ) -> None:
        _check_options(prefix, buckets)
        self._prefix = prefix
        self._cluster = cluster
        # On one server the script that writes an entry draws its seq, so seq has no gaps and
        # verify_ledger reads a gap as a deleted entry; on Cluster a seq is drawn before the
        # compare-and-set, which may miss (see the module doc).
        self.gapless_ledger = not cluster
        self._buckets = [_Bucket.of(prefix, n) for n in range(buckets)]
        self._seq_key = f"{prefix}:seq"
        self._checkpoint_key = f"{prefix}:checkpoints"
        self._appended_key = f"{{{self._checkpoint_key}}}:appended"  # the list's slot
        self._meta_key = f"{prefix}:meta"
        # A replay is one HMGET of five fields when the guard reads first. On a single server a
        # claim answers with the existing record in its one round trip instead (claiming first);
        # on Cluster a claim costs a seq allocation first, so reading first always wins there.
        self._read_first = ReadFirst(True if cluster else read_first)
        self._recent: dict[str, tuple[Record, str]] = {}
        self._recent_lock = threading.Lock()

    @property
    def read_before_claim(self) -> bool:
        """Whether the guard should read before its next claim (see ``read_first``)."""
        return self._read_first.now

    # -- layout and memory of recent writes ----------------------------------------------------

    def _bucket(self, ident: str) -> _Bucket:
        return self._buckets[zlib.crc32(ident.encode("utf-8")) % len(self._buckets)]

    def _keys(self, *names: str) -> list[str]:
        keys = list(names)
        if not self._cluster:
            keys.append(self._seq_key)
        return keys

    def _remember(self, ident: str, record: Record | None, lease_id: str = "") -> None:
        """Keep a CLAIMED record this store just wrote, so the fenced write that ends its lease
        needs no read; anything else forgets the key (``_recalled`` answers CLAIMED records only,
        so a completed call leaves nothing behind and the memory holds leases in flight)."""
        with self._recent_lock:
            self._recent.pop(ident, None)
            if record is not None and record.status is Status.CLAIMED:
                self._recent[ident] = (record, lease_id)
                if len(self._recent) > _REMEMBERED:
                    del self._recent[next(iter(self._recent))]

    def _recalled(self, ident: str, token: int) -> tuple[Record, str] | None:
        """The CLAIMED record this store wrote under ``token`` and its lease's nonce, if
        remembered."""
        with self._recent_lock:
            found = self._recent.get(ident)
        if found is None or found[0].token != token:  # only CLAIMED records are remembered
            return None
        return found

    def _in_flight(self, ident: str) -> int:
        """The token of the lease this store holds in flight on ``ident``, or 0."""
        with self._recent_lock:
            found = self._recent.get(ident)
        return 0 if found is None else found[0].token

    def _seq(self, count: int, floor: int) -> Op[str]:
        """The first of ``count`` seqs (Cluster), or '' (the script increments the counter)."""
        if not self._cluster:
            return ""
        last = yield Script("seq", [self._seq_key], [str(count), str(floor)])
        return str(int(last) - count + 1)

    def _read(self, bucket: _Bucket, ident: str) -> Op[Record | None]:
        return _record((yield Command("hgetall", (bucket.rec + ident,))))

    # -- transitions ---------------------------------------------------------------------------

    def _claim(self, new: NewRecord, now: datetime, lease_for: timedelta) -> Op[Claimed]:
        ident = _ident(new.scope, new.key)
        b = self._bucket(ident)
        fam = b.fam + (_ident(new.scope, new.family) if new.family is not None else "")
        keys = self._keys(b.rec + ident, b.chain, b.open, b.live, b.log, fam)
        lease_id = secrets.token_hex(8)
        # A lease this store still holds in flight on a key Redis has no record of (the claim was
        # lost in a failover, or with the data) must not see its token issued again: this
        # instance could not tell the two leases apart (their fenced writes give the token only).
        in_flight = self._in_flight(ident)
        prev_hash, prev_token, floor = "", in_flight, 0  # optimistic: a key never seen before
        refusals = 0
        for attempt in range(_ATTEMPTS):
            record, entry = claim_transition(
                new,
                now=now,
                lease_for=lease_for,
                seq=0,
                prev_hash=prev_hash or None,
                prev_token=prev_token,
            )
            seq = yield from self._seq(1, floor)
            generation = "" if new.family is None else str(new.generation)
            args = [ident, prev_hash, seq, _encode_entry(entry), entry.hash, str(record.token)]
            args += [lease_id, str(to_micros(now)), generation, *_claim_pairs(record)]
            reply = yield Script("claim", keys, args)
            tag = text(reply[0])
            if tag == "ok":
                self._remember(ident, record, lease_id)
                return Claimed(record, record.lease)
            if tag == "exists":
                existing = _record(reply[1])
                assert existing is not None
                if _fields(reply[1]).get("lease_id") == lease_id:
                    # Our own claim, applied before a lost reply and sent again by the client.
                    self._remember(ident, existing, lease_id)
                    return Claimed(existing, existing.lease)
                return Claimed(existing, None)
            if tag == "chain":  # the key lived before: continue its chain and tokens
                prev_hash, token, _ = text(reply[1]).split(":")
                prev_token = max(int(token), in_flight)
            elif tag == "orphan":
                raise self._claimed_record_missing(new.scope, new.key)
            else:
                floor = int(float(text(reply[1])))
                yield from _backoff(attempt, refusals)
                refusals += 1
        raise _exhausted("claim")

    def _apply(
        self,
        b: _Bucket,
        ident: str,
        current: Record,
        record: Record | None,
        entry: Entry,
        *,
        now: str,
        lease_id: str,
        seq: str,
        fence: str = "",
    ) -> Effect:
        """The APPLY script of a transition from ``current``; ``fence`` is the nonce of the
        lease the write must still find ('' when the store does not know it), ``lease_id`` the
        nonce a takeover writes."""
        fam = b.fam + (_ident(current.scope, current.family) if current.family else "")
        keys = self._keys(b.rec + ident, b.chain, b.open, b.live, b.done, b.log, fam)
        args = [ident, str(current.token), current.status, current.ledger_head, fence, now, seq]
        args += [_encode_entry(entry), entry.hash, str(entry.token)]
        if record is None:
            return Script("apply", keys, [*args, "", "", "", "0"])
        deleted, pairs = _pairs(record, _MUTABLE)
        updated = str(to_micros(record.updated_at))
        args += [record.status, lease_id, updated, str(len(deleted)), *deleted, *pairs]
        return Script("apply", keys, args)

    def _takeover(
        self, scope: str, key: str, token: int, now: datetime, lease_for: timedelta
    ) -> Op[Claimed]:
        ident = _ident(scope, key)
        b = self._bucket(ident)
        lease_id, floor, refusals = secrets.token_hex(8), 0, 0
        current = yield from self._read(b, ident)
        for attempt in range(_ATTEMPTS):
            if current is None:
                raise LeaseLostError(key=key, token=token)
            if not takeover_eligible(current, token=token, now=now):
                return Claimed(current, None)
            # As a claim does (see _claim): never the token of a lease this store holds.
            record, entry = takeover_transition(
                current, now=now, lease_for=lease_for, seq=0, at_least=self._in_flight(ident) + 1
            )
            seq = yield from self._seq(1, floor)
            effect = self._apply(
                b,
                ident,
                current,
                record,
                entry,
                now=str(to_micros(now)),
                lease_id=lease_id,
                seq=seq,
            )
            reply = yield effect
            tag = text(reply[0])
            if tag == "ok":
                self._remember(ident, record, lease_id)
                return Claimed(record, record.lease)
            if tag == "gone":
                current = None
            elif tag == "seq":
                floor = int(float(text(reply[1])))
                yield from _backoff(attempt, refusals)
                refusals += 1
            else:  # moved or live: decide again on the record as it is now
                current = _record(reply[1])
                if current is not None and _fields(reply[1]).get("lease_id") == lease_id:
                    self._remember(ident, current, lease_id)
                    return Claimed(current, current.lease)  # our own takeover, sent twice
        raise _exhausted("takeover")

    def _fenced(
        self, scope: str, key: str, token: int, operation: str, **change: Any
    ) -> Op[Record | None]:
        """complete, mark_unknown or release: the record after it (None once released).

        Fenced on the token, and on the lease's nonce when this store issued the lease (it is
        remembered): a write by token alone, from another instance, cannot tell a lease lost in
        a failover from a new lease that got the same token."""
        ident = _ident(scope, key)
        b = self._bucket(ident)
        recalled = self._recalled(ident, token)
        current: Record | None
        if recalled is None:
            current, fence = (yield from self._read(b, ident)), ""
        else:
            current, fence = recalled
        floor, refusals = 0, 0
        for attempt in range(_ATTEMPTS):
            record: Record | None
            if operation == "complete":
                record, entry = complete_transition(current, key=key, token=token, seq=0, **change)
            elif operation == "mark_unknown":
                record, entry = unknown_transition(current, key=key, token=token, seq=0, **change)
            else:
                record, entry = (
                    None,
                    release_transition(current, key=key, token=token, seq=0, **change),
                )
            assert current is not None  # the transitions refuse a missing record
            seq = yield from self._seq(1, floor)
            reply = yield self._apply(
                b, ident, current, record, entry, now="", lease_id="", seq=seq, fence=fence
            )
            tag = text(reply[0])
            if tag == "ok":
                self._remember(ident, record)
                return record
            # A refusal leaves the memory as it is: a lease lost to another one (which may have
            # our token) stays remembered, so every later write of this zombie lease is fenced
            # on its nonce too; a stale record there costs a round trip, never a wrong write.
            if tag == "lost":  # the record holds another lease, perhaps with our token
                raise LeaseLostError(key=key, token=token)
            if tag == "gone":
                if record is None and text(reply[1]).startswith(entry.hash + ":"):
                    self._remember(ident, None)
                    return None  # our own release, applied before a lost reply and sent again
                raise LeaseLostError(key=key, token=token)
            if tag == "seq":
                floor = int(float(text(reply[1])))
                yield from _backoff(attempt, refusals)
                refusals += 1
                continue
            current = _record(reply[1])  # moved: someone else wrote, or our own retried write
            if current is not None and current.ledger_head == entry.hash:
                self._remember(ident, record)
                return record
        raise _exhausted(operation)

    # -- reads ---------------------------------------------------------------------------------

    def _get(self, scope: str, key: str) -> Op[Record | None]:
        ident = _ident(scope, key)
        return (yield from self._read(self._bucket(ident), ident))

    def _replay_view(self, scope: str, key: str) -> Op[ReplayView | None]:
        ident = _ident(scope, key)
        reply = yield Command("hmget", (self._bucket(ident).rec + ident, *_VIEW))
        status, fingerprint, outcome, attempt, provider_key = (text(v) for v in reply)
        if status is None:
            return None
        return ReplayView(key, _STATUSES[status], fingerprint, outcome, int(attempt), provider_key)

    def _newest(self, scope: str, family: str) -> Op[Record | None]:
        fam = _ident(scope, family)
        calls: list[Script | Command] = [
            Script("newest", [b.fam + fam], [b.rec]) for b in self._buckets
        ]
        replies = yield Fanout(calls)
        if any(isinstance(reply, bytes | str) for reply in replies):  # NEWEST's 'missing'
            raise self._indexed_record_missing(scope, family)
        found = [r for reply in replies for r in map(_record, reply) if r is not None]
        # Generations are unique per family; a tie goes to the oldest, as in SQLiteStore.
        found.sort(key=lambda r: (-r.generation, r.created_at, r.key))
        return found[0] if found else None

    def _claimed_record_missing(self, scope: str, key: str) -> StoreError:
        """A claim found the key's record gone but its index entry there (see ``CLAIM``)."""
        return StoreError(
            f"the record of key {key!r} of scope {scope!r} under prefix {self._prefix!r} is "
            "indexed but its Redis key is gone: it was deleted outside payonce (or evicted), "
            "and its payment may exist. Nothing was claimed and nothing was called. Repair it: "
            f"{_RESTORE} before retrying this intent; only if it was never paid, remove its "
            f"ident from its bucket's indexes ('{{{self._prefix}:<bucket>}}:' live, open, done "
            "and its family's fam: sorted sets).",
            operation="claim",
        )

    def _indexed_record_missing(self, scope: str, family: str) -> StoreError:
        """A family's index names a record that is not there (see ``NEWEST``)."""
        where = f"family {family!r} of scope {scope!r} under prefix {self._prefix!r}"
        repair = (
            f"{_RESTORE}, or remove its ident from the family's index (the sorted set "
            f"'{{{self._prefix}:<bucket>}}:fam:' followed by the family's ident), before "
            "claiming in this family again"
        )
        if self._cluster:
            return StoreUnavailableError(
                f"a record of the newest generation of {where} is not on the node that "
                "answered. Nothing was claimed. Its bucket's slot is being migrated "
                "(resharding): retry the same intent when the migration ends. If no migration "
                f"is running, its key was deleted outside payonce: {repair}.",
                operation="newest",
            )
        return StoreError(
            f"a record of the newest generation of {where} is indexed but its key is gone: it "
            f"was deleted outside payonce. Nothing was claimed. Repair it: {repair}.",
            operation="newest",
        )

    def _scan(self, now: datetime, limit: int) -> Op[list[Record]]:
        args = [str(to_micros(now)), str(limit)]
        replies = yield Fanout([Script("scan", [b.open], [*args, b.rec]) for b in self._buckets])
        found = [r for reply in replies for r in map(_record, reply) if r is not None]
        found.sort(key=lambda r: (r.created_at, r.scope, r.key))
        return found[:limit]

    def _entries(self, after: int, limit: int) -> Op[list[Entry]]:
        # limit + 1 per bucket: a bucket's log may hold the sealed watermark (not an entry), and
        # every bucket must still hand over its first ``limit`` entries for the merge.
        calls: list[Script | Command] = [
            Command(
                "zrangebyscore",
                (b.log, f"({after}", "+inf"),
                {"start": 0, "num": limit + 1, "withscores": True},
            )
            for b in self._buckets
        ]
        replies = yield Fanout(calls)
        found = [
            (int(score), member)
            for reply in replies
            for member, score in reply
            if text(member) != _SEALED
        ]
        found.sort(key=lambda pair: pair[0])
        return [_decode_entry(member, seq) for seq, member in found[:limit]]

    def _heads(self, after: tuple[str, str] | None, limit: int) -> Op[list[tuple[str, str, str]]]:
        start = "" if after is None else _ident(*after)
        args = [start, str(limit)]
        replies = yield Fanout([Script("heads", [b.live], [*args, b.rec]) for b in self._buckets])
        rows: list[tuple[str, str, str]] = []
        for reply in replies:
            values = [text(v) for v in reply]
            rows += zip(values[::3], values[1::3], values[2::3], strict=True)
        rows.sort(key=lambda row: (row[0], row[1]))
        return rows[:limit]

    def _checkpoints(self) -> Op[list[Checkpoint]]:
        reply = yield Command("lrange", (self._checkpoint_key, 0, -1))
        return [_decode_checkpoint(raw) for raw in reply]

    def _horizon(self) -> Op[int]:
        """The highest seq at or below which every entry is final (see ``Store``).

        On one server a seq is drawn by the script that writes its entry, so every seq the
        counter has reached is final. On Cluster it is drawn a round trip before: the horizon is
        the counter or the highest seq of any bucket, whichever is higher (after a failover that
        lost increments the buckets can be ahead of the counter); the counter is raised to it,
        then every bucket's watermark, after which the scripts refuse a seq at or below it (the
        writer draws another, as after a seal). Whatever seq at or below it was written before
        is written.
        """
        if not self._cluster:
            return int((yield Command("get", (self._seq_key,))) or 0)
        tops = [Command("zrange", (b.log, -1, -1), {"withscores": True}) for b in self._buckets]
        counter, *logs = yield Fanout([Command("get", (self._seq_key,)), *tops])
        top = max([int(counter or 0), *(int(score) for log in logs for _, score in log)])
        if top > int(counter or 0):
            yield from self._seq(0, top)  # raises the counter to ``top``; allocates nothing
        mark = {_SEALED: top}
        yield Fanout([Command("zadd", (b.log, mark), {"gt": True}) for b in self._buckets])
        return top

    def _append_checkpoint(self, checkpoint: Checkpoint) -> Op[None]:
        if self._cluster:
            yield from self._seal_buckets(checkpoint)
        args = [str(checkpoint.number), _encode_checkpoint(checkpoint), secrets.token_hex(8)]
        keys = [self._checkpoint_key, self._appended_key]
        if not int((yield Script("append_checkpoint", keys, args))):
            raise ConflictError(
                f"checkpoint {checkpoint.number} was sealed concurrently by another worker; "
                "read the checkpoints again and seal from the newest one.",
                number=checkpoint.number,
            )

    def _seal_buckets(self, checkpoint: Checkpoint) -> Op[None]:
        """Close the checkpoint's range on Cluster, then check it still holds what was sealed.

        On Cluster a seq is allocated a round trip before its entry is written, so an entry
        below the newest visible seq may still arrive. The watermark in every bucket's log makes
        the scripts refuse any seq up to ``last_seq`` from now on (the writer allocates a new
        one); re-reading the range afterwards catches an entry that arrived before that.
        """
        mark = {_SEALED: checkpoint.last_seq}
        yield Fanout([Command("zadd", (b.log, mark), {"gt": True}) for b in self._buckets])
        hashes: list[str] = []
        after = checkpoint.first_seq - 1
        while after < checkpoint.last_seq:
            batch = yield from self._entries(after, _SEAL_BATCH)
            if not batch:
                break
            hashes += [e.hash for e in batch if e.seq <= checkpoint.last_seq]
            after = batch[-1].seq
        if len(hashes) != checkpoint.count or checkpoint_digest(hashes) != checkpoint.digest:
            raise ConflictError(
                f"an entry of the range of checkpoint {checkpoint.number} (seq "
                f"{checkpoint.first_seq}-{checkpoint.last_seq}) was written while it was being "
                "sealed; seal again (the range is closed now, the next seal is final).",
                number=checkpoint.number,
            )

    # -- purge ---------------------------------------------------------------------------------

    def _purge(self, now: datetime, retention: timedelta, limit: int) -> Op[int]:
        cutoff = str(to_micros(now - retention))
        calls: list[Script | Command] = [
            Script("purge_candidates", [b.done], [cutoff, str(limit), b.rec]) for b in self._buckets
        ]
        replies = yield Fanout(calls)
        due = [r for reply in replies for r in map(_record, reply) if r is not None]
        due.sort(key=lambda r: (r.updated_at, r.scope, r.key))
        by_bucket: dict[int, list[Record]] = {}
        for record in due[:limit]:
            ident = _ident(record.scope, record.key)
            number = self._buckets.index(self._bucket(ident))
            by_bucket.setdefault(number, []).append(record)
        purged = 0
        for number, records in sorted(by_bucket.items()):
            purged += yield from self._purge_bucket(self._buckets[number], records, now)
        return purged

    def _purge_bucket(self, b: _Bucket, records: list[Record], now: datetime) -> Op[int]:
        keys = self._keys(b.chain, b.live, b.done, b.log)
        args: list[str] = []
        for record in records:
            ident = _ident(record.scope, record.key)
            entry = purge_transition(record, now=now, seq=0)
            fam = _ident(record.scope, record.family) if record.family else ""
            keys += [b.rec + ident, b.fam + fam]
            args += [ident, record.ledger_head, _encode_entry(entry), entry.hash, str(entry.token)]
            self._remember(ident, None)
        floor = 0
        for attempt in range(_ATTEMPTS):
            first = yield from self._seq(len(records), floor)
            head = [str(len(records)), first, "0" if self._cluster else "1"]
            reply = yield Script("purge", keys, head + args)
            if text(reply[0]) == "ok":
                return len(reply[1])
            floor = int(float(text(reply[1])))
            yield from _backoff(attempt, attempt)
        raise _exhausted("purge")

    # -- start-up ------------------------------------------------------------------------------

    def _meta(self, buckets: int, create: bool) -> Op[None]:
        """Record the layout and bucket count under the prefix on first use (``create``; else
        refuse a prefix nothing was recorded under), and check them."""
        if create:
            reply = yield Script("meta", [self._meta_key], [_LAYOUT, str(buckets)])
        else:
            reply = yield Command("hmget", (self._meta_key, "version", "buckets"))
            if reply[0] is None and (yield Command("exists", (self._seq_key,))):
                # Records were written under the prefix, and its layout key is gone with what
                # a restart without persistence, a failover or a deletion lost.
                raise StoreMissingError(
                    f"the Redis prefix {self._prefix!r} holds payonce records but lost its layout "
                    f"key {self._meta_key!r} (Redis restarted without persistence, failed over "
                    "before the key reached the replica, or it was deleted). Record it again "
                    "with `payonce migrate --store URL`, where URL gives the buckets every "
                    "service of this prefix uses (?buckets=N; 16 by default), then run this "
                    "command again.",
                    option="prefix",
                )
            if reply[0] is None:
                raise StoreMissingError(
                    f"there are no payonce keys under the Redis prefix {self._prefix!r}, and the "
                    "store was opened with create=False (as every payonce command but migrate "
                    "and demo): check the URL, its database number and the prefix "
                    "(open_store's ?prefix=, payonce by default), or create the store with "
                    "`payonce migrate --store URL`.",
                    option="prefix",
                )
        version, stored = (text(v) for v in reply)
        if version != _LAYOUT:
            raise ConfigurationError(
                f"the Redis keys under prefix {self._prefix!r} use payonce layout {version}, but "
                f"this payonce knows layout {_LAYOUT}: upgrade payonce or use another prefix.",
                option="prefix",
            )
        if int(stored) != buckets:
            raise ConfigurationError(
                f"the Redis keys under prefix {self._prefix!r} were created with "
                f"buckets={stored}; pass buckets={stored} (the bucket of a record cannot change "
                "once written) or use another prefix.",
                option="buckets",
            )

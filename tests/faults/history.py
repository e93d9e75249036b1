"""The history checker: asserts I1-I5 (DESIGN §1, SCENARIOS B2) after a fault, race or state test.

A test gives the store it ran against and what its fake provider did: one movement per money
movement the provider performed, as a mapping with

* ``provider_key`` (required): the idempotency key the guard sent (``attempt.provider_key``);
* ``attempt`` (required): ``attempt.number``;
* ``generation`` (optional): which lifetime of the record the movement belongs to, counted from 0
  by the record's ``claimed`` ledger entries (``current_generation`` computes it inside ``fn``).
  Needed only for a key that was released or purged and claimed again; without it a key with one
  lifetime is assumed;
* ``value`` (optional): what the provider returned, matched against acknowledged outcomes;
* ``key`` (optional): the record key, checked against the ledger's mapping of the provider key.

The checker reads only the store's public contract (``entries``, ``heads``, ``get``). It rebuilds
every key's lifetimes from the ledger, because ledger entries outlive released and purged
records: a ``claimed`` entry opens a lifetime, ``released`` or ``purged`` closes it.

What each invariant means here:

* I1: at most one movement per provider key and generation.
* I2: every acknowledged body is the one SUCCEEDED body of its lifetime (the live record's bytes,
  or the ledger's ``outcome_sha256`` once purged), and a movement returned its value.
* I3: no lifetime recorded FAILED, or released as not executed, has a movement.
* I4: every movement has a claim behind it, under an attempt the ledger granted, and its lifetime
  SUCCEEDED or is still CLAIMED/UNKNOWN (a crash, stale or not: the checker also runs right
  after one); after the test's resolution step no record is CLAIMED/UNKNOWN unless allowed.
* I5: ``verify_ledger`` passes, and every entry is one legal transition from the state the
  previous entry of its key left, ending at the live record's status and attempt: so a record's
  entries are exactly its transitions, and no status changed without an entry.

``check_history`` raises one AssertionError listing every violation, each prefixed by its
invariant, so a failing test names what broke rather than the first symptom.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from payonce import Entry, Event, LedgerCorruptedError, Record, Status, Store, verify_ledger

__all__ = [
    "Ack",
    "History",
    "Lifetime",
    "check_history",
    "current_generation",
    "load_history",
]

_BATCH = 1000

# The one legal (status_from, status_to) of each event; TAKEN_OVER and PURGED have two sources.
_SOURCES: dict[Event, tuple[Status | None, ...]] = {
    Event.CLAIMED: (None,),
    Event.TAKEN_OVER: (Status.CLAIMED, Status.UNKNOWN),
    Event.SUCCEEDED: (Status.CLAIMED,),
    Event.FAILED: (Status.CLAIMED,),
    Event.MARKED_UNKNOWN: (Status.CLAIMED,),
    Event.RELEASED: (Status.CLAIMED,),
    Event.PURGED: (Status.SUCCEEDED, Status.FAILED),
}
_TARGET: dict[Event, Status | None] = {
    Event.CLAIMED: Status.CLAIMED,
    Event.TAKEN_OVER: Status.CLAIMED,
    Event.SUCCEEDED: Status.SUCCEEDED,
    Event.FAILED: Status.FAILED,
    Event.MARKED_UNKNOWN: Status.UNKNOWN,
    Event.RELEASED: None,
    Event.PURGED: None,
}


class Ack(NamedTuple):
    """An outcome a caller received: the record key and the body bytes (``Outcome.body``)."""

    key: str
    body: str


class _Acknowledged(Protocol):
    """``Outcome`` or ``Ack``: anything with the record key and the body the caller got."""

    @property
    def key(self) -> str: ...

    @property
    def body(self) -> str: ...


@dataclass
class Lifetime:
    """One life of a record, from its ``claimed`` entry to ``released``/``purged`` (or now).

    Attributes:
        generation: 0 for the key's first claim, 1 after it was released or purged and claimed
            again, and so on.
        provider_key: the provider key the ``claimed`` entry recorded.
        attempts: every attempt number the ledger granted (claim and takeovers).
        status: the status the newest entry left (None once released or purged).
        closed_by: RELEASED or PURGED, or None while the record lives.
        succeeded_sha256: the SHA-256 of the SUCCEEDED body, if the lifetime succeeded.
        failed: whether the lifetime was recorded FAILED.
    """

    scope: str
    key: str
    generation: int
    provider_key: str
    attempts: set[int] = field(default_factory=set)
    status: Status | None = Status.CLAIMED
    closed_by: Event | None = None
    succeeded_sha256: str | None = None
    failed: bool = False


@dataclass
class History:
    """What the store holds, rebuilt from its ledger and live records.

    Attributes:
        entries: every ledger entry, in sequence order.
        records: the live records by (scope, key).
        lifetimes: every key's lifetimes, oldest first, by (scope, key).
        owners: which (scope, key) each provider key was claimed for.
        problems: I5 violations found while rebuilding (illegal or discontinuous transitions).
    """

    entries: list[Entry]
    records: dict[tuple[str, str], Record]
    lifetimes: dict[tuple[str, str], list[Lifetime]]
    owners: dict[str, tuple[str, str]]
    problems: list[str]

    def lifetime(self, provider_key: str, generation: int) -> Lifetime | None:
        """The lifetime of the record ``provider_key`` belongs to, or None if never claimed."""
        ident = self.owners.get(provider_key)
        if ident is None:
            return None
        lives = self.lifetimes[ident]
        return lives[generation] if 0 <= generation < len(lives) else None

    def by_key(self, key: str) -> list[Lifetime]:
        """Every lifetime of record key ``key``, whatever its scope."""
        return [life for (_, k), lives in self.lifetimes.items() if k == key for life in lives]


def _all_entries(store: Store) -> list[Entry]:
    out: list[Entry] = []
    after = 0
    while batch := list(store.entries(after=after, limit=_BATCH)):
        out.extend(batch)
        after = batch[-1].seq
    return out


def _all_records(store: Store) -> dict[tuple[str, str], Record]:
    out: dict[tuple[str, str], Record] = {}
    after: tuple[str, str] | None = None
    while rows := list(store.heads(after=after, limit=_BATCH)):
        for scope, key, _head in rows:
            record = store.get(scope, key)
            if record is not None:  # purged between heads() and get(): gone, like its head
                out[(scope, key)] = record
        after = (rows[-1][0], rows[-1][1])
    return out


def current_generation(store: Store, scope: str, key: str) -> int:
    """The generation of ``key``'s current lifetime: its ``claimed`` entries so far, minus one.

    Call it inside a fake provider's ``fn`` (the record is claimed then) to tag a movement.
    """
    claims = sum(
        1
        for e in _all_entries(store)
        if e.scope == scope and e.key == key and e.event is Event.CLAIMED
    )
    return claims - 1


def _apply(life: Lifetime | None, entry: Entry, problems: list[str]) -> Lifetime | None:
    """Check one entry is a legal transition from where ``life`` stands; update it (I5)."""
    where = f"I5: entry {entry.seq} ({entry.event}) of key {entry.key}"
    current = life.status if life is not None else None
    if entry.status_from != current or current not in _SOURCES[entry.event]:
        problems.append(f"{where} moves from {entry.status_from}, but the key was at {current}")
    if entry.status_to != _TARGET[entry.event]:
        problems.append(f"{where} ends at {entry.status_to}, not {_TARGET[entry.event]}")
    if entry.event is Event.CLAIMED:
        if entry.attempt != 1:
            problems.append(f"{where} starts at attempt {entry.attempt}, not 1")
        return None  # the caller opens a new lifetime
    if life is None:
        return None
    if entry.event is Event.TAKEN_OVER:
        attempts = max(life.attempts, default=0)
        if entry.attempt != attempts + 1:
            problems.append(f"{where} grants attempt {entry.attempt} after attempt {attempts}")
        life.attempts.add(entry.attempt)
    elif entry.attempt not in life.attempts:
        problems.append(f"{where} acts under attempt {entry.attempt}, never granted")
    if entry.event is Event.SUCCEEDED:
        life.succeeded_sha256 = json.loads(entry.detail).get("outcome_sha256")
    life.failed = life.failed or entry.event is Event.FAILED
    life.status = entry.status_to
    if entry.event in (Event.RELEASED, Event.PURGED):
        life.closed_by = entry.event
    return life


def load_history(store: Store) -> History:
    """Rebuild every key's lifetimes from the ledger and check each transition is legal (I5)."""
    entries = _all_entries(store)
    records = _all_records(store)
    lifetimes: dict[tuple[str, str], list[Lifetime]] = {}
    owners: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for entry in entries:
        ident = (entry.scope, entry.key)
        lives = lifetimes.setdefault(ident, [])
        life = lives[-1] if lives and lives[-1].closed_by is None else None
        _apply(life, entry, problems)
        if entry.event is Event.CLAIMED:
            provider_key = json.loads(entry.detail)["provider_key"]
            if owners.setdefault(provider_key, ident) != ident:
                problems.append(f"I5: provider key {provider_key} was claimed for two keys")
            lives.append(Lifetime(entry.scope, entry.key, len(lives), provider_key, {1}))
    for ident, record in records.items():
        lives = lifetimes.get(ident, [])
        live = lives[-1] if lives and lives[-1].closed_by is None else None
        if live is None:
            problems.append(f"I5: record {record.key} lives without an open ledger chain")
        elif (record.status, record.attempt, record.provider_key) != (
            live.status,
            max(live.attempts),
            live.provider_key,
        ):
            problems.append(
                f"I5: record {record.key} is {record.status} attempt {record.attempt}, but its "
                f"ledger says {live.status} attempt {max(live.attempts)}: a change without entry"
            )
    for ident, lives in lifetimes.items():
        if lives and lives[-1].closed_by is None and ident not in records:
            problems.append(f"I5: key {ident[1]} was never closed in the ledger but has no record")
    return History(entries, records, lifetimes, owners, problems)


def _generation(history: History, movement: Mapping[str, Any]) -> int | None:
    if movement.get("generation") is not None:
        return int(movement["generation"])
    ident = history.owners.get(movement["provider_key"])
    if ident is None or len(history.lifetimes[ident]) == 1:
        return 0  # never claimed: lifetime() finds nothing and I4 reports it
    return None


def _check_movements(
    history: History, movements: list[Mapping[str, Any]]
) -> tuple[list[str], dict[tuple[str, int], list[Mapping[str, Any]]]]:
    """I1, I3 and the first half of I4, per movement."""
    problems: list[str] = []
    grouped: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for movement in movements:
        provider_key = movement["provider_key"]
        generation = _generation(history, movement)
        if generation is None:
            problems.append(
                f"I4: movement {dict(movement)} has no generation and its key has several "
                "lifetimes: tag it with current_generation() inside fn"
            )
            continue
        life = history.lifetime(provider_key, generation)
        if life is None:
            problems.append(f"I4: movement {dict(movement)} has no durable record behind it")
            continue
        if movement.get("key") not in (None, life.key):
            problems.append(f"I4: movement {dict(movement)} names another key than its claim")
        if movement["attempt"] not in life.attempts:
            problems.append(f"I4: movement {dict(movement)} under an attempt never granted")
        grouped.setdefault((provider_key, generation), []).append(movement)
    for (provider_key, generation), moved in grouped.items():
        life = history.lifetime(provider_key, generation)
        assert life is not None
        if len(moved) > 1:
            problems.append(
                f"I1: provider key {provider_key} (generation {generation}) moved money "
                f"{len(moved)} times: attempts {[m['attempt'] for m in moved]}"
            )
        if life.failed:
            problems.append(f"I3: key {life.key} is recorded FAILED but money moved")
        elif life.closed_by is Event.RELEASED:
            problems.append(f"I3: key {life.key} was released as not executed but money moved")
        elif life.succeeded_sha256 is None and life.status not in (Status.CLAIMED, Status.UNKNOWN):
            problems.append(f"I4: money moved for key {life.key} but its record is {life.status}")
    return problems, grouped


def _check_acknowledged(
    history: History,
    acknowledged: Iterable[_Acknowledged],
    grouped: Mapping[tuple[str, int], list[Mapping[str, Any]]],
    *,
    require_movement: bool,
) -> list[str]:
    """I2: every acknowledged body is the one SUCCEEDED body of its lifetime, byte for byte."""
    problems: list[str] = []
    for ack in acknowledged:
        sha = hashlib.sha256(ack.body.encode("utf-8")).hexdigest()
        lives = [life for life in history.by_key(ack.key) if life.succeeded_sha256 == sha]
        if not lives:
            problems.append(f"I2: key {ack.key} acknowledged {ack.body}, which was never recorded")
            continue
        life = lives[-1]
        record = history.records.get((life.scope, life.key))
        if life.closed_by is None and (
            record is None or record.status is not Status.SUCCEEDED or record.outcome != ack.body
        ):
            problems.append(f"I2: key {ack.key} acknowledged {ack.body}; the record disagrees")
        moved = grouped.get((life.provider_key, life.generation), [])
        value = json.loads(ack.body)["value"]
        if require_movement and not moved:
            problems.append(f"I2: key {ack.key} acknowledged {ack.body} but nothing moved")
        if any("value" in m for m in moved) and all(m.get("value") != value for m in moved):
            problems.append(f"I2: key {ack.key} acknowledged {value!r}, no movement returned it")
    return problems


def check_history(
    store: Store,
    movements: Iterable[Mapping[str, Any]],
    acknowledged: Iterable[_Acknowledged] = (),
    *,
    unresolved: bool | Collection[str] = False,
    require_movement: bool = True,
) -> History:
    """Assert I1-I5 over ``store`` and the provider's ``movements``; return the rebuilt history.

    Args:
        store: the store the test ran against (any sync ``Store``).
        movements: every money movement the fake provider performed (see the module docstring).
        acknowledged: every outcome a caller received (``Outcome`` objects or ``Ack`` pairs),
            replays included.
        unresolved: record keys allowed to stay CLAIMED or UNKNOWN (a crash the test did not
            resolve), or True to allow any. By default every record must be resolved (I4).
        require_movement: whether each acknowledged outcome must have a movement behind it;
            False for tests whose fn returns without moving money.

    Raises:
        AssertionError: listing every violation, each prefixed by its invariant.
    """
    history = load_history(store)
    problems = list(history.problems)
    try:
        verify_ledger(store)
    except LedgerCorruptedError as exc:
        problems.append(f"I5: verify_ledger failed: {exc}")
    moved, grouped = _check_movements(history, list(movements))
    problems.extend(moved)
    problems.extend(
        _check_acknowledged(history, acknowledged, grouped, require_movement=require_movement)
    )
    for (_, key), record in history.records.items():
        allowed = unresolved is True or (not isinstance(unresolved, bool) and key in unresolved)
        if record.status in (Status.CLAIMED, Status.UNKNOWN) and not allowed:
            problems.append(f"I4: record {key} is left {record.status} after resolution")
    if problems:
        counts = Counter(p.split(":", 1)[0] for p in problems)
        raise AssertionError(
            f"history violates {dict(counts)}:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return history

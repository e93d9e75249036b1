"""The ledger: one entry per transition, verification, checkpoints and tamper evidence (I5, S4)."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from payonce import (
    Checkpoint,
    Entry,
    GatewayRejectedError,
    GatewayUnavailableError,
    Guard,
    Intent,
    LedgerCorruptedError,
    MemoryStore,
    OutcomeUnknownError,
    SQLiteStore,
    Status,
    Store,
    seal_checkpoint,
    verify_ledger,
)
from payonce._chain import GENESIS, entry_hash, to_micros
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET

RETENTION = timedelta(hours=72)
_TRIGGERS = (
    "payonce_ledger_no_update",
    "payonce_ledger_no_delete",
    "payonce_checkpoints_no_update",
    "payonce_checkpoints_no_delete",
)


class DeclinedError(Exception):
    """Declared definite."""


class RefusedError(Exception):
    """Declared not executed."""


def _intent(reference: str, amount: int = 1000) -> Intent:
    return Intent("charge", amount, "usd", customer="cus_alice", reference=reference)


def _guard(store: Store, clock: ManualClock) -> Guard:
    return Guard(
        store,
        secret=SECRET,
        scope=SCOPE,
        clock=clock,
        definite=(DeclinedError,),
        not_executed=(RefusedError,),
    )


def _ok(value: Any = "ch_1") -> Any:
    return lambda _attempt: {"charge": value}


def _raise(exc: Exception) -> Any:
    def fn(_attempt: Any) -> Any:
        raise exc

    return fn


def _ledger(store: Store) -> list[Entry]:
    return list(store.entries(after=0, limit=100_000))


def _chain(store: Store, key: str) -> list[Entry]:
    return [e for e in _ledger(store) if e.key == key]


def _operate(guard: Guard, clock: ManualClock, i: int) -> str:
    """One operation of a mixed workload; returns its key."""
    intent = _intent(f"order-{i}", 1000 + i)
    clock.advance(timedelta(seconds=1))
    kind = i % 5
    if kind in (0, 1):
        guard.run(intent, _ok(f"ch_{i}"))
        guard.run(intent, _ok("never"))  # a replay: no entry
    elif kind == 2:
        with pytest.raises(OutcomeUnknownError):
            guard.run(intent, _raise(TimeoutError()))
        guard.run(intent, _ok(f"ch_{i}"), resumable=True)
    elif kind == 3:
        with pytest.raises(GatewayUnavailableError):
            guard.run(intent, _raise(RefusedError()))
        if i % 10 == 3:  # every other refused intent is retried; the rest stay released
            guard.run(intent, _ok(f"ch_{i}"))
    else:
        with pytest.raises(GatewayRejectedError):
            guard.run(intent, _raise(DeclinedError()))
    return guard.key_for(intent)


# -- one entry per transition ------------------------------------------------------------------


def _transitions(chain: list[Entry]) -> list[tuple[str, str | None, str | None, int, int]]:
    return [
        (
            e.event.value,
            None if e.status_from is None else e.status_from.value,
            None if e.status_to is None else e.status_to.value,
            e.token,
            e.attempt,
        )
        for e in chain
    ]


def _assert_chained(chain: list[Entry]) -> None:
    prev = GENESIS
    for entry in chain:
        assert entry.prev_hash == prev
        prev = entry.hash


def test_one_entry_per_transition(store: Store, clock: ManualClock) -> None:
    guard = _guard(store, clock)

    purged = guard.run(_intent("order-purged"), _ok()).key
    clock.advance(RETENTION + timedelta(seconds=1))
    assert store.purge(now=clock.now(), retention=RETENTION, limit=10) == 1

    succeeded = guard.run(_intent("order-ok"), _ok()).key
    guard.run(_intent("order-ok"), _ok())  # the replay writes nothing

    with pytest.raises(OutcomeUnknownError) as lost:
        guard.run(_intent("order-lost"), _raise(TimeoutError()))
    guard.run(_intent("order-lost"), _ok(), resumable=True)
    resumed = lost.value.key

    with pytest.raises(GatewayUnavailableError) as refused:
        guard.run(_intent("order-refused"), _raise(RefusedError()))
    released = refused.value.key

    with pytest.raises(GatewayRejectedError) as declined:
        guard.run(_intent("order-declined"), _raise(DeclinedError()))
    failed = declined.value.key

    assert _transitions(_chain(store, succeeded)) == [
        ("claimed", None, "CLAIMED", 1, 1),
        ("succeeded", "CLAIMED", "SUCCEEDED", 1, 1),
    ]
    assert _transitions(_chain(store, resumed)) == [
        ("claimed", None, "CLAIMED", 1, 1),
        ("marked_unknown", "CLAIMED", "UNKNOWN", 1, 1),
        ("taken_over", "UNKNOWN", "CLAIMED", 2, 2),
        ("succeeded", "CLAIMED", "SUCCEEDED", 2, 2),
    ]
    assert _transitions(_chain(store, released)) == [
        ("claimed", None, "CLAIMED", 1, 1),
        ("released", "CLAIMED", None, 1, 1),
    ]
    assert _transitions(_chain(store, failed)) == [
        ("claimed", None, "CLAIMED", 1, 1),
        ("failed", "CLAIMED", "FAILED", 1, 1),
    ]
    assert _transitions(_chain(store, purged)) == [
        ("claimed", None, "CLAIMED", 1, 1),
        ("succeeded", "CLAIMED", "SUCCEEDED", 1, 1),
        ("purged", "SUCCEEDED", None, 1, 1),
    ]
    entries = _ledger(store)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    for key in (succeeded, resumed, released, failed, purged):
        chain = _chain(store, key)
        _assert_chained(chain)
        assert {(e.amount, e.currency, e.scope) for e in chain} == {(1000, "usd", SCOPE)}
    record = store.get(SCOPE, resumed)
    assert record is not None
    assert record.ledger_head == _chain(store, resumed)[-1].hash


def test_verify_ledger_report_counts(store: Store, clock: ManualClock) -> None:
    empty = verify_ledger(store)
    assert (empty.entries, empty.keys, empty.records, empty.checkpoints) == (0, 0, 0, 0)
    assert empty.last_seq == 0
    assert empty.last_checkpoint is None

    guard = _guard(store, clock)
    guard.run(_intent("order-purged"), _ok())
    clock.advance(RETENTION + timedelta(seconds=1))
    store.purge(now=clock.now(), retention=RETENTION, limit=10)
    guard.run(_intent("order-ok"), _ok())
    with pytest.raises(OutcomeUnknownError):
        guard.run(_intent("order-lost"), _raise(TimeoutError()))
    guard.run(_intent("order-lost"), _ok(), resumable=True)
    with pytest.raises(GatewayUnavailableError):
        guard.run(_intent("order-refused"), _raise(RefusedError()))

    report = verify_ledger(store)
    # 3 (purged) + 2 (ok) + 4 (lost, resumed) + 2 (released) entries over 4 keys, 2 live records.
    assert report.entries == 11
    assert report.keys == 4
    assert report.records == 2
    assert report.checkpoints == 0
    assert report.last_seq == 11

    checkpoint = seal_checkpoint(store, now=clock.now())
    assert checkpoint is not None
    sealed = verify_ledger(store)
    assert sealed.checkpoints == 1
    assert sealed.last_checkpoint == checkpoint
    assert sealed.entries == 11


def test_seal_checkpoint_and_anchor(store: Store, clock: ManualClock) -> None:
    guard = _guard(store, clock)
    assert seal_checkpoint(store, now=clock.now()) is None  # nothing to seal
    for i in range(6):
        _operate(guard, clock, i)
    total = len(_ledger(store))
    first = seal_checkpoint(store, now=clock.now())
    assert first is not None
    assert (first.number, first.first_seq, first.last_seq, first.count) == (1, 1, total, total)
    assert first.prev_hash == GENESIS
    assert verify_ledger(store, anchor=first.hash).checkpoints == 1
    assert seal_checkpoint(store, now=clock.now()) is None

    for i in range(6, 10):
        _operate(guard, clock, i)
    second = seal_checkpoint(store, now=clock.now())
    assert second is not None
    assert second.number == 2
    assert second.first_seq == total + 1
    assert second.prev_hash == first.hash
    assert verify_ledger(store, anchor=first.hash).checkpoints == 2
    assert verify_ledger(store, anchor=second.hash).last_checkpoint == second
    with pytest.raises(LedgerCorruptedError) as caught:
        verify_ledger(store, anchor="f" * 64)
    assert caught.value.seq is None
    assert "anchored" in caught.value.reason


# -- tamper evidence on SQLite (S4) ------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """A SQLite ledger of 100 mixed operations: two sealed checkpoints and an unsealed tail."""

    path: Path
    entries: list[Entry]
    checkpoints: list[Checkpoint]
    heads: dict[str, str]

    @property
    def tail(self) -> list[Entry]:
        return [e for e in self.entries if e.seq > self.checkpoints[-1].last_seq]

    def chain(self, key: str) -> list[Entry]:
        return [e for e in self.entries if e.key == key]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    path = tmp_path_factory.mktemp("ledger") / "base.db"
    store = SQLiteStore(path)
    try:
        clock = ManualClock()
        guard = _guard(store, clock)
        for i in range(100):
            _operate(guard, clock, i)
            if i in (39, 69):
                assert seal_checkpoint(store, now=clock.now()) is not None
        verify_ledger(store)
        built = Base(
            path=path,
            entries=_ledger(store),
            checkpoints=list(store.checkpoints()),
            heads={key: head for _scope, key, head in store.heads(after=None, limit=1000)},
        )
    finally:
        store.close()
    assert len(built.heads) == 90  # 10 keys were released and never retried
    assert len(built.tail) > 50
    return built


def _copy(base: Base, tmp_path: Path) -> Path:
    copy = tmp_path / "tampered.db"
    shutil.copyfile(base.path, copy)  # closed cleanly: the WAL was checkpointed into the file
    return copy


@contextmanager
def _tampered(
    base: Base, tmp_path: Path, *statements: tuple[str, tuple[Any, ...]]
) -> Iterator[SQLiteStore]:
    """A copy of the base edited as an attacker with file access would: triggers dropped first."""
    copy = _copy(base, tmp_path)
    with closing(sqlite3.connect(copy, isolation_level=None)) as conn:
        for trigger in _TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        for sql, args in statements:
            conn.execute(sql, args)
    store = SQLiteStore(copy)
    try:
        yield store
    finally:
        store.close()


def _corruption(base: Base, tmp_path: Path, *statements: tuple[str, tuple[Any, ...]]) -> Any:
    with _tampered(base, tmp_path, *statements) as store:
        with pytest.raises(LedgerCorruptedError) as caught:
            verify_ledger(store)
        return caught.value


def test_base_ledger_verifies(base: Base, tmp_path: Path) -> None:
    with _tampered(base, tmp_path) as store:  # triggers dropped, nothing edited
        report = verify_ledger(store, anchor=base.checkpoints[-1].hash)
    assert report.entries == len(base.entries)
    assert report.records == 90
    assert report.checkpoints == 2


def test_ledger_triggers_refuse_update_and_delete(base: Base, tmp_path: Path) -> None:
    copy = _copy(base, tmp_path)
    with closing(sqlite3.connect(copy, isolation_level=None)) as conn:
        for sql in (
            "UPDATE payonce_ledger SET amount = 1 WHERE seq = 5",
            "DELETE FROM payonce_ledger WHERE seq = 5",
            "DELETE FROM payonce_ledger",
            "UPDATE payonce_checkpoints SET count = 1 WHERE number = 1",
            "DELETE FROM payonce_checkpoints WHERE number = 2",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
    store = SQLiteStore(copy)
    try:
        assert verify_ledger(store).entries == len(base.entries)
    finally:
        store.close()


def test_tamper_edit_amount(base: Base, tmp_path: Path) -> None:
    for target in (base.entries[4], base.tail[3]):  # inside a sealed range, and in the tail
        error = _corruption(
            base,
            tmp_path,
            ("UPDATE payonce_ledger SET amount = amount + 1 WHERE seq = ?", (target.seq,)),
        )
        assert error.seq == target.seq
        assert error.key == target.key
        assert "edited" in error.reason


def test_tamper_edit_detail(base: Base, tmp_path: Path) -> None:
    target = base.tail[7]
    error = _corruption(
        base,
        tmp_path,
        ("UPDATE payonce_ledger SET detail = '{}' WHERE seq = ?", (target.seq,)),
    )
    assert error.seq == target.seq
    assert error.key == target.key


def test_tamper_delete_middle_row(base: Base, tmp_path: Path) -> None:
    target = next(e for e in base.tail if base.chain(e.key)[-1].seq > e.seq)
    successor = next(e for e in base.chain(target.key) if e.seq > target.seq)
    error = _corruption(base, tmp_path, ("DELETE FROM payonce_ledger WHERE seq = ?", (target.seq,)))
    # SQLite's sequence numbers have no gaps, so the missing entry itself is named.
    assert error.seq == target.seq
    assert "missing" in error.reason
    assert successor.seq > target.seq


def test_tamper_delete_tail_entry_of_live_record(base: Base, tmp_path: Path) -> None:
    key = next(
        e.key for e in base.tail[10:] if e.key in base.heads and e.key != base.entries[-1].key
    )
    last = base.chain(key)[-1]
    assert base.heads[key] == last.hash
    assert last.seq != base.entries[-1].seq
    error = _corruption(base, tmp_path, ("DELETE FROM payonce_ledger WHERE seq = ?", (last.seq,)))
    assert error.seq == last.seq
    assert "missing" in error.reason


def test_tamper_delete_last_entry_of_released_key(base: Base, tmp_path: Path) -> None:
    # A released key has no record, so no record head vouches for its newest entry; only the
    # contiguous sequence numbers (or a later checkpoint) can show that the entry is gone.
    released = next(
        e for e in base.tail[:-1] if e.event.value == "released" and base.chain(e.key)[-1] == e
    )
    error = _corruption(
        base, tmp_path, ("DELETE FROM payonce_ledger WHERE seq = ?", (released.seq,))
    )
    assert error.seq == released.seq


def _swap(first: Entry, second: Entry) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (
        ("UPDATE payonce_ledger SET seq = -1 WHERE seq = ?", (first.seq,)),
        ("UPDATE payonce_ledger SET seq = ? WHERE seq = ?", (first.seq, second.seq)),
        ("UPDATE payonce_ledger SET seq = ? WHERE seq = -1", (second.seq,)),
    )


def test_tamper_swap_two_rows_of_one_key(base: Base, tmp_path: Path) -> None:
    key = next(e.key for e in base.tail if len(base.chain(e.key)) >= 2)
    first, second = base.chain(key)[:2]
    error = _corruption(base, tmp_path, *_swap(first, second))
    assert error.seq == first.seq
    assert error.key == key


def test_tamper_swap_two_sealed_rows_of_different_keys(base: Base, tmp_path: Path) -> None:
    # Order across keys is storage order, not part of any chain; a sealed checkpoint fixes it.
    sealed = [e for e in base.entries if e.seq <= base.checkpoints[0].last_seq]
    first = sealed[2]
    second = next(e for e in sealed[3:] if e.key != first.key)
    error = _corruption(base, tmp_path, *_swap(first, second))
    # Whichever notices first (a chain whose order changed, or the checkpoint's digest), the
    # error points inside the sealed range.
    assert error.seq is not None
    assert error.seq <= base.checkpoints[0].last_seq


_INSERT = (
    "INSERT INTO payonce_ledger (seq, at, scope, key, event, status_from, status_to, token, "
    "attempt, amount, currency, detail, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row(entry: Entry) -> tuple[Any, ...]:
    return (
        entry.seq,
        to_micros(entry.at),
        entry.scope,
        entry.key,
        entry.event.value,
        None if entry.status_from is None else entry.status_from.value,
        None if entry.status_to is None else entry.status_to.value,
        entry.token,
        entry.attempt,
        entry.amount,
        entry.currency,
        entry.detail,
        entry.prev_hash,
        entry.hash,
    )


def test_tamper_insert_forged_row(base: Base, tmp_path: Path) -> None:
    last = base.entries[-1]
    seq = last.seq + 1
    made_up = replace(last, seq=seq, amount=99_999, hash="ab" * 32)
    error = _corruption(base, tmp_path, (_INSERT, _row(made_up)))
    assert error.seq == seq
    assert "edited" in error.reason

    # A correctly recomputed hash does not help a row that does not chain to its key.
    victim = base.tail[0]
    fields: dict[str, Any] = {
        "seq": seq,
        "at": last.at,
        "scope": victim.scope,
        "key": victim.key,
        "event": victim.event,
        "status_from": Status.SUCCEEDED,
        "status_to": None,
        "token": 9,
        "attempt": 9,
        "amount": 99_999,
        "currency": "usd",
        "detail": "{}",
        "prev_hash": GENESIS,
    }
    forged = Entry(**fields, hash=entry_hash(Entry(**fields, hash="")))
    error = _corruption(base, tmp_path, (_INSERT, _row(forged)))
    assert error.seq == seq
    assert error.key == victim.key
    assert "chain" in error.reason


def test_tamper_truncate_inside_sealed_range(base: Base, tmp_path: Path) -> None:
    sealed = base.checkpoints[-1]
    error = _corruption(
        base, tmp_path, ("DELETE FROM payonce_ledger WHERE seq > ?", (sealed.last_seq - 3,))
    )
    assert error.seq == sealed.last_seq
    assert "checkpoint 2" in error.reason


def test_tamper_truncate_unsealed_tail(base: Base, tmp_path: Path) -> None:
    sealed = base.checkpoints[-1]
    cut = {e.key for e in base.tail if e.key in base.heads}  # live records whose head was cut
    error = _corruption(
        base, tmp_path, ("DELETE FROM payonce_ledger WHERE seq > ?", (sealed.last_seq,))
    )
    assert error.key == min(cut)  # heads are checked in (scope, key) order


def test_tamper_remove_checkpoint(base: Base, tmp_path: Path) -> None:
    first, second = base.checkpoints
    error = _corruption(base, tmp_path, ("DELETE FROM payonce_checkpoints WHERE number = 1", ()))
    assert error.seq == second.last_seq
    error = _corruption(
        base, tmp_path, ("UPDATE payonce_checkpoints SET count = count - 1 WHERE number = 1", ())
    )
    assert error.seq == first.last_seq

    # Removing the newest checkpoint only shows against the hash anchored outside the store.
    with _tampered(
        base, tmp_path, ("DELETE FROM payonce_checkpoints WHERE number = 2", ())
    ) as store:
        assert verify_ledger(store).checkpoints == 1
        with pytest.raises(LedgerCorruptedError) as caught:
            verify_ledger(store, anchor=second.hash)
    assert caught.value.seq is None


def test_tamper_anchor_mismatch(base: Base, tmp_path: Path) -> None:
    with _tampered(base, tmp_path) as store:
        assert verify_ledger(store, anchor=base.checkpoints[0].hash).checkpoints == 2
        with pytest.raises(LedgerCorruptedError) as caught:
            verify_ledger(store, anchor=base.entries[-1].hash)
    assert caught.value.seq is None
    assert caught.value.key is None


# -- tamper evidence on the memory store -------------------------------------------------------


@pytest.fixture
def memory_ledger(clock: ManualClock) -> MemoryStore:
    store = MemoryStore()
    guard = _guard(store, clock)
    for i in range(15):
        _operate(guard, clock, i)
    verify_ledger(store)
    return store


def test_memory_tamper_edit_amount(memory_ledger: MemoryStore) -> None:
    target = _ledger(memory_ledger)[6]
    memory_ledger._replace_entry(6, replace(target, amount=target.amount + 1))
    with pytest.raises(LedgerCorruptedError) as caught:
        verify_ledger(memory_ledger)
    assert caught.value.seq == target.seq
    assert caught.value.key == target.key


def test_memory_tamper_delete_middle_entry(memory_ledger: MemoryStore) -> None:
    entries = _ledger(memory_ledger)
    index = next(
        i
        for i, e in enumerate(entries)
        if any(f.key == e.key and f.seq > e.seq for f in entries) and i > 3
    )
    target = entries[index]
    successor = next(e for e in entries if e.key == target.key and e.seq > target.seq)
    memory_ledger._replace_entry(index, None)
    with pytest.raises(LedgerCorruptedError) as caught:
        verify_ledger(memory_ledger)
    # The memory store's sequence numbers have no gaps: the missing entry itself is named.
    assert caught.value.seq == target.seq
    assert successor.seq > target.seq


def test_memory_tamper_delete_tail_entry(memory_ledger: MemoryStore) -> None:
    entries = _ledger(memory_ledger)
    memory_ledger._replace_entry(len(entries) - 1, None)
    with pytest.raises(LedgerCorruptedError) as caught:
        verify_ledger(memory_ledger)
    assert caught.value.key == entries[-1].key

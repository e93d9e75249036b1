"""Checks of the store contract on reads, scan and purge, the ledger, checkpoints and values."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest

from payonce._chain import GENESIS
from payonce._errors import ConflictError
from payonce._keys import canonical_json
from payonce._model import Entry, Event, Lease, ReplayView, Status
from payonce._protocols import Store
from payonce.testing._contract_support import (
    _INJECTIONS,
    _LEASE,
    _MICRO,
    _OTHER_SCOPE,
    _RETENTION,
    _SCOPE,
    _SECOND,
    _T0,
    _assert_utc,
    _checkpoint,
    _claim,
    _digest,
    _entries,
    _exercise,
    _key,
    _new,
    _recomputed,
    _require,
    _settle,
    _shape,
)


class _LedgerChecks:
    """Reads never write; scan and purge pick the right records; the ledger chains and paginates."""

    # -- get, newest, scan, purge -----------------------------------------------------------------

    def test_replay_view_matches_the_record(self, store: Store) -> None:
        # The replay path reads only these columns; they must say what get() says, in every
        # state a replay can meet.
        assert store.replay_view(_SCOPE, _key("absent")) is None
        states = {
            "claimed": None,
            "succeeded": Status.SUCCEEDED,
            "failed": Status.FAILED,
            "unknown": Status.UNKNOWN,
        }
        for label, status in states.items():
            new = _new(f"view-{label}")
            _claim(store, new)
            if status is not None:
                _settle(store, new, status)
            record = _require(store, new.scope, new.key)
            view = store.replay_view(new.scope, new.key)
            assert view == ReplayView(
                key=record.key,
                status=record.status,
                fingerprint=record.fingerprint,
                outcome=record.outcome,
                attempt=record.attempt,
                provider_key=record.provider_key,
            )

    def test_get_missing_returns_none(self, store: Store) -> None:
        new = _new("present")
        _claim(store, new)

        assert store.get(new.scope, _key("absent")) is None
        assert store.get(_OTHER_SCOPE, new.key) is None

    def test_reads_never_write(self, store: Store) -> None:
        expired, done = _new("read-expired"), _new("read-done")
        _claim(store, expired)
        _claim(store, done)
        _settle(store, done, Status.SUCCEEDED)
        records = [store.get(_SCOPE, n.key) for n in (expired, done)]
        ledger = _entries(store)

        store.get(_SCOPE, _key("absent"))
        store.newest(_SCOPE, "fam_none")
        assert len(store.scan(now=_T0 + 2 * _RETENTION, limit=10)) == 1
        store.entries(after=0, limit=10)
        store.heads(after=None, limit=10)
        store.checkpoints()

        assert [store.get(_SCOPE, n.key) for n in (expired, done)] == records
        assert _entries(store) == ledger

    def test_newest_returns_highest_generation_in_scope(self, store: Store) -> None:
        family = f"fam_{_digest('family')}"
        # Created out of generation order: newest means highest generation, not latest created.
        for offset, generation in enumerate((1, 2, 0)):
            new = _new(f"gen-{generation}", family=family, generation=generation)
            _claim(store, new, now=_T0 + offset * _SECOND)
        _claim(store, _new("other-family", family="fam_other", generation=9))
        _claim(store, _new("other-scope", scope=_OTHER_SCOPE, family=family, generation=7))
        gen2 = _new("gen-2")

        newest = store.newest(_SCOPE, family)

        assert newest == _require(store, _SCOPE, gen2.key)
        assert newest.generation == 2
        done = _settle(store, gen2, Status.SUCCEEDED)
        assert store.newest(_SCOPE, family) == done  # whatever its status
        other = store.newest(_OTHER_SCOPE, family)
        assert other is not None
        assert (other.scope, other.generation) == (_OTHER_SCOPE, 7)
        assert store.newest(_SCOPE, "fam_missing") is None
        assert store.newest(_OTHER_SCOPE, "fam_other") is None

    def test_newest_ignores_released_records(self, store: Store) -> None:
        family = "fam_released"
        _claim(store, _new("r-1", family=family, generation=1))
        top = _new("r-2", family=family, generation=2)
        _claim(store, top)
        store.release(top.scope, top.key, token=1, reason="refused", now=_T0)

        newest = store.newest(_SCOPE, family)

        assert newest is not None
        assert newest.generation == 1

    def _scan_fixture(self, store: Store) -> tuple[datetime, list[str]]:
        """Records of every kind; returns the scan instant and the keys due, oldest first."""
        now = _T0 + 2 * _SECOND + _LEASE
        unknown_other = _new("scan-f", scope=_OTHER_SCOPE)
        _claim(store, unknown_other, now=_T0 - 2 * _SECOND)
        _settle(store, unknown_other, Status.UNKNOWN)
        store.claim(_new("scan-live"), now=_T0 - 10 * _SECOND, lease_for=timedelta(hours=1))
        for label, status in (("scan-ok", Status.SUCCEEDED), ("scan-failed", Status.FAILED)):
            finished = _new(label)
            _claim(store, finished, now=_T0 - 5 * _SECOND)
            _settle(store, finished, status)
        expired, unknown, edge = _new("scan-a"), _new("scan-b"), _new("scan-edge")
        _claim(store, expired, now=_T0)
        _claim(store, unknown, now=_T0 + _SECOND)
        _settle(store, unknown, Status.UNKNOWN, now=_T0 + _SECOND)
        _claim(store, edge, now=_T0 + 2 * _SECOND)  # its lease expires exactly at ``now``
        return now, [r.key for r in (unknown_other, expired, unknown, edge)]

    def test_scan_finds_unknown_and_expired_oldest_first(self, store: Store) -> None:
        now, due = self._scan_fixture(store)

        found = store.scan(now=now, limit=100)

        assert [record.key for record in found] == due
        assert [record.scope for record in found] == [_OTHER_SCOPE, _SCOPE, _SCOPE, _SCOPE]
        assert {record.status for record in found} == {Status.CLAIMED, Status.UNKNOWN}
        # One microsecond earlier the newest lease is still live.
        assert [r.key for r in store.scan(now=now - _MICRO, limit=100)] == due[:-1]

    def test_scan_honours_limit(self, store: Store) -> None:
        now, due = self._scan_fixture(store)

        assert [record.key for record in store.scan(now=now, limit=2)] == due[:2]
        assert [record.key for record in store.scan(now=now, limit=1)] == due[:1]

    def test_purge_removes_only_old_terminal_records(self, store: Store) -> None:
        now = _T0 + _RETENTION + timedelta(hours=1)
        cutoff = now - _RETENTION
        plan = {
            "purge-ok": (Status.SUCCEEDED, _T0),
            "purge-failed": (Status.FAILED, _T0 + _SECOND),
            "purge-edge": (Status.SUCCEEDED, cutoff),
            "keep-fresh": (Status.SUCCEEDED, cutoff + _MICRO),
        }
        for label, (status, at) in plan.items():
            _claim(store, _new(label))
            _settle(store, _new(label), status, now=at)
        ancient = _T0 - timedelta(days=365)
        stuck, unknown = _new("keep-claimed"), _new("keep-unknown")
        _claim(store, stuck, now=ancient)
        _claim(store, unknown, now=ancient)
        _settle(store, unknown, Status.UNKNOWN, now=ancient)
        heads = {_key(label): _require(store, _SCOPE, _key(label)).ledger_head for label in plan}
        count = len(_entries(store))

        assert store.purge(now=now, retention=_RETENTION, limit=100) == 3

        gone = {_key(label): status for label, (status, _) in plan.items() if label != "keep-fresh"}
        for key in heads:
            assert (store.get(_SCOPE, key) is None) == (key in gone)
        assert _require(store, _SCOPE, stuck.key).status is Status.CLAIMED
        assert _require(store, _SCOPE, unknown.key).status is Status.UNKNOWN
        purged = _entries(store)[count:]
        assert {e.key: e.status_from for e in purged} == gone
        assert {e.key: e.prev_hash for e in purged} == {key: heads[key] for key in gone}
        assert {(e.event, e.status_to, e.at) for e in purged} == {(Event.PURGED, None, now)}

    def test_purge_never_touches_claimed_or_unknown(self, store: Store) -> None:
        stuck, unknown = _new("never-purged-claimed"), _new("never-purged-unknown")
        _claim(store, stuck)
        _claim(store, unknown)
        _settle(store, unknown, Status.UNKNOWN)
        records = [store.get(_SCOPE, n.key) for n in (stuck, unknown)]

        far = _T0 + timedelta(days=3650)
        assert store.purge(now=far, retention=timedelta(0), limit=100) == 0

        assert [store.get(_SCOPE, n.key) for n in (stuck, unknown)] == records
        assert len(_entries(store)) == 3

    def test_purge_honours_limit(self, store: Store) -> None:
        news = [_new(f"limit-{i}") for i in range(5)]
        for new in news:
            _claim(store, new)
            _settle(store, new, Status.SUCCEEDED)
        now = _T0 + _RETENTION

        counts = [store.purge(now=now, retention=_RETENTION, limit=2) for _ in range(4)]

        assert counts == [2, 2, 1, 0]
        assert all(store.get(_SCOPE, new.key) is None for new in news)
        assert [e.event for e in _entries(store)].count(Event.PURGED) == 5

    def test_purged_key_is_claimable_again(self, store: Store) -> None:
        new = _new("purged-again")
        _claim(store, new)
        _settle(store, new, Status.FAILED)
        now = _T0 + _RETENTION
        assert store.purge(now=now, retention=_RETENTION, limit=10) == 1
        purged = _entries(store)[-1]

        again = store.claim(new, now=now, lease_for=_LEASE)

        assert again.lease == Lease(token=2, expires_at=now + _LEASE)
        reclaimed = _entries(store)[-1]
        assert _shape(reclaimed) == (Event.CLAIMED, None, Status.CLAIMED, 2, 1)
        assert reclaimed.prev_hash == purged.hash
        assert again.record.ledger_head == reclaimed.hash

    # -- ledger -----------------------------------------------------------------------------------

    def test_one_entry_per_transition_in_sequence(self, store: Store) -> None:
        expected = _exercise(store)

        ledger = _entries(store)

        got = [(e.key, e.event, e.status_from, e.status_to, e.token, e.at) for e in ledger]
        assert got[:-2] == expected[:-2]
        assert sorted(got[-2:]) == expected[-2:]
        seqs = [e.seq for e in ledger]
        assert seqs == sorted(set(seqs)), "entry sequence numbers must strictly increase"
        assert seqs[0] > 0

    def test_entries_carry_amount_currency_and_json_detail(self, store: Store) -> None:
        _exercise(store)

        for entry in _entries(store):
            expected = (990, "usd") if entry.scope == _OTHER_SCOPE else (1250, "eur")
            assert (entry.amount, entry.currency) == expected
            assert isinstance(json.loads(entry.detail), dict)

    def test_entry_hashes_recompute(self, store: Store) -> None:
        _exercise(store)

        for entry in _entries(store):
            assert entry.hash == _recomputed(entry), f"entry {entry.seq} does not hash to itself"

    def test_entries_chain_per_key(self, store: Store) -> None:
        _exercise(store)

        chains: dict[tuple[str, str], list[Entry]] = {}
        for entry in _entries(store):
            chains.setdefault((entry.scope, entry.key), []).append(entry)
        assert len(chains) == 4
        for (scope, key), chain in chains.items():
            assert chain[0].prev_hash == GENESIS
            for previous, entry in itertools.pairwise(chain):
                assert entry.prev_hash == previous.hash, f"chain of {key} broken at {entry.seq}"
            record = store.get(scope, key)
            if record is not None:
                assert record.ledger_head == chain[-1].hash

    def test_entries_paginate(self, store: Store) -> None:
        _exercise(store)
        ledger = _entries(store)
        assert len(ledger) == 13

        pages: list[list[Entry]] = []
        after = 0
        for _ in range(len(ledger) + 1):  # bounded: a store that repeats a page must not hang
            if not (page := list(store.entries(after=after, limit=5))):
                break
            pages.append(page)
            after = page[-1].seq

        assert [len(page) for page in pages] == [5, 5, 3]
        assert [e for page in pages for e in page] == ledger
        assert list(store.entries(after=ledger[3].seq, limit=1)) == [ledger[4]]
        assert list(store.entries(after=ledger[-1].seq, limit=5)) == []

    def test_heads_list_live_records_in_order(self, store: Store) -> None:
        _exercise(store)
        for label, scope in (("heads-1", _SCOPE), ("heads-2", _OTHER_SCOPE), ("heads-3", "t_0")):
            _claim(store, _new(label, scope=scope))
        gone = _new("heads-released")
        _claim(store, gone)
        store.release(_SCOPE, gone.key, token=1, reason="refused", now=_T0)
        expected = []
        for scope, key in sorted({(e.scope, e.key) for e in _entries(store)}):
            record = store.get(scope, key)
            if record is not None:
                expected.append((scope, key, record.ledger_head))
        assert len(expected) == 5  # ledger-c, ledger-d and three heads-*

        assert [tuple(row) for row in store.heads(after=None, limit=100)] == expected
        pages: list[tuple[str, ...]] = []
        after: tuple[str, str] | None = None
        for _ in range(len(expected) + 1):  # bounded, as above
            if not (page := [tuple(row) for row in store.heads(after=after, limit=2)]):
                break
            pages.extend(page)
            after = (page[-1][0], page[-1][1])
        assert pages == expected
        assert list(store.heads(after=expected[-1][:2], limit=2)) == []

    def test_checkpoints_round_trip(self, store: Store) -> None:
        _exercise(store)
        ledger = _entries(store)
        assert list(store.checkpoints()) == []
        first = _checkpoint(1, ledger[:6], GENESIS, at=_T0 + timedelta(hours=1, microseconds=7))
        second = _checkpoint(2, ledger[6:], first.hash, at=_T0 + timedelta(hours=2))

        store.append_checkpoint(first)
        store.append_checkpoint(second)

        assert list(store.checkpoints()) == [first, second]
        for checkpoint in store.checkpoints():
            _assert_utc(checkpoint.at)

    def test_duplicate_checkpoint_number_conflicts(self, store: Store) -> None:
        _exercise(store)
        ledger = _entries(store)
        first = _checkpoint(1, ledger[:6], GENESIS, at=_T0)
        second = _checkpoint(2, ledger[6:], first.hash, at=_T0 + _SECOND)
        store.append_checkpoint(first)
        store.append_checkpoint(second)
        rival = _checkpoint(2, ledger[6:9], first.hash, at=_T0 + 2 * _SECOND)

        for duplicate in (rival, first):
            with pytest.raises(ConflictError):
                store.append_checkpoint(duplicate)

        assert list(store.checkpoints()) == [first, second]

    # -- values -----------------------------------------------------------------------------------

    def test_timestamps_round_trip_as_aware_utc(self, store: Store) -> None:
        new = _new("timestamps")
        claimed_at = datetime(2026, 7, 4, 23, 59, 59, 999_999, tzinfo=UTC)
        lease_for = timedelta(seconds=5, microseconds=1)
        store.claim(new, now=claimed_at, lease_for=lease_for)
        taken_at = claimed_at + lease_for + _MICRO
        store.takeover(new.scope, new.key, token=1, now=taken_at, lease_for=lease_for)
        live = _require(store, new.scope, new.key)
        assert live.lease_expires_at == taken_at + lease_for
        _assert_utc(live.lease_expires_at)
        done_at = datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

        _settle(store, new, Status.SUCCEEDED, token=2, now=done_at)

        record = _require(store, new.scope, new.key)
        assert (record.created_at, record.updated_at) == (claimed_at, done_at)
        assert (record.created_at.microsecond, record.updated_at.microsecond) == (999_999, 999_999)
        ledger = _entries(store)
        assert [e.at for e in ledger] == [claimed_at, taken_at, done_at]
        for value in (record.created_at, record.updated_at, *(e.at for e in ledger)):
            _assert_utc(value)

    @pytest.mark.parametrize("text", _INJECTIONS)
    def test_injection_strings_stored_literally(self, store: Store, text: str) -> None:
        bystander = _new("bystander")
        _claim(store, bystander)
        intent = canonical_json({"amount": 1250, "currency": "eur", "reference": text})
        new = _new("injection", scope=text, intent=intent, fingerprint=text)
        outcome = canonical_json({"error": {"message": text}})
        _claim(store, new)

        marked = store.mark_unknown(text, new.key, token=1, reason=text, now=_T0 + _SECOND)
        assert (marked.reason, _require(store, text, new.key).reason) == (text, text)
        store.takeover(text, new.key, token=1, now=_T0 + 2 * _SECOND, lease_for=_LEASE)
        now = _T0 + 3 * _SECOND
        store.complete(text, new.key, token=2, status=Status.FAILED, outcome=outcome, now=now)

        record = _require(store, text, new.key)
        assert (record.scope, record.fingerprint) == (text, text)
        assert (record.intent, record.outcome) == (intent, outcome)
        assert store.get(_SCOPE, new.key) is None
        assert _require(store, _SCOPE, bystander.key).status is Status.CLAIMED
        assert [e.scope for e in _entries(store) if e.key == new.key] == [text] * 4
        heads = [tuple(row) for row in store.heads(after=None, limit=10)]
        assert (text, new.key, record.ledger_head) in heads

"""Checks of the store contract on claims and takeovers: who holds a key, and for how long."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from payonce._chain import GENESIS
from payonce._errors import LeaseLostError
from payonce._model import Claimed, Event, Lease, Record, Status
from payonce._protocols import Store
from payonce.testing._contract_support import (
    _LEASE,
    _MICRO,
    _OTHER_SCOPE,
    _RACERS,
    _RETENTION,
    _SCOPE,
    _SECOND,
    _T0,
    _claim,
    _entries,
    _new,
    _race,
    _recomputed,
    _require,
    _settle,
    _shape,
)


class _ClaimChecks:
    """Claims of free and settled keys, scope isolation, takeovers after expiry, and their races."""

    # -- claim ------------------------------------------------------------------------------------

    def test_claim_creates_claimed_record(self, store: Store) -> None:
        new = _new("claim", family="fam_claim", generation=3)

        claimed = store.claim(new, now=_T0, lease_for=_LEASE)

        assert claimed.lease == Lease(token=1, expires_at=_T0 + _LEASE)
        record = claimed.record
        assert record == Record(
            scope=new.scope,
            key=new.key,
            status=Status.CLAIMED,
            fingerprint=new.fingerprint,
            intent=new.intent,
            provider_key=new.provider_key,
            operation=new.operation,
            amount=new.amount,
            currency=new.currency,
            token=1,
            attempt=1,
            lease_expires_at=_T0 + _LEASE,
            outcome=None,
            reason=None,
            ledger_head=record.ledger_head,
            created_at=_T0,
            updated_at=_T0,
            family="fam_claim",
            generation=3,
        )
        assert record.lease == claimed.lease
        assert store.get(new.scope, new.key) == record

    def test_second_claim_returns_existing_unchanged(self, store: Store) -> None:
        first = _claim(store, _new("dup"))
        other = _new("dup", fingerprint="fp_other", intent='{"amount":9999}', amount=9999)

        again = store.claim(other, now=_T0 + _SECOND, lease_for=timedelta(hours=1))

        assert again == Claimed(first.record, None)
        assert store.get(_SCOPE, other.key) == first.record
        assert len(_entries(store)) == 1

    @pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN])
    def test_claim_of_settled_key_returns_it(self, store: Store, status: Status) -> None:
        new = _new("settled")
        _claim(store, new)
        settled = _settle(store, new, status)

        again = store.claim(new, now=_T0 + _RETENTION, lease_for=_LEASE)

        assert again == Claimed(settled, None)
        assert len(_entries(store)) == 2

    def test_claim_appends_claimed_entry_from_genesis(self, store: Store) -> None:
        new = _new("entry")

        record = _claim(store, new).record

        (entry,) = _entries(store)
        assert _shape(entry) == (Event.CLAIMED, None, Status.CLAIMED, 1, 1)
        assert (entry.scope, entry.key, entry.at) == (new.scope, new.key, _T0)
        assert (entry.amount, entry.currency) == (new.amount, new.currency)
        assert entry.prev_hash == GENESIS
        assert entry.hash == record.ledger_head == _recomputed(entry)

    def test_scopes_are_isolated(self, store: Store) -> None:
        in_a = _new("shared", fingerprint="fp_a")
        in_b = _new("shared", scope=_OTHER_SCOPE, fingerprint="fp_b")
        assert in_a.key == in_b.key

        _claim(store, in_a)
        claimed_b = _claim(store, in_b)
        _settle(store, in_a, Status.SUCCEEDED)

        assert _require(store, _OTHER_SCOPE, in_b.key) == claimed_b.record
        assert claimed_b.record.fingerprint == "fp_b"
        assert _require(store, _SCOPE, in_a.key).fingerprint == "fp_a"
        # Each (scope, key) has its own chain.
        claims = [e for e in _entries(store) if e.event is Event.CLAIMED]
        assert sorted(e.scope for e in claims) == sorted([_SCOPE, _OTHER_SCOPE])
        assert all(e.prev_hash == GENESIS for e in claims)

    def test_concurrent_claims_have_one_winner(self, store: Store) -> None:
        new = _new("race")

        def claim(i: int) -> Claimed:
            return store.claim(replace(new, fingerprint=f"fp_{i}"), now=_T0, lease_for=_LEASE)

        results = _race(_RACERS, claim)

        winners = [result for result in results if result.lease is not None]
        assert len(winners) == 1, f"{len(winners)} of {_RACERS} concurrent claims won"
        stored = _require(store, new.scope, new.key)
        assert stored == winners[0].record
        assert all(result.record == stored for result in results)
        assert len(_entries(store)) == 1

    # -- takeover ---------------------------------------------------------------------------------

    def test_takeover_refused_while_lease_live(self, store: Store) -> None:
        new = _new("live")
        record = _claim(store, new).record
        now = _T0 + _LEASE - _MICRO

        refused = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        assert refused == Claimed(record, None)
        assert store.get(new.scope, new.key) == record
        assert len(_entries(store)) == 1

    @pytest.mark.parametrize("late", [timedelta(0), _MICRO, timedelta(days=3)])
    def test_takeover_allowed_at_and_after_expiry(self, store: Store, late: timedelta) -> None:
        new = _new("expired")
        before = _claim(store, new).record
        now, lease_for = _T0 + _LEASE + late, timedelta(minutes=2)

        taken = store.takeover(new.scope, new.key, token=1, now=now, lease_for=lease_for)

        assert taken.lease == Lease(token=2, expires_at=now + lease_for)
        assert taken.record == replace(
            before,
            token=2,
            attempt=2,
            lease_expires_at=now + lease_for,
            updated_at=now,
            ledger_head=taken.record.ledger_head,
        )
        assert store.get(new.scope, new.key) == taken.record
        first, entry = _entries(store)
        assert _shape(entry) == (Event.TAKEN_OVER, Status.CLAIMED, Status.CLAIMED, 2, 2)
        assert (entry.at, entry.prev_hash, entry.hash) == (
            now,
            first.hash,
            taken.record.ledger_head,
        )

    def test_takeover_allowed_from_unknown(self, store: Store) -> None:
        new = _new("unknown")
        _claim(store, new)
        _settle(store, new, Status.UNKNOWN, now=_T0 + _SECOND)
        now = _T0 + 2 * _SECOND  # the first lease is still live: UNKNOWN needs no expiry

        taken = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        assert taken.lease == Lease(token=2, expires_at=now + _LEASE)
        assert (taken.record.status, taken.record.attempt) == (Status.CLAIMED, 2)
        entry = _entries(store)[-1]
        assert _shape(entry) == (Event.TAKEN_OVER, Status.UNKNOWN, Status.CLAIMED, 2, 2)

    @pytest.mark.parametrize("stale", [1, 3])
    def test_takeover_with_other_token_refused(self, store: Store, stale: int) -> None:
        new = _new("stale")
        _claim(store, new)
        store.takeover(new.scope, new.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
        current = _require(store, new.scope, new.key)
        now = _T0 + 10 * _LEASE

        refused = store.takeover(new.scope, new.key, token=stale, now=now, lease_for=_LEASE)

        assert refused == Claimed(current, None)
        assert store.get(new.scope, new.key) == current
        assert len(_entries(store)) == 2

    @pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED])
    def test_takeover_of_terminal_record_refused(self, store: Store, status: Status) -> None:
        new = _new("terminal")
        _claim(store, new)
        done = _settle(store, new, status)
        now = _T0 + _RETENTION

        refused = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        assert refused == Claimed(done, None)
        assert store.get(new.scope, new.key) == done
        assert len(_entries(store)) == 2

    def test_concurrent_takeovers_have_one_winner(self, store: Store) -> None:
        new = _new("takeover-race")
        _claim(store, new)
        now = _T0 + _LEASE + _SECOND

        def take(_: int) -> Claimed:
            return store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)

        results = _race(8, take)

        winners = [result for result in results if result.lease is not None]
        assert len(winners) == 1, f"{len(winners)} of 8 concurrent takeovers won"
        assert winners[0].lease == Lease(token=2, expires_at=now + _LEASE)
        assert all(result.record.token == 2 for result in results)
        assert [e.event for e in _entries(store)] == [Event.CLAIMED, Event.TAKEN_OVER]

    def test_takeover_of_missing_record_raises_lease_lost(self, store: Store) -> None:
        never, released = _new("never-claimed"), _new("released")
        _claim(store, released)
        store.release(_SCOPE, released.key, token=1, reason="refused", now=_T0)

        for gone in (never, released):
            with pytest.raises(LeaseLostError):
                store.takeover(_SCOPE, gone.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)

        assert len(_entries(store)) == 2

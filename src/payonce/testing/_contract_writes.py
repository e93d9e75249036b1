"""Checks of the store contract on fenced writes: complete, mark_unknown and release."""

from __future__ import annotations

from dataclasses import replace

import pytest

from payonce._errors import LeaseLostError
from payonce._model import Event, Lease, Status
from payonce._protocols import Store
from payonce.testing._contract_support import (
    _FENCED_WRITES,
    _LEASE,
    _OUTCOME,
    _OUTCOME_TEXTS,
    _SECOND,
    _T0,
    _claim,
    _entries,
    _fenced_write,
    _new,
    _require,
    _settle,
    _shape,
)


class _FencedWriteChecks:
    """Fenced writes record what the holder saw and refuse every token but the current one."""

    # -- complete, mark_unknown, release: fenced writes -------------------------------------------

    @pytest.mark.parametrize(
        ("status", "event"), [(Status.SUCCEEDED, Event.SUCCEEDED), (Status.FAILED, Event.FAILED)]
    )
    def test_complete_records_outcome(self, store: Store, status: Status, event: Event) -> None:
        new = _new("complete")
        before = _claim(store, new).record
        now = _T0 + 2 * _SECOND

        done = store.complete(new.scope, new.key, token=1, status=status, outcome=_OUTCOME, now=now)

        assert done == replace(
            before,
            status=status,
            outcome=_OUTCOME,
            lease_expires_at=None,
            updated_at=now,
            ledger_head=done.ledger_head,
        )
        assert done.lease is None
        assert store.get(new.scope, new.key) == done
        first, entry = _entries(store)
        assert _shape(entry) == (event, Status.CLAIMED, status, 1, 1)
        assert (entry.at, entry.prev_hash, entry.hash) == (now, first.hash, done.ledger_head)

    @pytest.mark.parametrize("outcome", _OUTCOME_TEXTS)
    def test_complete_stores_outcome_byte_identically(self, store: Store, outcome: str) -> None:
        new = _new("bytes")
        _claim(store, new)

        done = store.complete(
            new.scope, new.key, token=1, status=Status.SUCCEEDED, outcome=outcome, now=_T0
        )

        stored = _require(store, new.scope, new.key).outcome
        assert stored is not None
        assert done.outcome == outcome
        assert stored.encode("utf-8") == outcome.encode("utf-8")

    @pytest.mark.parametrize("status", [Status.CLAIMED, Status.UNKNOWN])
    def test_complete_refuses_non_terminal_status(self, store: Store, status: Status) -> None:
        new = _new("not-terminal")
        record = _claim(store, new).record

        # Any ValueError: the message is the backend's.
        with pytest.raises(ValueError):  # noqa: PT011
            store.complete(new.scope, new.key, token=1, status=status, outcome=_OUTCOME, now=_T0)

        assert store.get(new.scope, new.key) == record
        assert len(_entries(store)) == 1

    def test_mark_unknown_records_reason(self, store: Store) -> None:
        new = _new("mark-unknown")
        before = _claim(store, new).record
        now = _T0 + _SECOND

        marked = store.mark_unknown(new.scope, new.key, token=1, reason="timeout", now=now)

        assert marked == replace(
            before,
            status=Status.UNKNOWN,
            reason="timeout",
            lease_expires_at=None,
            updated_at=now,
            ledger_head=marked.ledger_head,
        )
        assert marked.lease is None
        assert store.get(new.scope, new.key) == marked
        first, entry = _entries(store)
        assert _shape(entry) == (Event.MARKED_UNKNOWN, Status.CLAIMED, Status.UNKNOWN, 1, 1)
        assert (entry.at, entry.prev_hash, entry.hash) == (now, first.hash, marked.ledger_head)

    @pytest.mark.parametrize("op", _FENCED_WRITES)
    @pytest.mark.parametrize("token", [0, 2])
    def test_fenced_write_with_wrong_token_changes_nothing(
        self, store: Store, op: str, token: int
    ) -> None:
        new = _new("wrong-token")
        record = _claim(store, new).record

        with pytest.raises(LeaseLostError) as caught:
            _fenced_write(store, op, new.scope, new.key, token=token, now=_T0 + _SECOND)

        assert caught.value.to_dict()["token"] == token
        assert store.get(new.scope, new.key) == record
        assert len(_entries(store)) == 1
        # The real holder is unaffected.
        _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + _SECOND)
        assert len(_entries(store)) == 2

    @pytest.mark.parametrize("op", _FENCED_WRITES)
    @pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.UNKNOWN])
    def test_fenced_write_on_settled_record_raises(
        self, store: Store, op: str, status: Status
    ) -> None:
        new = _new("settled-write")
        _claim(store, new)
        settled = _settle(store, new, status)

        with pytest.raises(LeaseLostError):
            _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + _SECOND)

        assert store.get(new.scope, new.key) == settled
        assert len(_entries(store)) == 2

    @pytest.mark.parametrize("op", _FENCED_WRITES)
    def test_fenced_write_on_missing_record_raises(self, store: Store, op: str) -> None:
        never = _new("missing")

        with pytest.raises(LeaseLostError):
            _fenced_write(store, op, never.scope, never.key, token=1, now=_T0)

        assert store.get(never.scope, never.key) is None
        assert _entries(store) == []

    def test_zombie_holder_cannot_write_after_takeover(self, store: Store, second: Store) -> None:
        # A claimed and remembers the record it wrote; B took the lapsed lease over. With a
        # ``second`` instance (as a second process), A's late writes go through an instance that
        # never saw the takeover.
        new = _new("zombie")
        _claim(store, new)  # holder A, token 1
        b = second.takeover(new.scope, new.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
        assert b.lease is not None

        for op in _FENCED_WRITES:
            with pytest.raises(LeaseLostError):
                _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + _LEASE + _SECOND)
            assert second.get(new.scope, new.key) == b.record

        done = _settle(second, new, Status.SUCCEEDED, token=b.lease.token, now=_T0 + 2 * _LEASE)
        assert (done.status, done.token, done.attempt, done.outcome) == (
            Status.SUCCEEDED,
            2,
            2,
            _OUTCOME,
        )
        events = [e.event for e in _entries(second)]
        assert events == [Event.CLAIMED, Event.TAKEN_OVER, Event.SUCCEEDED]

    def test_a_stale_instance_cannot_take_over_a_record_taken_since(
        self, store: Store, second: Store
    ) -> None:
        # B read the record while A's first lease was live; A's lease lapsed and A itself took
        # the record over again (token 2). B's takeover, computed from what it read, loses.
        new = _new("stale-takeover")
        _claim(store, new)
        assert second.get(new.scope, new.key) is not None  # B has seen token 1
        now = _T0 + _LEASE
        a = store.takeover(new.scope, new.key, token=1, now=now, lease_for=_LEASE)
        assert a.lease is not None

        b = second.takeover(new.scope, new.key, token=1, now=now + _SECOND, lease_for=_LEASE)

        assert b.lease is None  # A's new lease is live: B gets the record, not a lease
        assert second.get(new.scope, new.key) == a.record
        assert [e.event for e in _entries(second)] == [Event.CLAIMED, Event.TAKEN_OVER]

    def test_zombie_of_an_earlier_life_cannot_write_after_reclaim(self, store: Store) -> None:
        # A takes the key (token 1), loses it to B (token 2), B releases it, C claims it again:
        # A's late write must still be refused, so C's token must not restart at 1.
        new = _new("reclaimed-zombie")
        _claim(store, new)
        b = store.takeover(new.scope, new.key, token=1, now=_T0 + _LEASE, lease_for=_LEASE)
        assert b.lease is not None
        store.release(new.scope, new.key, token=b.lease.token, reason="refused", now=_T0 + _LEASE)
        c = store.claim(new, now=_T0 + _LEASE + _SECOND, lease_for=_LEASE)
        assert c.lease is not None
        assert c.lease.token > b.lease.token

        for op in _FENCED_WRITES:
            with pytest.raises(LeaseLostError):
                _fenced_write(store, op, new.scope, new.key, token=1, now=_T0 + 2 * _LEASE)
        assert store.get(new.scope, new.key) == c.record

    def test_complete_after_expiry_without_takeover_succeeds(self, store: Store) -> None:
        # Fencing is by token, not by time: until someone takes over, the holder may still record
        # what the gateway answered, which beats leaving it to the Reconciler.
        new = _new("late-but-alone")
        _claim(store, new)

        done = _settle(store, new, Status.SUCCEEDED, now=_T0 + 2 * _LEASE)

        assert (done.status, done.outcome) == (Status.SUCCEEDED, _OUTCOME)

    # -- release ----------------------------------------------------------------------------------

    def test_release_removes_record_and_chain_continues(self, store: Store) -> None:
        new = _new("release")
        _claim(store, new)

        store.release(new.scope, new.key, token=1, reason="connection refused", now=_T0)

        assert store.get(new.scope, new.key) is None
        claimed, released = _entries(store)
        assert _shape(released) == (Event.RELEASED, Status.CLAIMED, None, 1, 1)
        assert released.prev_hash == claimed.hash
        now = _T0 + _SECOND
        again = store.claim(replace(new, fingerprint="fp_second"), now=now, lease_for=_LEASE)
        # Tokens only grow per key: the new life starts after the released one's token.
        assert again.lease == Lease(token=2, expires_at=now + _LEASE)
        assert (again.record.fingerprint, again.record.created_at) == ("fp_second", now)
        reclaimed = _entries(store)[-1]
        assert _shape(reclaimed) == (Event.CLAIMED, None, Status.CLAIMED, 2, 1)
        assert reclaimed.prev_hash == released.hash
        assert again.record.ledger_head == reclaimed.hash

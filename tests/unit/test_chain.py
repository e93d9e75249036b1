"""The ledger's hash format (v1) is a compatibility promise: every existing ledger was hashed
with it, so a change would make every stored entry read as tampered. Each test recomputes a hash
from the definition in ``payonce._chain`` with the standard library alone, and pins the result
for one fixed entry so that a change to the definition itself is caught too."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from payonce._chain import (
    GENESIS,
    checkpoint_digest,
    entry_hash,
    make_checkpoint,
    make_entry,
    to_micros,
)
from payonce._model import Entry, Event, NewRecord, Status
from payonce._transitions import claim_transition, complete_transition

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
DETAIL = '{"fingerprint":"ff","operation":"charge","provider_key":"po1_ü"}'


def _by_definition(*fields: object) -> str:
    text = json.dumps(list(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _claimed_entry(prev_hash: str = GENESIS) -> tuple[Entry, str]:
    entry = make_entry(
        seq=7, at=AT, scope="tenant-ä", key="k1_abc", event=Event.CLAIMED, status_from=None,
        status_to=Status.CLAIMED, token=1, attempt=1, amount=1999, currency="eur",
        detail=DETAIL, prev_hash=prev_hash,
    )  # fmt: skip
    expected = _by_definition(
        "payonce/ledger/v1", 1767323045678901, "tenant-ä", "k1_abc", "claimed", None,
        "CLAIMED", 1, 1, 1999, "eur", DETAIL, prev_hash,
    )  # fmt: skip
    return entry, expected


def test_an_entry_hash_is_sha256_of_its_canonical_fields() -> None:
    entry, expected = _claimed_entry()
    assert to_micros(AT) == 1767323045678901
    assert entry.hash == entry_hash(entry) == expected
    # The format pin: this value was computed once from the definition above.
    assert expected == "96520de2714bb65df3a8512142fb83dda6a2d197b681c8123a86741a76ccf379"


def test_seq_is_not_hashed() -> None:
    entry, _ = _claimed_entry()
    assert entry_hash(replace(entry, seq=99)) == entry.hash


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("at", AT + timedelta(microseconds=1)), ("scope", "tenant-b"), ("key", "k1_abd"),
        ("event", Event.TAKEN_OVER), ("status_from", Status.UNKNOWN),
        ("status_to", Status.SUCCEEDED), ("token", 2), ("attempt", 2), ("amount", 2000),
        ("currency", "usd"), ("detail", "{}"), ("prev_hash", "1" * 64),
    ],
)  # fmt: skip
def test_every_other_field_is_hashed(field: str, value: object) -> None:
    entry, _ = _claimed_entry()
    assert entry_hash(replace(entry, **{field: value})) != entry.hash


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED])
def test_the_transitions_hash_their_entries_by_the_same_definition(status: Status) -> None:
    new = NewRecord(
        scope="tenant-a", key="k1_abc", fingerprint="f" * 64, intent='{"amount":100}',
        provider_key="po1_abc", operation="charge", amount=100, currency="usd",
    )  # fmt: skip
    record, claimed = claim_transition(
        new, now=AT, lease_for=timedelta(seconds=60), seq=0, prev_hash=None, prev_token=2
    )
    assert claimed.hash == _by_definition(
        "payonce/ledger/v1", to_micros(AT), "tenant-a", "k1_abc", "claimed", None, "CLAIMED",
        3, 1, 100, "usd",
        '{"fingerprint":"' + "f" * 64 + '","operation":"charge","provider_key":"po1_abc"}',
        GENESIS,
    )  # fmt: skip
    later = AT + timedelta(seconds=1)
    done, completed = complete_transition(
        record, key="k1_abc", token=3, status=status, outcome='{"value":1}', now=later, seq=0
    )
    digest = hashlib.sha256(b'{"value":1}').hexdigest()
    assert completed.hash == done.ledger_head == _by_definition(
        "payonce/ledger/v1", to_micros(later), "tenant-a", "k1_abc", status.value.lower(),
        "CLAIMED", status.value, 3, 1, 100, "usd", '{"outcome_sha256":"' + digest + '"}',
        claimed.hash,
    )  # fmt: skip


def test_a_checkpoint_hash_covers_its_range_and_its_predecessor() -> None:
    entry, _ = _claimed_entry()
    digest = checkpoint_digest([entry.hash])
    assert digest == hashlib.sha256(entry.hash.encode("ascii")).hexdigest()
    checkpoint = make_checkpoint(
        number=1, at=AT, first_seq=1, last_seq=7, count=1, digest=digest, prev_hash=GENESIS
    )
    assert checkpoint.hash == _by_definition(
        "payonce/checkpoint/v1", 1, to_micros(AT), 1, 7, 1, digest, GENESIS
    )

"""The hot path's value plumbing: ``quick_init`` keeps every dataclass behaviour of the classes
it speeds up, and ``canonical_flat`` writes the bytes ``canonical_json`` writes."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from payonce import _keys
from payonce._chain import to_micros
from payonce._keys import KeyMaterial, canonical_flat, canonical_json
from payonce._model import (
    Attempt,
    Claimed,
    Entry,
    Lease,
    NewRecord,
    Outcome,
    Record,
    ReplayView,
    Status,
    quick_init,
)
from payonce._transitions import claim_transition, complete_transition
from payonce.stores._redis_core import _RECORD_FIELDS, _claim_pairs, _encode_entry, _pairs

QUICK = [Lease, NewRecord, Record, ReplayView, Claimed, Attempt, Outcome, Entry, KeyMaterial]
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _values(cls: type) -> dict[str, Any]:
    """A distinct value per field (identity is enough: nothing here validates types)."""
    return {f.name: object() for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_sets_every_field_by_keyword_and_by_position(cls: type) -> None:
    values = _values(cls)
    by_keyword = cls(**values)
    by_position = cls(*values.values())
    for name, value in values.items():
        assert getattr(by_keyword, name) is value
        assert getattr(by_position, name) is value
    assert by_keyword == by_position


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_keeps_the_dataclass_signature_and_defaults(cls: type) -> None:
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        expected = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        assert p.default == expected, f.name
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    with pytest.raises(TypeError, match="missing"):
        cls(*[object()] * (len(required) - 1))


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_keeps_the_init_introspectable(cls: type) -> None:
    # Tools that read an __init__'s types (get_type_hints) resolve them in the class's module.
    hints = typing.get_type_hints(cls.__init__)
    assert set(hints) == {f.name for f in dataclasses.fields(cls)} | {"return"}
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert cls.__init__.__module__ == cls.__module__


@pytest.mark.parametrize("cls", QUICK, ids=lambda c: c.__name__)
def test_quick_init_values_stay_frozen(cls: type) -> None:
    value = cls(**_values(cls))
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, name, 1)


def test_quick_init_values_replace_compare_hash_and_pickle() -> None:
    record = Record(
        scope="tenant-a",
        key="k1_x",
        status=Status.CLAIMED,
        fingerprint="f",
        intent="{}",
        provider_key="po1_x",
        operation="charge",
        amount=1000,
        currency="usd",
        token=1,
        attempt=1,
        lease_expires_at=NOW + timedelta(seconds=60),
        outcome=None,
        reason=None,
        ledger_head="0" * 64,
        created_at=NOW,
        updated_at=NOW,
    )
    assert (record.family, record.generation) == (None, 0)
    done = dataclasses.replace(record, status=Status.SUCCEEDED, outcome='{"value":1}')
    assert (done.status, done.outcome, done.key) == (Status.SUCCEEDED, '{"value":1}', "k1_x")
    assert record != done
    assert hash(record) == hash(dataclasses.replace(done, status=Status.CLAIMED, outcome=None))
    assert pickle.loads(pickle.dumps(record)) == record  # noqa: S301 - our own bytes
    assert record.lease == Lease(1, NOW + timedelta(seconds=60))


def test_quick_init_refuses_what_it_cannot_keep() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class Unslotted:
        a: int

    @dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True, kw_only=True)
    class KeywordOnly:
        a: int

    for cls in (Mutable, Unslotted, Factory, Checked, KeywordOnly):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)


FLAT: list[list[Any] | dict[str, Any]] = [
    ["payonce/ledger/v1", 1795463159857934, "tenant", "k1_x", "claimed", None, "CLAIMED", 1],
    [True, False, None, 0, -1, 2**70, "", "é ü 日本", 'quote " back \\ nl \n tab \t \x00 \x1f'],
    {"z": 1, "a": "b", "m": None, "é": "ü", "\x00": True},
    {"fingerprint": "f" * 64, "operation": "charge", "provider_key": "po1_x", "compensates": "k"},
    [],
    {},
]


@pytest.mark.parametrize("value", FLAT)
def test_canonical_flat_writes_the_bytes_of_canonical_json(value: Any) -> None:
    assert canonical_flat(value) == canonical_json(value)


def _without_the_c_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """payonce's encoders, and the ``json`` module's they fall back to, in pure Python: as on
    an interpreter without ``_json``."""
    monkeypatch.setattr(_keys, "_FLAT", None)
    monkeypatch.setattr(_keys, "_make_encoder", None)
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)
    monkeypatch.setattr(json.encoder, "encode_basestring", json.encoder.py_encode_basestring)


@pytest.mark.parametrize("value", FLAT)
def test_canonical_flat_without_the_c_encoder(value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = canonical_json(value)
    _without_the_c_encoder(monkeypatch)
    assert canonical_flat(value) == expected


def test_canonical_flat_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        canonical_flat([object()])
    with pytest.raises(ValueError, match="Out of range"):
        canonical_flat([float("nan")])


@pytest.mark.parametrize("family", [None, "f1_family"])
def test_the_redis_claim_writes_every_field_of_the_claimed_record(family: str | None) -> None:
    new = NewRecord("tenant-a", "k1_x", "f", "{}", "po1_x", "charge", 1000, "usd", family, 2)
    record, _ = claim_transition(
        new, now=NOW, lease_for=timedelta(seconds=60), seq=0, prev_hash=None
    )
    pairs = _claim_pairs(record)
    assert pairs == _pairs(record, _RECORD_FIELDS)[1]
    written = set(pairs[::2])
    assert written == {f.name for f in dataclasses.fields(Record)} - {
        "outcome",
        "reason",
        *(("family",) if family is None else ()),
    }
    # A record that is not a fresh claim takes the general encoding.
    done = dataclasses.replace(record, outcome='{"value":1}', lease_expires_at=None)
    assert _claim_pairs(done) == _pairs(done, _RECORD_FIELDS)[1]


@pytest.mark.parametrize("c_encoder", [True, False], ids=["c", "python"])
def test_redis_entries_and_arguments_carry_status_members_as_their_values(
    c_encoder: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Redis store passes Status and Event members where their values used to go (a
    # StrEnum is its value's str): the stored entry and the script arguments keep their bytes.
    new = NewRecord("tenant-a", "k1_x", "f", "{}", "po1_x", "charge", 1000, "usd")
    record, entry = claim_transition(
        new, now=NOW, lease_for=timedelta(seconds=60), seq=0, prev_hash=None
    )
    done = complete_transition(
        record, key="k1_x", token=1, status=Status.SUCCEEDED, outcome="{}", now=NOW, seq=0
    )[1]
    if not c_encoder:
        _without_the_c_encoder(monkeypatch)
    for e in (entry, done):
        by_value = [
            to_micros(e.at), e.scope, e.key, e.event.value,
            None if e.status_from is None else e.status_from.value,
            None if e.status_to is None else e.status_to.value,
            e.token, e.attempt, e.amount, e.currency, e.detail, e.prev_hash, e.hash,
        ]  # fmt: skip
        assert _encode_entry(e) == canonical_json(by_value)
    encoder = redis.connection.Encoder("utf-8", "strict", decode_responses=False)
    for status in Status:
        assert encoder.encode(status) == status.value.encode()
    pairs = _claim_pairs(record)
    assert encoder.encode(pairs[pairs.index("status") + 1]) == b"CLAIMED"

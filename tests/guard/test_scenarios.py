"""The named scenarios of SCENARIOS.md that need no gateway and no server.

Each runs on every embedded store through the ``store`` fixture. The guarded function stands in
for the gateway: its call counter is the "gateway call" count of the scenario. The concurrency,
crash and state-machine scenarios (R1-R5/R8/R22 variants under faults) live in ``tests/faults``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from payonce import (
    GatewayRejectedError,
    Guard,
    InProgressError,
    Intent,
    IntentError,
    KeyReuseError,
    LeaseLostError,
    OutcomeUnknownError,
    PayonceError,
    SQLiteStore,
    Status,
    Store,
    verify_ledger,
)
from payonce._keys import canonical_json
from payonce.testing import ManualClock
from tests.conftest import SCOPE, SECRET
from tests.guard.test_sync import (
    INTENT,
    LEASE,
    FailingStore,
    Recorder,
    claim_elsewhere,
    ledger,
)

RETENTION = timedelta(hours=72)


def _events(store: Store, key: str) -> list[str]:
    return [e.event.value for e in ledger(store) if e.key == key]


def _db_path(tmp_path: Path) -> Path:
    # The file tests.conftest.make_store gives the sqlite backend.
    return tmp_path / "payonce.db"


# -- R1-R3 -------------------------------------------------------------------------------------


def test_r1_single_call(guard: Guard, store: Store) -> None:
    fn = Recorder({"charge": "ch_r1", "amount": 1000, "currency": "usd"})
    outcome = guard.run(INTENT, fn)
    assert fn.calls == 1
    assert outcome.status is Status.SUCCEEDED
    assert outcome.replayed is False
    record = store.get(SCOPE, outcome.key)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.amount == 1000
    assert record.currency == "usd"
    assert record.provider_key == fn.attempts[0].provider_key
    # One entry per transition: the claim and the success (DESIGN §5, I5).
    assert _events(store, outcome.key) == ["claimed", "succeeded"]
    assert verify_ledger(store).entries == 2


def test_r2_sequential_retry(
    guard: Guard, store: Store, clock: ManualClock, backend: str, tmp_path: Path
) -> None:
    fn = Recorder({"charge": "ch_r2"})
    first = guard.run(INTENT, fn)
    entries = ledger(store)
    for _ in range(5):
        clock.advance(timedelta(seconds=7))
        again = guard.run(INTENT, fn)
        assert again.replayed is True
        assert again.body == first.body
    assert fn.calls == 1
    assert ledger(store) == entries

    # A payonce restart: a new store object on the same file (memory: a new guard only).
    reopened = SQLiteStore(_db_path(tmp_path)) if backend == "sqlite" else store
    try:
        restarted = Guard(reopened, secret=SECRET, scope=SCOPE, clock=clock)
        for _ in range(5):
            again = restarted.run(INTENT, fn)
            assert again.replayed is True
            assert again.body == first.body
            assert again.provider_key == first.provider_key
        assert ledger(reopened) == entries
    finally:
        if reopened is not store:
            reopened.close()
    assert fn.calls == 1


_R3_BASE = Intent(
    "charge",
    1000,
    "usd",
    customer="cus_r3alice",
    reference="order-R3-raw-ref",
    metadata={"cart": "c-7", "channel": "agent"},
)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 1500}, "amount"),
        ({"currency": "eur"}, "currency"),
        ({"customer": "cus_r3mallory"}, "customer"),
        ({"metadata": {"cart": "c-8", "channel": "agent"}}, "metadata"),
    ],
)
def test_r3_params_mismatch(guard: Guard, store: Store, change: dict[str, Any], field: str) -> None:
    first = guard.run(_R3_BASE, Recorder())
    before = store.get(SCOPE, first.key)
    entries = ledger(store)
    fn = Recorder()
    with pytest.raises(KeyReuseError) as caught:
        guard.run(Intent.from_dict({**_R3_BASE.canonical(), **change}), fn)
    error = caught.value
    assert error.fields == (field,)
    assert error.field == field
    assert error.key == first.key
    text = " ".join([str(error), repr(error), json.dumps(error.to_dict())])
    assert first.key in text
    assert "order-R3-raw-ref" not in text
    assert "cus_r3" not in text
    assert fn.calls == 0
    assert store.get(SCOPE, first.key) == before
    assert ledger(store) == entries


def test_r3_metadata_key_order_is_not_a_mismatch(guard: Guard, store: Store) -> None:
    first = guard.run(_R3_BASE, Recorder())
    reordered = Intent.from_dict(
        {**_R3_BASE.canonical(), "metadata": {"channel": "agent", "cart": "c-7"}}
    )
    fn = Recorder()
    again = guard.run(reordered, fn)
    assert fn.calls == 0
    assert again.replayed is True
    assert again.body == first.body


# -- R17 clock skew ----------------------------------------------------------------------------


def test_r17_clock_skew(guard: Guard, store: Store, clock: ManualClock) -> None:
    skew = timedelta(minutes=10)
    start = clock.now()

    # A backward jump never lets a live lease be stolen early.
    held = claim_elsewhere(store, INTENT, now=start)
    key = held.record.key
    clock.advance(-skew)
    fn = Recorder()
    with pytest.raises(InProgressError):
        guard.run(INTENT, fn)
    assert fn.calls == 0
    assert store.get(SCOPE, key) == held.record
    early = store.takeover(SCOPE, key, token=1, now=clock.now(), lease_for=LEASE)
    assert early.lease is None

    # A forward jump past the lease: only a fenced takeover, never a second non-resumable call.
    clock.advance(skew + skew)
    with pytest.raises(OutcomeUnknownError):
        guard.run(INTENT, fn)
    assert fn.calls == 0
    taken = store.get(SCOPE, key)
    assert taken is not None
    assert taken.status is Status.UNKNOWN
    assert taken.token == 2
    entries = ledger(store)
    with pytest.raises(LeaseLostError):  # the original holder comes back late
        store.complete(
            SCOPE,
            key,
            token=1,
            status=Status.SUCCEEDED,
            outcome=canonical_json({"value": "late"}),
            now=clock.now(),
        )
    assert store.get(SCOPE, key) == taken
    assert ledger(store) == entries

    # A backward jump never extends a finished record: a replay at a skewed time writes nothing,
    # so retention still counts from when it finished.
    done_intent = Intent("charge", 1000, "usd", customer="cus_alice", reference="order-r17-done")
    done = guard.run(done_intent, Recorder())
    finished = store.get(SCOPE, done.key)
    assert finished is not None
    clock.advance(-skew)
    assert guard.run(done_intent, Recorder()).replayed is True
    assert store.get(SCOPE, done.key) == finished
    assert finished.lease is None

    # The purge never removes CLAIMED or UNKNOWN records, however far the clock moves.
    claimed = claim_elsewhere(
        store,
        Intent("charge", 1000, "usd", customer="cus_alice", reference="order-r17-live"),
        now=clock.now(),
    )
    for offset in (-skew, skew, RETENTION - timedelta(seconds=1)):
        assert store.purge(now=finished.updated_at + offset, retention=RETENTION, limit=100) == 0
    assert store.get(SCOPE, done.key) == finished
    assert store.purge(now=clock.now() + timedelta(days=3650), retention=RETENTION, limit=100) == 1
    assert store.get(SCOPE, done.key) is None
    assert (
        store.purge(now=clock.now() + timedelta(days=36500), retention=timedelta(0), limit=100) == 0
    )
    unknown = store.get(SCOPE, key)
    live = store.get(SCOPE, claimed.record.key)
    assert unknown is not None
    assert unknown.status is Status.UNKNOWN
    assert live is not None
    assert live.status is Status.CLAIMED
    verify_ledger(store)


class _SkewedSleepClock(ManualClock):
    """Jumps 10 min back on the first sleep, as a wall clock corrected by NTP would."""

    def __init__(self) -> None:
        super().__init__()
        self.slept = timedelta(0)

    def sleep(self, duration: timedelta) -> None:
        first = self.slept == timedelta(0)
        self.slept += duration
        super().sleep(duration)
        if first:
            self.advance(-timedelta(minutes=10))


def test_r17_backward_jump_never_stretches_the_wait(store: Store) -> None:
    clock = _SkewedSleepClock()
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock)
    claim_elsewhere(store, INTENT, now=clock.now(), lease=timedelta(hours=1))
    fn = Recorder()
    with pytest.raises(InProgressError):
        guard.run(INTENT, fn)
    assert fn.calls == 0
    # The duplicate waits about ``wait`` (5 s), not ``wait`` plus the size of the jump.
    assert clock.slept <= guard.wait + timedelta(seconds=1), clock.slept


# -- R18 retention -----------------------------------------------------------------------------


def test_r18_key_retention_and_reuse(guard: Guard, store: Store, clock: ManualClock) -> None:
    same = Intent("charge", 1000, "usd", customer="cus_alice", reference="order-r18-same")
    other = Intent("charge", 1000, "usd", customer="cus_alice", reference="order-r18-other")
    old_same = guard.run(same, Recorder({"charge": "ch_old_same"}))
    old_other = guard.run(other, Recorder({"charge": "ch_old_other"}))

    clock.advance(RETENTION + timedelta(seconds=1))
    assert store.purge(now=clock.now(), retention=RETENTION, limit=100) == 2
    assert store.get(SCOPE, old_same.key) is None
    purged = [e for e in ledger(store) if e.key == old_same.key][-1]
    assert purged.event.value == "purged"
    assert purged.status_from is Status.SUCCEEDED
    assert purged.status_to is None

    # Documented behaviour: past retention the same intent is a new operation under the same key.
    fn = Recorder({"charge": "ch_new_same"})
    new_same = guard.run(same, fn)
    assert fn.calls == 1
    assert new_same.replayed is False
    assert new_same.key == old_same.key
    assert new_same.value == {"charge": "ch_new_same"}

    # A changed intent under a purged key runs anew; it never replays the old, mismatched result.
    changed = Intent.from_dict({**other.canonical(), "amount": 2000})
    fn_changed = Recorder({"charge": "ch_new_other"})
    new_other = guard.run(changed, fn_changed)
    assert fn_changed.calls == 1
    assert new_other.key == old_other.key
    assert new_other.value == {"charge": "ch_new_other"}
    assert new_other.body != old_other.body
    record = store.get(SCOPE, new_other.key)
    assert record is not None
    assert record.amount == 2000

    # The key's chain continues across the purge, and the whole ledger verifies.
    chain = [e for e in ledger(store) if e.key == old_same.key]
    assert [e.event.value for e in chain] == [
        "claimed",
        "succeeded",
        "purged",
        "claimed",
        "succeeded",
    ]
    assert chain[3].prev_hash == chain[2].hash
    report = verify_ledger(store)
    assert report.keys == 2
    assert report.records == 2


# -- S2 keyed HMAC -----------------------------------------------------------------------------

_RAW_REFERENCE = "order-S2-RAW-7731"
_RAW_CUSTOMER = "cus_S2RAW8842"


def _sqlite_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        tables = [
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {
            table: [
                dict(row)
                for row in conn.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - from sqlite_master
            ]
            for table in tables
        }


def test_s2_keyed_hmac(
    store: Store,
    clock: ManualClock,
    backend: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    intent = Intent("charge", 1000, "usd", customer=_RAW_CUSTOMER, reference=_RAW_REFERENCE)
    loose = Intent("charge", 1500, "usd", customer=_RAW_CUSTOMER)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock, definite=(KeyError,))
    errors: list[PayonceError] = []

    def expect(kind: type[PayonceError], call: Any) -> None:
        with pytest.raises(kind) as caught:
            call()
        errors.append(caught.value)

    ok = guard.run(intent, Recorder({"charge": "ch_s2"}))
    guard.run(intent, Recorder())  # replay
    guard.run(loose, Recorder({"charge": "ch_s2_loose"}))
    changed = Intent.from_dict({**intent.canonical(), "amount": 9999})
    expect(KeyReuseError, lambda: guard.run(changed, Recorder()))
    unknown = Intent("charge", 1000, "usd", customer=_RAW_CUSTOMER, reference=_RAW_REFERENCE + "u")
    expect(
        OutcomeUnknownError,
        lambda: guard.run(unknown, Recorder(raises=TimeoutError(_RAW_CUSTOMER))),
    )
    expect(OutcomeUnknownError, lambda: guard.run(unknown, Recorder()))
    failed = Intent("charge", 1000, "usd", customer=_RAW_CUSTOMER, reference=_RAW_REFERENCE + "f")
    expect(
        GatewayRejectedError, lambda: guard.run(failed, Recorder(raises=KeyError(_RAW_CUSTOMER)))
    )
    # A store outage while recording UNKNOWN makes the guard log a warning.
    flaky = Guard(
        FailingStore(store, fail=["mark_unknown"]), secret=SECRET, scope=SCOPE, clock=clock
    )
    logged = Intent("charge", 1000, "usd", customer=_RAW_CUSTOMER, reference=_RAW_REFERENCE + "l")
    expect(OutcomeUnknownError, lambda: flaky.run(logged, Recorder(raises=TimeoutError())))
    expect(
        InProgressError, lambda: guard.run(logged, Recorder())
    )  # still in progress under its lease
    assert len(errors) == 6
    assert any(r.name.startswith("payonce") for r in caplog.records)

    raw = (_RAW_REFERENCE, _RAW_CUSTOMER, SECRET.decode(), SECRET.hex())
    secrets_only = raw[2:]

    def clean(text: str, where: str, *, values: tuple[str, ...] = raw) -> None:
        for value in values:
            assert value not in text, f"{value!r} leaked into {where}"

    for error in errors:
        clean(str(error), "an error message")
        clean(repr(error), "an error repr")
        clean(json.dumps(error.to_dict()), "an error's to_dict")
    clean(caplog.text, "the logs")
    for record in caplog.records:
        clean(record.getMessage(), "a log record")

    # Keys and provider keys are HMAC digests.
    record = store.get(SCOPE, ok.key)
    assert record is not None
    assert ok.key.startswith("k1_")
    assert ok.provider_key.startswith("po1_")
    # The record keeps the intent (recovery needs it), and only there may the raw ids appear.
    assert _RAW_CUSTOMER in record.intent
    heads = list(store.heads(after=None, limit=100))
    assert len(heads) == 5
    for scope, key, _head in heads:
        stored = store.get(scope, key)
        assert stored is not None
        for name in stored.__slots__:
            if name != "intent":
                clean(str(getattr(stored, name)), f"record field {name}")
        clean(stored.intent, "the intent column", values=secrets_only)
    for entry in ledger(store):
        for name in entry.__slots__:
            clean(str(getattr(entry, name)), f"ledger entry field {name}")

    if backend == "sqlite":
        tables = _sqlite_rows(_db_path(tmp_path))
        assert tables["payonce_records"]
        assert tables["payonce_ledger"]
        for table, rows in tables.items():
            for row in rows:
                for column, value in row.items():
                    if table == "payonce_records" and column == "intent":
                        clean(str(value), "payonce_records.intent", values=secrets_only)
                    else:
                        clean(str(value), f"{table}.{column}")


# -- S5 input validation -----------------------------------------------------------------------

_S5_BASE: dict[str, Any] = {
    "operation": "charge",
    "amount": 1000,
    "currency": "usd",
    "customer": "cus_alice",
    "reference": "order-s5",
}
_S5_CASES: list[tuple[dict[str, Any], str]] = [
    ({"amount": 0}, "amount"),
    ({"amount": -1}, "amount"),
    ({"amount": True}, "amount"),
    ({"amount": 1.5}, "amount"),
    ({"amount": "1000"}, "amount"),
    ({"amount": 1e3}, "amount"),
    ({"amount": float("nan")}, "amount"),
    ({"amount": float("inf")}, "amount"),
    ({"amount": 2**63}, "amount"),
    ({"amount": 100_000_000}, "amount"),
    ({"currency": "USD "}, "currency"),
    ({"currency": "\uff35\uff33\uff24"}, "currency"),  # full-width USD
    ({"currency": "u\u0455d"}, "currency"),  # Cyrillic dze
    ({"reference": "order\r\nX-Injected: 1"}, "reference"),
    ({"reference": "order\x00"}, "reference"),
    ({"reference": "\u202eorder"}, "reference"),
    ({"reference": ""}, "reference"),
    ({"customer": "alice"}, "customer"),
    ({"metadata": {"note": "a\x00b"}}, "metadata.note"),
    ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
    ({"metadata": {"payonce_key": "forged"}}, "metadata"),
    ({"operation": "steal"}, "operation"),
    ({"amout": 1000}, "amout"),
]


def test_s5_input_validation_changes_nothing(guard: Guard, store: Store) -> None:
    fn = Recorder()
    for change, field in _S5_CASES:
        with pytest.raises(IntentError) as caught:
            guard.run(Intent.from_dict({**_S5_BASE, **change}), fn)
        assert caught.value.field == field, change
        assert caught.value.http_status == 400
        assert caught.value.message.startswith(field), caught.value.message
    missing = {k: v for k, v in _S5_BASE.items() if k != "amount"}
    with pytest.raises(IntentError) as caught:
        guard.run(Intent.from_dict(missing), fn)
    assert caught.value.field == "amount"
    with pytest.raises(IntentError) as caught:
        guard.run(_S5_BASE, fn)  # type: ignore[arg-type]
    assert caught.value.field == "intent"

    assert fn.calls == 0
    assert ledger(store) == []
    assert list(store.heads(after=None, limit=10)) == []
    assert guard.run(Intent.from_dict(_S5_BASE), fn).replayed is False  # the key was not consumed
    assert fn.calls == 1

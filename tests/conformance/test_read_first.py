"""``read_first`` on PostgreSQL and Redis: both orders give the same answers, at their round trips.

By default the guard reads five fields before it claims (a replay is one small read); with
``read_first=False`` it claims first (a fresh call saves that read, a replay goes through the
claim). The claim decides who calls in both, so every answer below must be the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest

from payonce import Attempt, Guard, Intent, KeyReuseError, OutcomeUnknownError, Store
from payonce.testing import ManualClock
from tests.conftest import _POSTGRES, _REDIS, SCOPE, SECRET

BACKENDS = ("postgres", "redis")


def _store(backend: str, *, read_first: bool | None) -> Store:
    from payonce.stores._postgres import PostgresStore  # noqa: PLC0415
    from payonce.stores._redis import RedisStore  # noqa: PLC0415

    if backend == "postgres":
        _POSTGRES.fresh_store().close()  # creates (once) and empties the run's database
        return PostgresStore(_POSTGRES.conninfo, max_size=4, read_first=read_first)
    prefix = f"payonce-test-{uuid4().hex[:12]}"
    _REDIS.prefixes.append(prefix)
    return RedisStore(_REDIS.url, prefix=prefix, read_first=read_first)


def _counted(store: Store, calls: Counter[str]) -> None:
    """Count the guard's replay reads and claims on this very store instance."""
    for name in ("replay_view", "claim"):
        method: Callable[..., Any] = getattr(store, name)

        def counting(*args: Any, _method: Callable[..., Any] = method, _name: str = name,
                     **kwargs: Any) -> Any:  # fmt: skip
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(store, name, counting)


@pytest.fixture(params=[(b, rf) for b in BACKENDS for rf in (True, False, None)], ids=str)
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[Guard, Counter[str], bool | None]]:
    backend, read_first = request.param
    store = _store(backend, read_first=read_first)
    calls: Counter[str] = Counter()
    _counted(store, calls)
    try:
        yield Guard(store, secret=SECRET, scope=SCOPE, clock=ManualClock()), calls, read_first
    finally:
        store.close()


def _charge(attempt: Attempt) -> dict[str, str]:
    return {"id": f"ch_{attempt.number}"}


def test_the_store_reports_its_order(setup: tuple[Guard, Counter[str], bool | None]) -> None:
    guard, _, read_first = setup
    # The adaptive order starts by reading: the cheap answer to a storm of retries.
    expected = True if read_first is None else read_first
    assert guard.store.read_before_claim is expected  # type: ignore[attr-defined]


def test_fresh_call_then_replay_in_either_order(
    setup: tuple[Guard, Counter[str], bool | None],
) -> None:
    guard, calls, read_first = setup
    read_first = True if read_first is None else read_first  # adaptive: the first calls read
    intent = Intent("charge", 1200, "usd", customer="cus_rf", reference="order-rf-1")
    called: list[str] = []

    def fn(attempt: Attempt) -> dict[str, str]:
        called.append(attempt.provider_key)
        return {"id": "ch_rf"}

    first = guard.run(intent, fn)
    assert calls == Counter({"replay_view": 1, "claim": 1} if read_first else {"claim": 1})
    calls.clear()
    again = guard.run(intent, fn)
    assert (first.replayed, again.replayed) == (False, True)
    assert again.value == first.value == {"id": "ch_rf"}
    assert len(called) == 1
    # A replay is the one small read when reading first, the claim otherwise: never both.
    assert calls == Counter({"replay_view": 1} if read_first else {"claim": 1})


def test_changed_parameters_are_refused_in_either_order(
    setup: tuple[Guard, Counter[str], bool | None],
) -> None:
    guard, _, _ = setup
    guard.run(Intent("charge", 1200, "usd", customer="cus_rf", reference="order-rf-2"), _charge)
    with pytest.raises(KeyReuseError) as caught:
        guard.run(Intent("charge", 1300, "usd", customer="cus_rf", reference="order-rf-2"), _charge)
    assert "amount" in caught.value.fields


def test_an_unknown_outcome_is_never_called_again_in_either_order(
    setup: tuple[Guard, Counter[str], bool | None],
) -> None:
    guard, _, _ = setup
    intent = Intent("charge", 1200, "usd", customer="cus_rf", reference="order-rf-3")
    calls: list[int] = []

    def lost(attempt: Attempt) -> dict[str, str]:
        calls.append(attempt.number)
        raise TimeoutError("the answer was lost after the request was sent")

    with pytest.raises(OutcomeUnknownError):
        guard.run(intent, lost)
    with pytest.raises(OutcomeUnknownError):
        guard.run(intent, lost)
    assert calls == [1]


# -- the adaptive order ------------------------------------------------------------------------


def _intent(n: int) -> Intent:
    return Intent("charge", 1000 + n, "usd", customer="cus_rf", reference=f"order-rf-a{n}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_adaptive_order_follows_the_workload(backend: str) -> None:
    store = _store(backend, read_first=None)
    calls: Counter[str] = Counter()
    _counted(store, calls)
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=ManualClock())
    try:
        # A stream of new payments: after the reads keep missing, the guard claims first.
        for n in range(40):
            guard.run(_intent(n), _charge)
        assert store.read_before_claim is False  # type: ignore[attr-defined]
        calls.clear()
        for n in range(40, 50):
            guard.run(_intent(n), _charge)
        assert calls == Counter({"claim": 10})  # no read before these claims
        # A storm of retries of finished payments: the claims keep finding them finished,
        # so the guard goes back to answering them with one small read.
        for n in range(50):
            assert guard.run(_intent(n), _charge).replayed
        assert store.read_before_claim is True  # type: ignore[attr-defined]
        calls.clear()
        for n in range(10):
            assert guard.run(_intent(n), _charge).replayed
        assert calls == Counter({"replay_view": 10})
    finally:
        store.close()


def test_read_first_refuses_anything_but_true_false_or_none() -> None:
    from payonce import ConfigurationError  # noqa: PLC0415
    from payonce.stores._read_first import ReadFirst  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match="read_first"):
        ReadFirst("yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_intents_without_a_reference_leave_the_adaptive_order_alone(backend: str) -> None:
    # They read their family's newest record before claiming in either order, so they tell
    # nothing about which order is cheaper, and that read cannot tell a retry from a new
    # generation (a finished newest record past the window starts one): not counted.
    store = _store(backend, read_first=None)
    clock = ManualClock()
    guard = Guard(store, secret=SECRET, scope=SCOPE, clock=clock)

    def loose(n: int) -> Intent:
        return Intent("charge", 2000 + n, "usd", customer="cus_rf")

    try:
        for n in range(40):  # new payments without a reference (each its own family)
            assert not guard.run(loose(n), _charge).replayed
        assert store.read_before_claim is True  # type: ignore[attr-defined] # the start
        for n in range(40):  # new payments with one: the store moves to claiming first
            guard.run(_intent(n), _charge)
        assert store.read_before_claim is False  # type: ignore[attr-defined]
        for n in range(40):  # retries of the loose ones inside the window
            assert guard.run(loose(n), _charge).replayed
        assert store.read_before_claim is False  # type: ignore[attr-defined]
        clock.advance(guard.window + timedelta(seconds=1))
        for n in range(40):  # past the window: new generations behind a finished record
            assert not guard.run(loose(n), _charge).replayed
        assert store.read_before_claim is False  # type: ignore[attr-defined]
    finally:
        store.close()

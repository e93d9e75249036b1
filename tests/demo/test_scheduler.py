"""The demo's simulated time: one thread at a time, in wake-up order, the same on every run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from payonce.demo._scheduler import Reply, Simulation

START = datetime(2026, 1, 1, tzinfo=UTC)


def _seconds(sim: Simulation) -> float:
    return (sim.now() - START).total_seconds()


def test_threads_interleave_by_wake_up_time_not_by_start_order() -> None:
    sim = Simulation(START)
    seen: list[tuple[str, float]] = []

    def worker(name: str, pauses: list[float]) -> None:
        for pause in pauses:
            seen.append((name, _seconds(sim)))
            sim.sleep(timedelta(seconds=pause))
        seen.append((name, _seconds(sim)))

    sim.spawn(lambda: worker("a", [3, 3]))
    sim.spawn(lambda: worker("b", [1, 1, 5]))
    sim.spawn(lambda: worker("c", []), at=START + timedelta(seconds=4))
    sim.run()
    assert seen == [
        ("a", 0.0),
        ("b", 0.0),
        ("b", 1.0),
        ("b", 2.0),
        ("a", 3.0),
        ("c", 4.0),
        ("a", 6.0),
        ("b", 7.0),
    ]
    assert _seconds(sim) == 7.0


def test_a_reply_wakes_its_waiter_when_it_comes_and_a_timeout_when_it_does_not() -> None:
    sim = Simulation(START)
    outcomes: list[tuple[bool, object, float]] = []

    def caller(answer_after: float) -> None:
        reply = Reply()

        def responder() -> None:
            sim.sleep(timedelta(seconds=answer_after))
            sim.deliver(reply, answer_after)

        sim.spawn(responder)
        done = sim.wait(reply, timedelta(seconds=10))
        outcomes.append((done, reply.value if done else None, _seconds(sim)))

    sim.spawn(lambda: caller(2))
    sim.run()
    sim.spawn(lambda: caller(30))
    sim.run()
    # The first reply came after 2 s; the second caller gave up at its 10 s timeout, and the
    # late reply still arrived (the responder ran to its end) without waking anyone.
    assert outcomes == [(True, 2, 2.0), (False, None, 12.0)]
    assert _seconds(sim) == 32.0


def test_a_failing_thread_fails_the_run_after_the_others_finished() -> None:
    sim = Simulation(START)
    finished: list[str] = []

    def broken() -> None:
        sim.sleep(timedelta(seconds=1))
        raise RuntimeError("boom")

    def fine() -> None:
        sim.sleep(timedelta(seconds=5))
        finished.append("fine")

    sim.spawn(broken)
    sim.spawn(fine)
    with pytest.raises(RuntimeError, match="boom"):
        sim.run()
    assert finished == ["fine"]


def test_sleep_outside_the_simulation_only_moves_time_on() -> None:
    sim = Simulation(START)
    sim.sleep(timedelta(seconds=90))
    assert _seconds(sim) == 90.0

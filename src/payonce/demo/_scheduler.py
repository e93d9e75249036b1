"""Simulated time on threads: the demo's clock, deterministic for a given workload.

Every agent (and every request on the wire) runs in a thread of its own, but only one thread
runs at a time: the one holding the baton. A thread gives the baton up only by sleeping on this
clock or by waiting for a reply, and the baton goes to the thread whose wake-up time is earliest,
ties in the order they were scheduled. So two agents handling one order really interleave inside
a call (the guard's store calls, the provider's in-flight window), yet the same seed interleaves
them the same way on every run, whatever the operating system's scheduler does.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

__all__ = ["Reply", "Simulation"]


class _Baton:
    """One simulated thread's place in the queue, and its measured running time."""

    __slots__ = ("active", "epoch", "go", "parked", "since")

    def __init__(self) -> None:
        self.go = threading.Event()
        self.epoch = 0  # bumped on every park: older queue entries of this thread are stale
        self.parked = True
        self.active = 0.0  # seconds this thread held the baton (perf_counter)
        self.since = 0.0


class Reply:
    """A value one simulated thread hands to another that waits for it (with a timeout)."""

    __slots__ = ("_waiter", "done", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: object = None
        self._waiter: _Baton | None = None


class Simulation:
    """A clock (``now``/``sleep``) whose sleeps hand the baton to the next simulated thread.

    ``now`` and ``sleep`` work outside the simulation too (before or after ``run``): there
    ``sleep`` only moves the time on.
    """

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._queue: list[tuple[datetime, int, int, _Baton]] = []
        self._order = itertools.count()
        self._live = 0
        self._idle = threading.Event()
        self._local = threading.local()
        self._failures: list[BaseException] = []

    # -- the Clock protocol ------------------------------------------------------------------

    def now(self) -> datetime:
        """The simulated time, aware UTC."""
        with self._lock:
            return self._now

    def sleep(self, duration: timedelta) -> None:
        """Let the other simulated threads run for ``duration`` of simulated time."""
        me = self._me()
        if me is None:
            with self._lock:
                self._now += max(duration, timedelta(0))
            return
        with self._lock:
            self._park(me, self._now + max(duration, timedelta(0)))
        self._wait_turn(me)

    async def asleep(self, duration: timedelta) -> None:
        """The Clock protocol's async sleep; the demo is sync, so this only moves time on."""
        self.sleep(duration)

    # -- threads -----------------------------------------------------------------------------

    def spawn(self, fn: Callable[[], None], *, at: datetime | None = None) -> None:
        """Start ``fn`` in a new simulated thread at ``at`` (default: now)."""
        baton = _Baton()
        with self._lock:
            self._live += 1
            self._push(baton, self._now if at is None else max(at, self._now))
        threading.Thread(target=self._body, args=(baton, fn), daemon=True).start()

    def run(self) -> None:
        """Run every spawned thread to its end; re-raise the first failure of one."""
        with self._lock:
            first = self._pop()
        if first is not None:
            first.go.set()
            self._idle.wait()
        self._idle.clear()
        if self._failures:
            raise self._failures[0]

    def wait(self, reply: Reply, timeout: timedelta) -> bool:
        """Wait (in simulated time) until ``reply`` is done or ``timeout`` passed: whether done."""
        me = self._me()
        assert me is not None, "wait() runs inside a simulated thread"
        with self._lock:
            if reply.done:
                return True
            reply._waiter = me
            self._park(me, self._now + timeout)
        self._wait_turn(me)
        reply._waiter = None
        return reply.done

    def deliver(self, reply: Reply, value: object) -> None:
        """Complete ``reply`` and wake its waiter now, if it still waits."""
        with self._lock:
            reply.value, reply.done = value, True
            waiter = reply._waiter
            if waiter is not None and waiter.parked:
                self._push(waiter, self._now)

    def running_time(self) -> float:
        """Seconds of real time the calling simulated thread has held the baton so far."""
        me = self._me()
        if me is None:
            return time.perf_counter()
        return me.active + (time.perf_counter() - me.since)

    # -- the baton ---------------------------------------------------------------------------

    def _me(self) -> _Baton | None:
        baton: _Baton | None = getattr(self._local, "baton", None)
        return baton

    def _push(self, baton: _Baton, at: datetime) -> None:
        baton.epoch += 1
        heapq.heappush(self._queue, (at, next(self._order), baton.epoch, baton))

    def _pop(self) -> _Baton | None:
        while self._queue:
            at, _, epoch, baton = heapq.heappop(self._queue)
            if epoch == baton.epoch and baton.parked:
                self._now = max(self._now, at)
                baton.parked = False
                return baton
        return None

    def _park(self, me: _Baton, until: datetime) -> None:
        """Queue ``me`` until ``until`` and hand the baton on (to ``me`` if it is next)."""
        me.parked = True
        me.active += time.perf_counter() - me.since
        self._push(me, until)
        nxt = self._pop()
        assert nxt is not None  # at least ``me`` is queued
        nxt.go.set()

    def _wait_turn(self, me: _Baton) -> None:
        me.go.wait()
        me.go.clear()
        me.since = time.perf_counter()

    def _body(self, baton: _Baton, fn: Callable[[], None]) -> None:
        self._wait_turn(baton)
        self._local.baton = baton
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the main thread
            self._failures.append(exc)
        finally:
            self._retire()

    def _retire(self) -> None:
        with self._lock:
            self._live -= 1
            nxt = self._pop()
            if nxt is not None:
                nxt.go.set()
            elif self._live > 0:
                # Every waiting thread waits with a timeout, so it is always queued: a thread
                # alive but not queued is a bug in the demo, reported instead of hanging.
                self._failures.append(RuntimeError("simulated threads are stuck (no one queued)"))
                self._idle.set()
            else:
                self._idle.set()

"""A guard in a separate process, for crash and multi-process race tests (SCENARIOS R5-R8).

Run from the repository root as ``python -m tests.faults.worker --db PATH --movements PATH ...``
(or by path: it imports only payonce and the stdlib). It opens ``SQLiteStore(db)``, builds a
Guard with the fixed test secret and scope, and runs one intent whose function is the fake
provider: it appends one line ``<pid> <provider_key> <attempt>`` to the movements file and
returns ``{"id": "ch_<pid>"}``. That file is the provider's ledger: each line is one money
movement. Lines are short and the file is opened with O_APPEND, so concurrent appends from
several processes never interleave; each is fsynced before the function returns, so a crash
right after it leaves the movement on disk, as a real provider would.

Each caller prints one JSON line on stdout: ``{"ok": true, "key", "body", "value", ...}`` or
``{"ok": false, "error": "<class name>", ...}``. The function also prints ``{"event": "moved"}``
after its movement is durable, so a parent can kill the process while it is blocked in the call.

``--rounds N`` keeps one interpreter for N races on fresh keys (reference ``<reference>-<r>``):
before each round the worker prints ``{"ready": r}`` and blocks reading one line of stdin, the
start signal; its ``--threads`` threads then pass a ``threading.Barrier`` together.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from payonce import Attempt, Clock, Guard, Intent, PayonceError, SQLiteStore
from payonce.testing import CrashAt

# The same values as tests.conftest (a test asserts it); not imported, so that the worker starts
# without pytest and also runs by path.
SECRET = b"payonce-test-secret-0123456789abcdef"
SCOPE = "tenant-a"
CUSTOMER = "cus_worker"

_print_lock = threading.Lock()


class Slowed:
    """``store`` with latency injected before every call: each waits a random 0 to ``most``
    seconds first, so the racers' store calls interleave in ever other orders (SCENARIOS R5,
    "with injected store latency"). Everything else is the store's own."""

    def __init__(self, store: Any, most: float) -> None:
        self._store = store
        self._most = most
        self._random = random.Random(os.getpid())  # jitter, not security
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target) or name == "close":
            return target

        def slowed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                pause = self._random.uniform(0.0, self._most)
            time.sleep(pause)
            return target(*args, **kwargs)

        return slowed


def store_latency(parser: argparse.ArgumentParser) -> None:
    """The ``--store-latency`` option of the race workers."""
    parser.add_argument(
        "--store-latency",
        type=float,
        default=0.0,
        help="inject up to this many seconds of latency before every store call",
    )


def impatient_guard(store: Any, clock: Clock, *, lease: timedelta, **options: Any) -> Guard:
    """A guard with the workers' secret and scope that never waits for a call in flight (a
    test process inspecting what a worker left behind must not block on its lease)."""
    return Guard(
        store, secret=SECRET, scope=SCOPE, clock=clock, lease=lease, wait=timedelta(0), **options
    )


def intent_for(reference: str, amount: int = 1000) -> Intent:
    """The intent every worker and its parent test run for ``reference``."""
    return Intent("charge", amount, "usd", customer=CUSTOMER, reference=reference)


def move(path: Path, provider_key: str, attempt: int, *, dedupe: bool = False) -> dict[str, str]:
    """Perform one money movement at the fake provider; return what the provider answers.

    With ``dedupe`` the provider behaves like Stripe: a provider key it has seen replays the
    first answer and moves nothing.
    """
    if dedupe:
        for movement in read_movements(path):
            if movement["provider_key"] == provider_key:
                return dict(movement["value"])
    pid = os.getpid()
    with path.open("a", encoding="ascii") as ledger:
        ledger.write(f"{pid} {provider_key} {attempt}\n")
        ledger.flush()
        os.fsync(ledger.fileno())
    return {"id": f"ch_{pid}"}


def read_movements(path: Path) -> list[dict[str, Any]]:
    """Every movement in the provider's ledger, as ``history.check_history`` takes them."""
    if not path.exists():
        return []
    movements = []
    for line in path.read_text(encoding="ascii").splitlines():
        pid, provider_key, attempt = line.split()
        movements.append(
            {"provider_key": provider_key, "attempt": int(attempt), "value": {"id": f"ch_{pid}"}}
        )
    return movements


def emit(line: dict[str, Any]) -> None:
    """Print one JSON line, whole, even with several threads printing."""
    with _print_lock:
        sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()


def provider(
    path: Path, sleep_in_fn: float, *, announce: bool = True
) -> Callable[[Attempt], dict[str, str]]:
    """The guarded function: one movement, then an optional stall (a slow provider).

    With ``announce`` it prints ``{"event": "moved"}`` once the movement is durable.
    """

    def fn(attempt: Attempt) -> dict[str, str]:
        answer = move(path, attempt.provider_key, attempt.number)
        if announce:
            emit({"event": "moved", "provider_key": attempt.provider_key, "pid": os.getpid()})
        if sleep_in_fn > 0:
            # Simulates a slow provider holding the call open; nothing times it.
            time.sleep(sleep_in_fn)
        return answer

    return fn


def call(guard: Guard, intent: Intent, fn: Callable[[Attempt], Any], **tags: Any) -> None:
    """Run the intent once and print what this caller got."""
    line: dict[str, Any] = {"pid": os.getpid(), **tags}
    try:
        outcome = guard.run(intent, fn)
    except PayonceError as exc:
        line.update(ok=False, error=type(exc).__name__, key=getattr(exc, "key", None))
    else:
        line.update(
            ok=True,
            key=outcome.key,
            body=outcome.body,
            value=outcome.value,
            replayed=outcome.replayed,
            attempt=outcome.attempt,
            provider_key=outcome.provider_key,
        )
    emit(line)


def race(
    guard: Guard, intent: Intent, fn: Callable[[Attempt], Any], threads: int, rnd: int
) -> None:
    """``threads`` callers of one intent, released together; with a round, on stdin's signal."""
    barrier = threading.Barrier(threads + 1)

    def caller(index: int) -> None:
        barrier.wait()
        call(guard, intent, fn, thread=index, round=rnd)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    if rnd >= 0:
        emit({"ready": rnd})
        if not sys.stdin.readline():
            raise SystemExit("the parent closed stdin before the start signal")
    barrier.wait()
    for worker in workers:
        worker.join()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--db", type=Path, required=True, help="the SQLite file")
    parser.add_argument("--movements", type=Path, required=True, help="the provider's ledger")
    parser.add_argument("--reference", default="order-1", help="the intent's reference")
    parser.add_argument("--amount", type=int, default=1000)
    parser.add_argument("--lease", type=float, default=30.0, help="lease, seconds")
    parser.add_argument("--wait", type=float, default=10.0, help="duplicate wait, seconds")
    parser.add_argument("--resumable", action="store_true")
    parser.add_argument("--crash-at", help="guard fault point where the process exits 137")
    parser.add_argument("--store-crash-at", help="store fault point (mid_record) likewise")
    parser.add_argument("--threads", type=int, default=1, help="callers racing in this process")
    parser.add_argument("--sleep-in-fn", type=float, default=0.0, help="seconds inside the call")
    parser.add_argument("--rounds", type=int, default=0, help="races on fresh keys, stdin-started")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the worker; returns the exit status (0; a crash point exits 137 instead)."""
    args = _parse(argv)
    store = SQLiteStore(
        args.db, faults=CrashAt(args.store_crash_at) if args.store_crash_at else None
    )
    guard = Guard(
        store,
        secret=SECRET,
        scope=SCOPE,
        lease=timedelta(seconds=args.lease),
        wait=timedelta(seconds=args.wait),
        resumable=args.resumable,
        faults=CrashAt(args.crash_at) if args.crash_at else None,
    )
    fn = provider(args.movements, args.sleep_in_fn)
    try:
        if args.rounds:
            for rnd in range(args.rounds):
                intent = intent_for(f"{args.reference}-{rnd}", args.amount)
                race(guard, intent, fn, args.threads, rnd)
        elif args.threads > 1:
            race(guard, intent_for(args.reference, args.amount), fn, args.threads, -1)
        else:
            call(guard, intent_for(args.reference, args.amount), fn)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

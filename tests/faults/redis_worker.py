"""A guard over ``RedisStore`` in a separate process, for the multi-process race on Redis.

Run from the repository root as ``python -m tests.faults.redis_worker --url URL --prefix P
--movements PATH --rounds N --threads T``. It behaves as ``tests.faults.worker`` (same intents,
same fake provider writing one line per movement, same ``{"ready": r}`` / stdin start signal and
JSON result lines), with the store on Redis instead of an SQLite file.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

from payonce import Guard
from payonce.stores._redis import RedisStore
from tests.faults import worker


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="redis:// or redis+cluster:// URL")
    parser.add_argument("--prefix", required=True, help="the store's key prefix")
    parser.add_argument("--movements", type=Path, required=True, help="the provider's ledger")
    parser.add_argument("--reference", default="order-1", help="the intents' reference stem")
    parser.add_argument("--lease", type=float, default=30.0, help="lease, seconds")
    parser.add_argument("--wait", type=float, default=10.0, help="duplicate wait, seconds")
    parser.add_argument("--threads", type=int, default=1, help="callers racing in this process")
    parser.add_argument("--sleep-in-fn", type=float, default=0.0, help="seconds inside the call")
    parser.add_argument("--rounds", type=int, default=1, help="races on fresh keys, stdin-started")
    worker.store_latency(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every round; returns the exit status."""
    args = _parse(argv)
    store = RedisStore(args.url, prefix=args.prefix)
    guard = Guard(
        worker.Slowed(store, args.store_latency) if args.store_latency else store,
        secret=worker.SECRET,
        scope=worker.SCOPE,
        lease=timedelta(seconds=args.lease),
        wait=timedelta(seconds=args.wait),
    )
    fn = worker.provider(args.movements, args.sleep_in_fn, announce=False)
    try:
        for rnd in range(args.rounds):
            worker.race(guard, worker.intent_for(f"{args.reference}-{rnd}"), fn, args.threads, rnd)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

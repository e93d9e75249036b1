"""A first demo (L5): agents paying through a flaky provider, without and with payonce.

Run with ``make demo`` or ``python -m payonce.demo [--agents N] [--seed S] [--db PATH]``.

The provider here is a tiny in-process stand-in with no idempotency of its own: every call it
receives moves money. Some answers are lost after the money moved (the agent sees a timeout) and
agents repeat tool calls. The same seeded workload runs twice: agents calling the provider
directly, then through a ``Guard`` on the embedded SQLite store. The figures printed are what the
provider recorded, not what the workload planned.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from payonce import (
    Attempt,
    Guard,
    InProgressError,
    Intent,
    OutcomeUnknownError,
    SQLiteStore,
    format_amount,
    verify_ledger,
)

__all__ = ["main"]

_DEMO_SECRET = b"payonce-demo-secret-not-for-production!"


class AnswerLostError(TimeoutError):
    """The provider moved the money but its answer never reached the agent."""


@dataclass
class Provider:
    """Records every movement; loses some answers after moving the money."""

    rng: random.Random
    loss_rate: float
    movements: list[tuple[str, int]] = field(default_factory=list)

    def charge(self, order: str, amount: int) -> dict[str, str]:
        self.movements.append((order, amount))
        charge_id = f"ch_{len(self.movements):06d}"
        if self.rng.random() < self.loss_rate:
            raise AnswerLostError(charge_id)
        return {"id": charge_id, "status": "succeeded"}


@dataclass(frozen=True)
class Order:
    reference: str
    customer: str
    amount: int
    repeats: int  # how many times the agent sends the same tool call


def _workload(agents: int, seed: int) -> list[Order]:
    rng = random.Random(seed)
    orders = []
    for agent in range(agents):
        for n in range(5):
            orders.append(
                Order(
                    reference=f"order-{agent:03d}-{n}",
                    customer=f"cus_demo{agent:03d}",
                    amount=rng.randrange(500, 20_000, 5),
                    repeats=1 + (rng.random() < 0.2),
                )
            )
    return orders


def _duplicates(movements: list[tuple[str, int]]) -> tuple[int, int]:
    seen: set[str] = set()
    count = amount = 0
    for order, value in movements:
        if order in seen:
            count, amount = count + 1, amount + value
        seen.add(order)
    return count, amount


def _run_unguarded(orders: list[Order], seed: int, loss_rate: float) -> Provider:
    provider = Provider(random.Random(seed), loss_rate)
    for order in orders:
        for _ in range(order.repeats):
            for _retry in range(3):  # the agent retries a timeout, as SDK callers do
                try:
                    provider.charge(order.reference, order.amount)
                    break
                except AnswerLostError:
                    continue
    return provider


def _run_guarded(
    orders: list[Order], seed: int, loss_rate: float, db: Path
) -> tuple[Provider, int, int]:
    provider = Provider(random.Random(seed), loss_rate)
    store = SQLiteStore(db)
    guard = Guard(store, secret=_DEMO_SECRET, scope="demo", wait=timedelta(0))
    replays = unknown = 0
    try:
        for order in orders:
            intent = Intent(
                "charge", order.amount, "usd", customer=order.customer, reference=order.reference
            )

            def call(_attempt: Attempt, order: Order = order) -> dict[str, str]:
                return provider.charge(order.reference, order.amount)

            for _ in range(order.repeats):
                for _retry in range(3):
                    try:
                        outcome = guard.run(intent, call)
                        replays += outcome.replayed
                        break
                    except OutcomeUnknownError:
                        unknown += _retry == 0
                        continue
                    except InProgressError:
                        continue
        verify_ledger(store)
    finally:
        store.close()
    return provider, replays, unknown


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print the comparison."""
    parser = argparse.ArgumentParser(prog="payonce-demo", description=__doc__)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--loss-rate", type=float, default=0.1)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: a temp dir)")
    args = parser.parse_args(argv)
    orders = _workload(args.agents, args.seed)
    direct = _run_unguarded(orders, args.seed, args.loss_rate)
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "payonce-demo.db"
        guarded, replays, unknown = _run_guarded(orders, args.seed, args.loss_rate, db)
    d_count, d_amount = _duplicates(direct.movements)
    g_count, g_amount = _duplicates(guarded.movements)
    rows = [
        ("orders", len(orders), len(orders)),
        ("provider movements", len(direct.movements), len(guarded.movements)),
        ("duplicate charges", d_count, g_count),
        ("duplicate amount", format_amount(d_amount, "usd"), format_amount(g_amount, "usd")),
        ("replays served", 0, replays),
        ("outcomes left unknown", "-", unknown),
    ]
    print(f"{args.agents} agents, seed {args.seed}, {args.loss_rate:.0%} of answers lost\n")
    print(f"{'':24}{'direct':>16}{'payonce':>16}")
    for name, left, right in rows:
        print(f"{name:24}{left!s:>16}{right!s:>16}")
    print(
        "\nUnknown outcomes are never retried blindly: payonce reports them and the Reconciler "
        "resolves them with the provider. The ledger verified."
    )
    return 0 if g_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

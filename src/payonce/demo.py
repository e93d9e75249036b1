"""A first demo (L5): agents paying through a flaky provider, without and with payonce.

Run with ``make demo`` or ``python -m payonce.demo [--agents N] [--seed S] [--loss-rate R]``.

The provider is ``SimulatedGateway`` with its own idempotency switched off: every call it gets
moves money. A share of its answers is lost after the money moved (the agent sees a timeout), and
agents repeat tool calls. The same seeded workload runs twice: agents calling the provider
directly with a fresh random idempotency key per call (what SDKs do by default), then through a
``Guard`` on the embedded SQLite store, followed by one Reconciler pass. The figures printed are
what the provider recorded, not what the workload planned.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from payonce import (
    Guard,
    InProgressError,
    Intent,
    OutcomeClass,
    OutcomeUnknownError,
    Reconciler,
    SQLiteStore,
    format_amount,
    verify_ledger,
)
from payonce.gateways.simulated import SimulatedGateway

__all__ = ["main"]

_DEMO_SECRET = b"payonce-demo-secret-not-for-production!"


@dataclass(frozen=True)
class Order:
    intent: Intent
    repeats: int  # how many times the agent sends the same tool call


def _workload(agents: int, seed: int) -> list[Order]:
    rng = random.Random(seed)
    return [
        Order(
            Intent(
                "charge",
                rng.randrange(500, 20_000, 5),
                "usd",
                customer=f"cus_demo{agent:03d}",
                payment_method="tok_visa",
                reference=f"order-{agent:03d}-{n}",
            ),
            repeats=1 + (rng.random() < 0.2),
        )
        for agent in range(agents)
        for n in range(5)
    ]


def _gateway(seed: int, loss_rate: float) -> SimulatedGateway:
    return SimulatedGateway(idempotent=False, seed=seed, rates={"after_send": loss_rate})


def _duplicates(gateway: SimulatedGateway) -> tuple[int, int]:
    """Charges beyond the first per order (per payonce_key), on the provider's own ledger."""
    seen: set[str] = set()
    count = amount = 0
    for movement in gateway.movements():
        if movement.payonce_key in seen:
            count, amount = count + 1, amount + movement.amount
        seen.add(movement.payonce_key)
    return count, amount


def _run_direct(orders: list[Order], seed: int, loss_rate: float) -> SimulatedGateway:
    gateway = _gateway(seed, loss_rate)
    for order in orders:
        for _ in range(order.repeats):
            for _retry in range(3):  # the agent retries a timeout with a fresh key, as SDKs do
                # The order's reference stands in for payonce_key so that duplicates can be
                # counted per order on the provider's ledger.
                result = gateway.execute(
                    order.intent,
                    f"sdk_{uuid.UUID(int=random.getrandbits(128))}",
                    key=order.intent.reference or "",
                )
                if result.kind is not OutcomeClass.UNKNOWN:
                    break
    return gateway


def _run_guarded(
    orders: list[Order], seed: int, loss_rate: float, db: Path
) -> tuple[SimulatedGateway, int, int, int]:
    gateway = _gateway(seed, loss_rate)
    store = SQLiteStore(db)
    guard = Guard(store, secret=_DEMO_SECRET, scope="demo", gateway=gateway)
    replays = unknown = 0
    try:
        for order in orders:
            for _ in range(order.repeats):
                for _retry in range(3):
                    try:
                        replays += guard.execute(order.intent).replayed
                        break
                    except OutcomeUnknownError:
                        unknown += _retry == 0
                    except InProgressError:
                        continue
        Reconciler(store, gateway).run_once(batch=len(orders))
        left = len(store.scan(now=guard.clock.now(), limit=len(orders)))
        verify_ledger(store)
    finally:
        store.close()
    return gateway, replays, unknown, left


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print the comparison."""
    parser = argparse.ArgumentParser(prog="payonce-demo", description=__doc__)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--loss-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    orders = _workload(args.agents, args.seed)
    direct = _run_direct(orders, args.seed, args.loss_rate)
    with tempfile.TemporaryDirectory() as tmp:
        guarded, replays, unknown, left = _run_guarded(
            orders, args.seed, args.loss_rate, Path(tmp) / "payonce-demo.db"
        )
    d_count, d_amount = _duplicates(direct)
    g_count, g_amount = _duplicates(guarded)
    rows = [
        ("orders", len(orders), len(orders)),
        ("provider movements", len(direct.movements()), len(guarded.movements())),
        ("duplicate charges", d_count, g_count),
        ("duplicate amount", format_amount(d_amount, "usd"), format_amount(g_amount, "usd")),
        ("replays served", 0, replays),
        ("answers lost (unknown)", "-", unknown),
        ("left unresolved", "-", left),
    ]
    print(f"{args.agents} agents, seed {args.seed}, {args.loss_rate:.0%} of answers lost\n")
    print(f"{'':24}{'direct':>16}{'payonce':>16}")
    for name, left_cell, right_cell in rows:
        print(f"{name:24}{left_cell!s:>16}{right_cell!s:>16}")
    print(
        "\nLost answers were never retried blindly: payonce found each charge at the provider "
        "by its payonce_key (or flagged it for review). The ledger verified."
    )
    return 0 if g_count == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""The demo's seeded workload: three everyday flows of agent-driven payments.

- marketplace checkout by an AI cart assistant: a customer's cart at a merchant, charged once;
  an item found out of stock afterwards is refunded;
- recurring billing renewals with proration: a customer's plan renewed for a period with its
  metered usage; a plan change mid-period adds a prorated charge (upgrade) or refunds the unused
  part (downgrade);
- wallet-to-wallet disbursements: a payer's wallet pays a recipient's wallet (a platform
  account, a bank account or a debit card).

Everything an agent will do is drawn here, from one seeded generator, before anything runs: the
two runs of the demo replay the same plan. Only the provider's answers differ between them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Final

from payonce import format_amount

__all__ = [
    "CURRENCY",
    "FLOWS",
    "Step",
    "Task",
    "Workload",
    "build_workload",
    "money",
]

#: The demo's one currency, so that amounts add up across flows.
CURRENCY: Final = "usd"


def money(amount: int) -> str:
    """Minor units of ``CURRENCY`` for people, digits grouped: ``6,834.15 USD``."""
    number, code = format_amount(amount, CURRENCY).split(" ")
    whole, dot, fraction = number.partition(".")
    return f"{int(whole):,}{dot}{fraction} {code}"


#: The flows, in the order the report shows them.
FLOWS: Final = ("checkout", "renewals", "disbursements")
#: Tasks each agent takes up, one after another.
TASKS_PER_AGENT: Final = 4

_MERCHANTS: Final = ("northwind-outfitters", "blue-lantern-books", "cedar-and-pine", "volt-audio")
_CATALOG: Final = (
    ("sku-tee", "organic tee", 2400),
    ("sku-mug", "enamel mug", 1800),
    ("sku-lamp", "desk lamp", 5900),
    ("sku-book", "field guide", 3200),
    ("sku-cable", "braided cable", 1200),
    ("sku-phones", "studio headphones", 12900),
)
_PLANS: Final = {"basic": 900, "pro": 2900, "team": 7900}
_USAGE_PRICE: Final = 4  # cents per metered unit
_PERIOD_DAYS: Final = 30
_WALLETS: Final = (
    ("platform wallet", "transfer", "acct_"),
    ("bank account", "payout", "ba_"),
    ("debit card", "payout", "card_"),
)


@dataclass(frozen=True, slots=True)
class Step:
    """One money movement a task asks for, and how the agent behaves around its tool call.

    Attributes:
        name: what the step is for (``charge``, ``out_of_stock_refund``, ``proration_charge``,
            ``proration_refund``, ``disbursement``).
        operation: the payonce operation (``charge``, ``refund``, ``transfer``, ``payout``).
        amount: minor units of ``CURRENCY``.
        reference: the business reference (order, period, batch): the key material.
        sequence: 0, or 1 for the second, legitimate movement of the same reference.
        refunds_step: for a refund, the index of the step whose charge it refunds.
        destination: where a disbursement goes.
        repeats: how many times the agent, looping, sends this very tool call again.
        think: the agent's pauses between tries of this tool call (one per try).
    """

    name: str
    operation: str
    amount: int
    reference: str
    sequence: int = 0
    refunds_step: int | None = None
    destination: str | None = None
    repeats: int = 0
    think: tuple[timedelta, ...] = ()

    @property
    def intent_id(self) -> str:
        """The business identity of this movement: what duplicates are counted by."""
        return f"{self.reference}#{self.operation}#{self.sequence}"


@dataclass(frozen=True, slots=True)
class Task:
    """One order, renewal or disbursement, handled by one agent (and maybe a second one).

    Attributes:
        flow: one of ``FLOWS``.
        agent: the agent's number.
        start: when, after the demo starts, the agent takes the task up.
        customer: the provider's customer id (the buyer, subscriber or payer).
        payment_method: how the customer pays (a declining card for some).
        steps: the movements, in order.
        expected: what the business should collect (positive) or pay out (disbursements) in
            the end, net of refunds, if the provider does not decline.
        details: what the flow is about, for people (merchant, cart, plan, wallet ...).
        twin: the number of a second agent that handles the same task at the same moment.
        crash_after: the worker dies right after the provider answered this step's first call,
            before it recorded the answer (None: no crash).
        restart_after: how long the worker's supervisor takes to start the task again (None:
            the task died with the worker; only a Reconciler can tell what became of it).
    """

    flow: str
    agent: int
    start: timedelta
    customer: str
    payment_method: str
    steps: tuple[Step, ...]
    expected: int
    details: dict[str, str] = field(default_factory=dict)
    twin: int | None = None
    crash_after: int | None = None
    restart_after: timedelta | None = timedelta(seconds=10)

    @property
    def name(self) -> str:
        """The task's business reference (its first step's)."""
        return self.steps[0].reference


@dataclass(frozen=True, slots=True)
class Workload:
    """Every task of every agent, in the order the agents take them up."""

    agents: int
    seed: int
    tasks: tuple[Task, ...]

    def steps(self) -> list[tuple[Task, Step]]:
        """Every planned step with its task."""
        return [(task, step) for task in self.tasks for step in task.steps]


class _Draw:
    """The workload's one seeded generator, with the few shapes of draw it needs."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"payonce-demo-workload:{seed}")

    def chance(self, p: float) -> bool:
        return self._rng.random() < p

    def pick(self, items: tuple[str, ...]) -> str:
        return self._rng.choice(items)

    def between(self, low: float, high: float) -> timedelta:
        return timedelta(milliseconds=round(self._rng.uniform(low, high) * 1000))

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def ident(self, prefix: str) -> str:
        return prefix + "".join(self._rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=14))

    def behaviour(self) -> tuple[int, tuple[timedelta, ...]]:
        """How often a looping agent repeats a tool call, and its pauses between tries."""
        repeats = 1 if self.chance(0.18) else 0
        repeats += 1 if repeats and self.chance(0.3) else 0
        return repeats, tuple(self.between(2.0, 7.0) for _ in range(6))


def _checkout(draw: _Draw, agent: int, number: int) -> Task:
    order = f"order-{agent:03d}-{number}"
    items = [draw.pick(tuple(str(i) for i in range(len(_CATALOG)))) for _ in range(4)]
    cart: dict[str, int] = {}
    for index in items[: draw.integer(1, 4)]:
        cart[index] = cart.get(index, 0) + 1
    lines = [(_CATALOG[int(i)], qty) for i, qty in sorted(cart.items())]
    total = sum(price * qty for (_, _, price), qty in lines)
    repeats, think = draw.behaviour()
    steps = [Step("charge", "charge", total, order, repeats=repeats, think=think)]
    expected = total
    if len(lines) > 1 and draw.chance(0.3):
        (sku, _, price), _qty = lines[-1]
        repeats, think = draw.behaviour()
        steps.append(
            Step(
                "out_of_stock_refund",
                "refund",
                price,
                f"{order}:refund:{sku}",
                refunds_step=0,
                repeats=repeats,
                think=think,
            )
        )
        expected -= price
    details = {
        "merchant": draw.pick(_MERCHANTS),
        "cart": ", ".join(f"{qty}x {name}" for (_, name, _), qty in lines),
        "total": str(total),
    }
    return _task(
        draw,
        "checkout",
        agent=agent,
        number=number,
        steps=tuple(steps),
        expected=expected,
        details=details,
    )


def _renewal(draw: _Draw, agent: int, number: int) -> Task:
    plan = draw.pick(tuple(_PLANS))
    period = f"2026-{number + 1:02d}"
    subscription = f"sub-{agent:03d}"
    reference = f"{subscription}:{period}"
    usage = draw.integer(0, 400)
    due = _PLANS[plan] + usage * _USAGE_PRICE
    repeats, think = draw.behaviour()
    steps = [Step("charge", "charge", due, reference, repeats=repeats, think=think)]
    expected, details = due, {"plan": plan, "period": period, "usage": f"{usage} units"}
    if draw.chance(0.4):
        new_plan = draw.pick(tuple(p for p in _PLANS if p != plan))
        day = draw.integer(5, 25)
        # Proration: the new plan's price for the days left, less the old plan's.
        delta = (_PLANS[new_plan] - _PLANS[plan]) * (_PERIOD_DAYS - day) // _PERIOD_DAYS
        repeats, think = draw.behaviour()
        if delta > 0:
            step = Step(
                "proration_charge",
                "charge",
                delta,
                reference,
                sequence=1,
                repeats=repeats,
                think=think,
            )
        else:
            step = Step(
                "proration_refund",
                "refund",
                -delta,
                f"{reference}:proration",
                refunds_step=0,
                repeats=repeats,
                think=think,
            )
        steps.append(step)
        expected += delta
        details["plan change"] = f"{plan} -> {new_plan} on day {day}"
    return _task(
        draw,
        "renewals",
        agent=agent,
        number=number,
        steps=tuple(steps),
        expected=expected,
        details=details,
    )


def _disbursement(draw: _Draw, agent: int, number: int) -> Task:
    wallet, operation, prefix = _WALLETS[draw.integer(0, len(_WALLETS) - 1)]
    amount = draw.integer(20, 900) * 100
    batch = f"payout-{agent:03d}-{number}"
    repeats, think = draw.behaviour()
    step = Step(
        "disbursement",
        operation,
        amount,
        batch,
        destination=draw.ident(prefix),
        repeats=repeats,
        think=think,
    )
    details = {"payer": f"wallet-{agent:03d}", "wallet type": wallet}
    return _task(
        draw,
        "disbursements",
        agent=agent,
        number=number,
        steps=(step,),
        expected=amount,
        details=details,
    )


def _task(
    draw: _Draw,
    flow: str,
    *,
    agent: int,
    number: int,
    steps: tuple[Step, ...],
    expected: int,
    details: dict[str, str],
) -> Task:
    start = draw.between(0.0, 20.0) + timedelta(seconds=45 * number)
    declining = draw.chance(0.04) and flow != "disbursements"
    return Task(
        flow=flow,
        agent=agent,
        start=start,
        customer=draw.ident("cus_"),
        payment_method="tok_chargeDeclined" if declining else "tok_visa",
        steps=steps,
        expected=expected,
        details=details,
        twin=None,
        crash_after=0 if draw.chance(0.08) else None,
        restart_after=draw.between(4.0, 40.0) if draw.chance(0.5) else None,
    )


def build_workload(agents: int, seed: int) -> Workload:
    """The tasks of ``agents`` agents, drawn from ``seed``: agent ``n`` works the flow
    ``FLOWS[n % 3]``; a few tasks are also picked up by a second agent at the same moment."""
    draw = _Draw(seed)
    builders = (_checkout, _renewal, _disbursement)
    tasks: list[Task] = []
    for agent in range(agents):
        for number in range(TASKS_PER_AGENT):
            task = builders[agent % len(builders)](draw, agent, number)
            if agents > 1 and draw.chance(0.1):
                twin = (agent + draw.integer(1, agents - 1)) % agents
                task = replace(task, twin=twin)
            tasks.append(task)
    tasks.sort(key=lambda t: (t.start, t.agent))
    return Workload(agents=agents, seed=seed, tasks=tuple(tasks))

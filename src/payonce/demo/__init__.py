"""The payonce demo: AI agents moving money through a flaky provider, without and with payonce.

Run it with ``make demo``, ``python -m payonce.demo [--agents N] [--seed S] [--report PATH]
[--json]`` or ``payonce demo``; from code::

    from payonce.demo import print_summary, run_demo

    result = run_demo(agents=40, seed=7)
    print_summary(result)
    assert result.ok

A fleet of agents works three flows (marketplace checkout, subscription renewals with
proration, wallet disbursements) against ``SimulatedGateway`` with its own idempotency off and
a bad day of faults: lost answers after the charge, 500s, 429s, refused connections, slow calls
past the lease, declines. Agents loop and repeat tool calls, two agents sometimes handle one
order at once, workers die mid-call. The same seeded workload runs twice: straight at the
provider with a fresh random key per call (what SDKs do by default), then through
``guard.execute`` on an SQLite store with a Reconciler. Every figure is read from what the
provider recorded. ``docs/demo.md`` explains each of them.

Rich draws the progress bar and the tables (``pip install 'payonce[cli]'``).
"""

from payonce.demo._console import print_summary
from payonce.demo._entry import main, run_demo
from payonce.demo._result import DemoResult

__all__ = ["DemoResult", "main", "print_summary", "run_demo"]

"""``payonce demo``: agents moving money through a flaky provider, without and with payonce."""

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from payonce.cli._common import EXIT_OK, EXIT_PROBLEM, JsonOption, Out, handled

__all__ = ["demo"]


def demo(
    agents: Annotated[
        int, typer.Option("--agents", min=1, help="How many simulated agents work at once.")
    ] = 40,
    seed: Annotated[int, typer.Option("--seed", help="The same seed gives the same run.")] = 7,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="PATH",
            dir_okay=False,
            help="Where to write the HTML report (default: a file in the working directory).",
        ),
    ] = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store",
            metavar="URL",
            help="The store of the guarded run. Default: a fresh temporary SQLite store. "
            "PAYONCE_STORE is deliberately not read: a demo never writes to a real store by "
            "accident.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the same seeded workload of agents twice, calling a flaky provider directly and
    then through payonce, and compare duplicate charges, unknown outcomes and the business
    figures. Writes an HTML report. Exit 1 if payonce's run failed its checks."""
    out = Out(as_json)
    with handled(out):
        # Loaded on use: the demo is the heaviest module and no other command needs it.
        from payonce.demo import print_summary, run_demo  # noqa: PLC0415

        console = Console(stderr=as_json, highlight=False)
        demo_run = run_demo(
            agents=agents,
            seed=seed,
            report=report,
            store_url=store_url,
            console=console,
            progress=not as_json,
        )
    if as_json:
        out.emit(demo_run.to_json())
    else:
        print_summary(demo_run, Console(highlight=False))  # the demo's own markup
    raise typer.Exit(EXIT_OK if demo_run.ok else EXIT_PROBLEM)

"""The ``payonce`` command: one Typer app, a module per command group."""

import logging
from typing import Annotated

import typer

from payonce.cli._demo import demo
from payonce.cli._keys import keys_app
from payonce.cli._ledger import ledger_app
from payonce.cli._migrate import migrate
from payonce.cli._purge import purge
from payonce.cli._reconcile import reconcile
from payonce.cli._show import show

__all__ = ["app"]

_EPILOG = (
    "Exit codes: 0 ok; 1 a problem was found (ledger tampered, records unresolved, demo checks "
    "failed); 2 usage or input error; 3 store unavailable. Every command takes --store URL "
    "(default sqlite:///payonce.db, or the environment variable PAYONCE_STORE) and --json."
)

app = typer.Typer(
    name="payonce",
    help="payonce: money-moving calls that happen once. Inspect and repair a deployment's "
    "store, ledger and keys, or run the demo.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        from payonce import __version__  # noqa: PLC0415

        typer.echo(f"payonce {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """payonce: money-moving calls that happen once."""
    # The PostgreSQL pool warns once per failed connection attempt while the store waits for
    # the server; the store's error says it once, at the end, on the one line the CLI promises.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


app.command("demo")(demo)
app.command("show")(show)
app.add_typer(ledger_app, name="ledger")
app.command("reconcile")(reconcile)
app.command("purge")(purge)
app.add_typer(keys_app, name="keys")
app.command("migrate")(migrate)

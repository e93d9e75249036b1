"""The ``payonce`` command line (L5; the ``cli`` extra: Typer and Rich).

``payonce.cli.app`` is the Typer app; ``main()`` is the console script. Typer and Rich are loaded
on first use, so that a missing extra gives an install hint instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from payonce.cli._app import app

__all__ = ["app", "main"]

_EXTRA = ("typer", "rich", "click")


def main() -> None:
    """Run the ``payonce`` command line (exits with the command's exit code)."""
    try:
        from payonce.cli._app import app  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] in _EXTRA:
            sys.stderr.write(
                f"error: the payonce command line needs its extra: pip install 'payonce[cli]' "
                f"({exc.name} is missing)\n"
            )
            sys.exit(2)
        raise
    app(prog_name="payonce")


def __getattr__(name: str) -> Any:
    if name == "app":
        from payonce.cli._app import app  # noqa: PLC0415

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

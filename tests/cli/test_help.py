"""``payonce --help``, each group's ``--help``, README.md and docs/cli.md name the same commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import REPO, Cli, run_cli

_PANEL_ROW = re.compile(r"^[│|] ([a-z][a-z-]*)\s{2,}\S")


def _commands(cli: Cli, *group: str) -> list[str]:
    """The command names in the Commands panel of ``payonce [GROUP] --help``."""
    done = cli(*group, "--help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "Commands" in line)
    names = []
    for line in lines[start + 1 :]:
        if line.startswith(("╰", "+")):
            break
        found = _PANEL_ROW.match(line)
        if found:
            names.append(found.group(1))
    return names


def _all_commands(cli: Cli) -> set[str]:
    out = set()
    for name in _commands(cli):
        probe = cli(name, "--help")
        assert probe.returncode == 0, (name, probe.stderr)
        if "Commands" in probe.stdout:
            out.update(f"{name} {sub}" for sub in _commands(cli, name))
        else:
            out.add(name)
    return out


def _named(text: str) -> set[str]:
    """Commands named as `payonce word word …` (lowercase words up to the first argument)."""
    found = set()
    for match in re.finditer(r"`payonce ((?:[a-z]+ ?)+)", text):
        found.add(match.group(1).strip())
    return found


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.fixture(scope="module")
def commands(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every command path the help lists, e.g. ``ledger verify``, asked once per module."""
    cwd = tmp_path_factory.mktemp("help")
    return _all_commands(lambda *args, **kw: run_cli(*args, cwd=cwd, **kw))


def test_help_lists_the_expected_commands(commands: set[str]) -> None:
    assert commands == {
        "demo", "show", "ledger verify", "ledger seal", "ledger tail", "ledger export",
        "reconcile", "purge", "keys derive", "migrate",
    }  # fmt: skip


def test_readme_cli_section_and_help_agree(commands: set[str]) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = _section(readme, "Command line")
    rows = {
        m.group(1).strip()
        for m in re.finditer(r"^\| `payonce ((?:[a-z]+ ?)+)", section, re.MULTILINE)
    }
    assert rows == commands
    assert _named(section) <= rows  # the examples name no command that does not exist


def test_docs_cli_reference_and_help_agree(commands: set[str]) -> None:
    docs = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## `payonce ([a-z ]+?)(?: [A-Z].*)?`$", docs, re.MULTILINE))
    assert headings == commands


def test_every_command_has_help(cli: Cli, commands: set[str]) -> None:
    for command in sorted(commands):
        done = cli(*command.split(), "--help")
        assert done.returncode == 0, (command, done.stderr)
        assert f"Usage: payonce {command}" in done.stdout
        assert "--help" in done.stdout
        assert "--store" in done.stdout, command
        assert "--json" in done.stdout, command


def test_no_arguments_prints_help_and_the_exit_codes(cli: Cli) -> None:
    done = cli()
    assert "Usage: payonce" in done.stdout + done.stderr
    assert "Exit codes: 0 ok; 1 a problem was found" in done.stdout + done.stderr
    assert "Exit codes: 0 ok; 1 a problem was found" in cli("--help").stdout


def test_version(cli: Cli) -> None:
    from payonce import __version__  # noqa: PLC0415

    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"payonce {__version__}"


def test_without_the_cli_extra_the_script_names_it(tmp_path: Path) -> None:
    # As on an install without payonce[cli]: importing typer fails.
    code = "import sys; sys.modules['typer'] = None; from payonce.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "pip install 'payonce[cli]'" in done.stderr
    assert "Traceback" not in done.stderr

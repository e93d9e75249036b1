"""``payonce demo``: the demo package behind the command line, run as a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import Cli, Seeded, json_out


def _ledger(seeded: Seeded) -> list[str]:
    store = seeded.open()
    try:
        return [e.hash for e in store.entries(after=0, limit=10_000)]
    finally:
        store.close()


def test_demo_json_prints_only_the_figures(cli: Cli, tmp_path: Path) -> None:
    report = tmp_path / "out" / "demo.html"
    report.parent.mkdir()
    done = cli("demo", "--agents", "6", "--seed", "3", "--report", str(report), "--json")
    assert done.returncode == 0, done.stderr
    figures = json_out(done)  # stdout is exactly one JSON document: no progress bar in it
    assert figures["ok"] is True
    assert figures["agents"] == 6
    assert figures["seed"] == 3
    assert figures["payonce"]["duplicate_charges"] == 0
    assert figures["payonce"]["unresolved_unknown"] == 0
    assert "duplicate_charges" in figures["unguarded"]
    assert figures["ledger_verified"] is True
    assert Path(figures["report"]).resolve() == report.resolve()
    assert report.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


def test_demo_prints_the_table_and_the_report_path(cli: Cli, tmp_path: Path) -> None:
    done = cli("demo", "--agents", "4", "--seed", "5")
    assert done.returncode == 0, done.stderr
    assert "without payonce" in done.stdout
    assert "with payonce" in done.stdout
    assert "duplicate charges" in done.stdout
    assert "ledger verified" in done.stdout
    written = sorted(tmp_path.glob("*.html"))  # by default, in the working directory
    assert len(written) == 1
    assert f"report: {written[0].resolve()}" in done.stdout


def test_demo_ignores_payonce_store_and_refuses_a_used_store(known: Seeded, cli: Cli) -> None:
    # PAYONCE_STORE names a real, non-empty store: the demo must not touch it.
    before = _ledger(known)
    by_env = cli("demo", "--agents", "2", "--json", env={"PAYONCE_STORE": known.url})
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout)["store"] != known.url
    assert _ledger(known) == before
    explicit = cli("demo", "--agents", "2", "--store", known.url)
    assert explicit.returncode == 2
    assert "needs an empty store" in explicit.stderr
    assert "Traceback" not in explicit.stderr


def test_demo_on_an_empty_store_url(cli: Cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = json_out(cli("demo", "--agents", "3", "--store", url, "--json"))
    assert done["ok"] is True
    verified = json_out(cli("ledger", "verify", "--store", url, "--json"))
    assert verified["entries"] == done["ledger"]["entries"]


def test_demo_rejects_bad_options(cli: Cli) -> None:
    done = cli("demo", "--agents", "0")
    assert done.returncode == 2
    assert "--agents" in done.stderr

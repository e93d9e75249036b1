"""The demo end to end: duplicates only without payonce, every unknown outcome resolved, the
ledger verified, the same counts for the same seed, and clear errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from payonce import ConfigurationError, Guard, Intent, SQLiteStore, verify_ledger
from payonce.demo import DemoResult, main, run_demo
from payonce.gateways.simulated import SimulatedGateway

# Measured in real time: they vary from run to run, everything else must not.
VOLATILE = ("latency_added_ms", "elapsed_s", "report")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    report = tmp_path_factory.mktemp("demo") / "report.html"
    return run_demo(report=report, progress=False)


def _stable(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _stable(v) for k, v in data.items() if k not in VOLATILE}
    if isinstance(data, list):
        return [_stable(v) for v in data]
    return data


def test_the_default_demo_shows_duplicates_only_without_payonce(default_run: DemoResult) -> None:
    unguarded, guarded = default_run.unguarded, default_run.payonce
    assert default_run.agents == 40
    assert unguarded.duplicate_charges > 0
    assert unguarded.duplicate_amount > 0
    assert guarded.duplicate_charges == guarded.duplicate_payouts == guarded.wrong_refunds == 0
    assert guarded.unknown_outcomes > 0  # the faults did hit the payonce run
    assert guarded.unresolved_unknown == 0
    assert guarded.resolved_by_lookup is not None
    assert guarded.resolved_by_reconciler is not None
    assert guarded.resolved_by_lookup + guarded.resolved_by_reconciler == guarded.unknown_outcomes
    assert guarded.replays_served > 0
    assert default_run.ledger_verified
    assert default_run.ok
    assert default_run.elapsed_s < 60


def test_json_has_the_documented_shape_and_round_trips(default_run: DemoResult) -> None:
    data = json.loads(json.dumps(default_run.to_json()))
    assert data["unguarded"]["duplicate_charges"] == default_run.unguarded.duplicate_charges
    assert data["unguarded"]["duplicate_amount"] == default_run.unguarded.duplicate_amount
    assert data["payonce"]["duplicate_charges"] == 0
    assert data["payonce"]["unresolved_unknown"] == 0
    assert data["ledger_verified"] is True
    assert data["ok"] is True
    assert data["report"] == str(default_run.report_path)
    assert Path(data["report"]).is_file()
    assert set(data["kpis"]) == {"checkout", "renewals", "disbursements"}
    for runs in data["kpis"].values():
        assert set(runs) == {"unguarded", "payonce"}
    lat = data["payonce"]["latency_added_ms"]
    assert 0 < lat["p50"] <= lat["p99"]
    assert data["unguarded"]["latency_added_ms"] is None


def test_the_same_seed_gives_the_same_counts(default_run: DemoResult, tmp_path: Path) -> None:
    again = run_demo(report=tmp_path / "again.html", progress=False)
    assert _stable(again.to_json()) == _stable(default_run.to_json())
    other = run_demo(seed=8, report=tmp_path / "other.html", progress=False)
    assert _stable(other.to_json()) != _stable(default_run.to_json())
    assert other.ok


@pytest.mark.parametrize(("agents", "seed"), [(1, 1), (5, 0), (17, 99)])
def test_small_fleets_keep_the_promise(agents: int, seed: int, tmp_path: Path) -> None:
    result = run_demo(agents=agents, seed=seed, report=tmp_path / "r.html", progress=False)
    assert result.ok, result.to_json()["payonce"]
    assert result.payonce.intents == result.unguarded.intents


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"agents": 0}, "agents must be a whole number from 1 to 1000"),
        ({"agents": 1001}, "agents must be a whole number from 1 to 1000"),
        ({"agents": True}, "agents must be a whole number"),
        ({"agents": "40"}, "agents must be a whole number"),
        ({"seed": -1}, "seed must be a whole number"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"report": Path("/nonexistent-dir/r.html")}, "directory does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    kwargs: dict[str, Any], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=words):
        run_demo(progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []  # no report written


def test_a_report_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory; pass a file path"):
        run_demo(report=tmp_path, progress=False)


def test_the_demo_refuses_a_store_that_holds_records(tmp_path: Path) -> None:
    path = tmp_path / "used.db"
    store = SQLiteStore(path)
    guard = Guard(
        store,
        secret=b"an-earlier-demo-secret-0123456789ab",
        scope="demo",
        gateway=SimulatedGateway(),
    )
    guard.execute(Intent("charge", 1000, "usd", customer="cus_1", reference="order-000-0"))
    before = verify_ledger(store).entries
    store.close()
    with pytest.raises(ConfigurationError, match="needs an empty store"):
        run_demo(store_url=f"sqlite:///{path}", report=tmp_path / "r.html", progress=False)
    reopened = SQLiteStore(path)
    assert verify_ledger(reopened).entries == before  # nothing was added
    reopened.close()


def test_a_given_store_keeps_the_payonce_run_for_inspection(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    result = run_demo(
        agents=6, store_url=f"sqlite:///{path}", report=tmp_path / "r.html", progress=False
    )
    assert result.store == f"sqlite:///{path}"
    store = SQLiteStore(path)
    assert verify_ledger(store).entries == result.ledger_entries > 0
    store.close()


def test_a_store_password_never_reaches_the_output() -> None:
    from payonce.demo._entry import _describe  # noqa: PLC0415

    masked = _describe("postgresql://payonce:s3cret@db.internal:5432/payments")
    assert masked == "postgresql://payonce:***@db.internal:5432/payments"
    assert _describe("sqlite:///demo.db") == "sqlite:///demo.db"
    # In the query string too (before, these were printed as given).
    assert _describe("postgresql://payonce@db/pay?password=s3cret&sslmode=require") == (
        "postgresql://payonce@db/pay?password=***&sslmode=require"
    )
    assert _describe("redis://db:6379/0?prefix=shop&PassWord=s3cret") == (
        "redis://db:6379/0?prefix=shop&PassWord=***"
    )
    assert "s3cret" not in _describe("postgresql://payonce:s3?cret@db/pay")
    assert "s3cret" not in _describe("redis://:s3cret@db:6379/0#s3cret")


def test_main_prints_json_alone_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--agents", "9", "--seed", "4", "--report", str(tmp_path / "r.html"), "--json"])
    out = capsys.readouterr().out
    data = json.loads(out)
    assert code == (0 if data["ok"] else 1) == 0
    assert data["agents"] == 9
    assert data["report"] == str((tmp_path / "r.html").resolve())


def test_main_prints_the_table_and_the_report_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.html"
    assert main(["--agents", "6", "--report", str(report), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for words in ("duplicate charges", "never resolved", "renewal accuracy", "ledger verified"):
        assert words in out
    assert str(report.resolve()) in out.replace("\n", "")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--agents", "0"], "--agents takes a whole number from 1 to 1000"),
        (["--agents", "many"], "--agents takes a whole number from 1 to 1000"),
        (["--seed", "-3"], "--seed takes a whole number from 0 to"),
        (["--report", "/nonexistent-dir/r.html"], "directory does not exist"),
        (["--store", "ftp://nowhere"], "unknown store URL scheme"),
    ],
)
def test_main_exits_2_with_what_to_pass(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--no-progress"]) == 2
    assert words in capsys.readouterr().err


def test_main_says_how_to_install_rich_when_it_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "rich.console", None)  # makes the import fail
    assert main(["--agents", "3", "--no-progress"]) == 2
    assert "pip install 'payonce[cli]'" in capsys.readouterr().err


def test_the_demo_changes_nothing_in_a_store_it_refuses(tmp_path: Path) -> None:
    # A PostgreSQL store one migration behind: the demo opened it with create=True, which
    # migrated it, and only then looked whether it was empty.
    import psycopg  # noqa: PLC0415

    from payonce.stores._postgres_schema import (  # noqa: PLC0415
        MIGRATION_TABLE,
        MIGRATIONS,
        RECORD_MIGRATION,
    )
    from tests.faults import pg_worker  # noqa: PLC0415

    name, conninfo = pg_worker.create_database()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(MIGRATION_TABLE)
            conn.execute(MIGRATIONS[0][1])
            conn.execute(RECORD_MIGRATION, (1,))
        with pytest.raises(ConfigurationError, match="payonce migrate"):
            run_demo(
                store_url=f"postgresql://postgres@127.0.0.1:5432/{name}",
                report=tmp_path / "r.html",
                progress=False,
            )
        with psycopg.connect(conninfo) as conn:
            versions = conn.execute("SELECT version FROM payonce_migrations").fetchall()
        assert versions == [(1,)]
    finally:
        pg_worker.drop_database(name)

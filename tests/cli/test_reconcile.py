"""``payonce reconcile``: one pass or a loop until a signal, against the simulated provider and
the Stripe-compatible server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import redis

from payonce import Intent, Status
from tests.cli.conftest import Cli, Seeded, cli_env, json_out
from tests.redis_cluster import redis_server
from tests.stripe_server import StripeMock

API_KEY = "sk_test_payonceCliReconcile5e1c9d2a7b"  # the secret scan looks for sk_test_ keys


def _unknowns(seeded: Seeded, *, old: bool = False) -> None:
    """Two lost answers an hour ago (a card that pays, one that declines); with ``old``, also
    one lost two days ago, outside the provider's 24 h idempotency window."""
    hour = timedelta(hours=1)
    seeded.add("visa", Intent("charge", 1500, "usd", payment_method="tok_visa", reference="r-v"),
               age=hour, outcome="unknown")  # fmt: skip
    seeded.add(
        "declined",
        Intent("charge", 800, "usd", payment_method="tok_chargeDeclined", reference="r-d"),
        age=hour,
        outcome="unknown",
    )
    if old:
        seeded.add("stale", Intent("charge", 600, "usd", payment_method="tok_visa",
                   reference="r-s"), age=timedelta(days=2), outcome="unknown")  # fmt: skip


def _statuses(seeded: Seeded) -> dict[str, Status | None]:
    store = seeded.open()
    try:
        out = {}
        for name, key in seeded.keys.items():
            record = store.get(seeded.scopes[name], key)
            out[name] = None if record is None else record.status
    finally:
        store.close()
    return out


def test_once_with_the_simulated_provider_resolves_and_exits_0(seeded: Seeded, cli: Cli) -> None:
    _unknowns(seeded)
    done = cli("reconcile", "--once", "--gateway", "simulated", "--store", seeded.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded (found at the provider or resent)" in done.stdout
    assert _statuses(seeded) == {"visa": Status.SUCCEEDED, "declined": Status.FAILED}


def test_once_reports_counts_per_resolution_and_exits_1_when_left_for_review(
    seeded: Seeded, cli: Cli
) -> None:
    _unknowns(seeded, old=True)
    done = cli("reconcile", "--once", "--gateway", "simulated", "--store", seeded.url, "--json")
    assert done.returncode == 1
    report = json_out(done)
    assert report["scanned"] == 3
    assert report["succeeded"] == 1
    assert report["failed"] == 1
    assert report["resent"] == 2  # inside the window: the same provider key again
    assert report["flagged"] == 1  # outside it: never resent blindly
    assert list(report["reasons"]) == [seeded.keys["stale"]]
    assert report["still_due"] == 1
    assert _statuses(seeded)["stale"] is Status.UNKNOWN
    table = cli("reconcile", "--once", "--gateway", "simulated", "--store", seeded.url)
    assert table.returncode == 1
    assert "skipped (held elsewhere, or flagged recently)" in table.stdout
    assert "1 record(s) still need recovery" in table.stdout


def test_batch_limits_a_pass(seeded: Seeded, cli: Cli) -> None:
    _unknowns(seeded)
    done = cli("reconcile", "--once", "--batch", "1", "--gateway", "simulated", "--store",
               seeded.url, "--json")  # fmt: skip
    report = json_out(done)
    assert report["scanned"] == 1
    assert report["still_due"] == 1
    assert report["still_due_capped"] is True
    assert done.returncode == 1


def test_once_against_the_stripe_compatible_server(
    seeded: Seeded, cli: Cli, stripe_server: StripeMock
) -> None:
    _unknowns(seeded)
    done = cli(
        "reconcile", "--once", "--gateway", "stripe", "--stripe-api-base", stripe_server.url,
        "--store", seeded.url, "--json", env={"STRIPE_API_KEY": API_KEY},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json_out(done)
    assert (report["succeeded"], report["failed"], report["flagged"]) == (1, 1, 0)
    assert API_KEY not in done.stdout + done.stderr
    assert _statuses(seeded) == {"visa": Status.SUCCEEDED, "declined": Status.FAILED}
    store = seeded.open()
    try:
        paid = store.get("tenant-a", seeded.keys["visa"])
    finally:
        store.close()
    assert paid is not None
    assert paid.outcome is not None
    assert json.loads(paid.outcome)["value"]["id"].startswith("ch_")


def test_stripe_needs_the_key_in_the_environment(seeded: Seeded, cli: Cli) -> None:
    _unknowns(seeded)
    done = cli("reconcile", "--once", "--store", seeded.url)
    assert done.returncode == 2
    assert "STRIPE_API_KEY" in done.stderr
    assert _statuses(seeded) == {"visa": Status.UNKNOWN, "declined": Status.UNKNOWN}
    help_text = cli("reconcile", "--help").stdout
    assert "--api-key" not in help_text
    assert "STRIPE_API_KEY" in help_text


def test_stripe_api_base_is_for_stripe_only(seeded: Seeded, cli: Cli) -> None:
    _unknowns(seeded)
    done = cli("reconcile", "--once", "--gateway", "simulated", "--stripe-api-base",
               "http://127.0.0.1:9", "--store", seeded.url)  # fmt: skip
    assert done.returncode == 2
    assert "--gateway stripe only" in done.stderr


def _loop(seeded: Seeded, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "payonce", "reconcile", "--gateway", "simulated", "--store",
         seeded.url, *extra],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )  # fmt: skip


def _stop_after_first_pass(proc: subprocess.Popen[str], signum: int) -> tuple[list[str], str]:
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:  # blocks until the loop prints; no timing involved
        seen.append(line)
        if line.startswith(("pass 1:", '{"pass": 1')):
            break
    proc.send_signal(signum)
    proc.wait(timeout=60)
    # Read through the same buffered file the lines above came from: communicate() would read
    # the pipe underneath it and miss what the buffer already holds.
    rest = proc.stdout.read()
    assert proc.stderr is not None
    return [*seen, *rest.splitlines(keepends=True)], proc.stderr.read()


def test_loop_runs_until_sigint_then_prints_totals(
    seeded: Seeded, cli: Cli, tmp_path: Path
) -> None:
    _unknowns(seeded)
    with _loop(seeded, tmp_path) as proc:
        lines, err = _stop_after_first_pass(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    text = "".join(lines)
    assert "Ctrl-C stops" in text
    assert "pass 1: scanned 2, succeeded 1, failed 1" in text
    assert "Reconcile:" in text  # the totals
    assert "Traceback" not in err
    assert _statuses(seeded) == {"visa": Status.SUCCEEDED, "declined": Status.FAILED}


def test_loop_stops_on_sigterm_with_json_lines(seeded: Seeded, tmp_path: Path) -> None:
    _unknowns(seeded)
    with _loop(seeded, tmp_path, "--json") as proc:
        lines, err = _stop_after_first_pass(proc, signal.SIGTERM)
    assert proc.returncode == 0, err
    documents = [json.loads(line) for line in lines]
    assert documents[0]["pass"] == 1
    assert documents[0]["succeeded"] == 1
    totals = documents[-1]
    assert totals["passes"] == len(documents) - 1
    assert totals["succeeded"] == 1
    assert totals["failed"] == 1


def test_loop_waits_out_a_store_outage_then_stops_on_sigint(tmp_path: Path) -> None:
    # The loop is Reconciler.run's: a store gone away is logged to stderr and the loop keeps
    # going (it used to exit 3 at the first failed pass), until the signal stops it.
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        with subprocess.Popen(
            [sys.executable, "-m", "payonce", "reconcile", "--gateway", "simulated", "--store",
             url, "--interval", "0.05"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=cli_env(),
        ) as proc:  # fmt: skip
            assert proc.stdout is not None
            assert proc.stderr is not None
            for line in proc.stdout:  # blocks until the first pass is printed
                if line.startswith("pass 1:"):
                    break
            redis.Redis(port=port).shutdown(nosave=True)  # the store goes away mid-loop
            for line in proc.stderr:  # blocks until the loop reports the outage
                if "the store is unavailable" in line:
                    break
            assert proc.poll() is None  # still running after the failed pass
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            rest, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 0, err
    assert "trying again later" in line
    # The totals of the passes that finished (one, or more if one ran before the shutdown).
    assert re.search(r"Reconcile (pass|: \d+ passes)\s", rest)
    assert "Traceback" not in err

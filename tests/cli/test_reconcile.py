"""``payonce reconcile``: one pass or a loop until a signal, against the simulated provider and
the Stripe-compatible server."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import IO

import pytest
import redis

from payonce import Intent, Status, open_store
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


# ``payonce reconcile`` with the SQLite store gone away after its first takeover: a fault
# injected in the real CLI process, the store's own code unchanged otherwise.
_TAKEOVER_THEN_OUTAGE = """
import sys
from payonce import StoreUnavailableError
from payonce.stores import SQLiteStore

real, calls = SQLiteStore.takeover, []

def takeover(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
        raise StoreUnavailableError("the disk went away (injected)", operation="takeover")
    return real(self, *args, **kwargs)

SQLiteStore.takeover = takeover
from payonce.cli import main
sys.argv[0] = "payonce"
main()
"""


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_once_cut_short_by_an_outage_shows_what_it_resolved_and_exits_3(
    seeded: Seeded, tmp_path: Path, as_json: bool
) -> None:
    _unknowns(seeded)
    done = subprocess.run(
        [sys.executable, "-c", _TAKEOVER_THEN_OUTAGE, "reconcile", "--once", "--gateway",
         "simulated", "--store", seeded.url, *(["--json"] if as_json else [])],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    if as_json:
        report = json_out(done)
        resolved = report["succeeded"] + report["failed"]
        assert (report["scanned"], resolved, report["skipped"]) == (2, 1, 1)
        assert "the disk went away" in report["interrupted"]
        assert (report["error"], report["exit_code"]) == ("StoreUnavailableError", 3)
        assert "Run payonce reconcile --once again once the store answers" in report["message"]
    else:
        assert re.search(r"scanned \(needed recovery\)[│\s]+2\s", done.stdout)
        assert re.search(r"skipped \(held elsewhere, or flagged recently\)[│\s]+1\s", done.stdout)
        assert "error: the store became unavailable during the pass" in done.stderr
        assert "takeover: the disk went away" in done.stderr
        assert "Run payonce reconcile --once again once the store answers" in done.stderr
    assert "Traceback" not in done.stderr
    # The first record was resolved (the card that pays, or the one that declines); the second
    # was not taken over and stays UNKNOWN, due for the next pass.
    left = [status for status in _statuses(seeded).values() if status is Status.UNKNOWN]
    assert len(left) == 1


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


class _Loop:
    """``payonce reconcile`` running as a child process, its stdout and stderr read by threads
    into queues, so that no step of a test can block for ever on a child that stops only on a
    signal: every read has a bound, and leaving the ``with`` kills a child still running."""

    BOUND = 60.0  # seconds: a guard against a hang, never a timing assertion

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "payonce", "reconcile", "--gateway", "simulated", *args],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
        )  # fmt: skip
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=_pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=_pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def __enter__(self) -> _Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=self.BOUND)
        for reader in self._readers:
            reader.join(timeout=self.BOUND)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def until(self, lines: queue.Queue[str | None], prefix: str) -> list[str]:
        """The lines up to and including the first that starts with ``prefix``."""
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=self.BOUND)
            except queue.Empty:
                raise AssertionError(f"no line starting {prefix!r} yet; saw {seen}") from None
            if line is None:
                raise AssertionError(f"the stream ended before a line starting {prefix!r}: {seen}")
            seen.append(line)
            if line.startswith(prefix):
                return seen

    def stop(self, signum: int) -> tuple[list[str], list[str]]:
        """Signal the loop, wait for its exit, and return the rest of stdout and of stderr."""
        self.proc.send_signal(signum)
        self.proc.wait(timeout=self.BOUND)
        for reader in self._readers:
            reader.join(timeout=self.BOUND)
        return _drain(self.out), _drain(self.err)


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None]) -> None:
    assert stream is not None
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of stream


def _drain(lines: queue.Queue[str | None]) -> list[str]:
    out = []
    while (line := lines.get_nowait()) is not None:
        out.append(line)
    return out


def _stop_after_first_pass(loop: _Loop, signum: int) -> tuple[list[str], str]:
    seen = loop.until(loop.out, ("pass 1:", '{"pass": 1'))
    rest, err = loop.stop(signum)
    return [*seen, *rest], "".join(err)


def test_loop_runs_until_sigint_then_prints_totals(
    seeded: Seeded, cli: Cli, tmp_path: Path
) -> None:
    _unknowns(seeded)
    with _Loop(tmp_path, "--store", seeded.url) as loop:
        lines, err = _stop_after_first_pass(loop, signal.SIGINT)
    assert loop.proc.returncode == 0, err
    text = "".join(lines)
    assert "Ctrl-C stops" in text
    assert "pass 1: scanned 2, succeeded 1, failed 1" in text
    # The totals: of one pass when the signal lands before the second starts, else of more.
    assert re.search(r"Reconcile( pass|: \d+ passes)\s", text)
    assert "Traceback" not in err
    assert _statuses(seeded) == {"visa": Status.SUCCEEDED, "declined": Status.FAILED}


def test_loop_stops_on_sigterm_with_json_lines(seeded: Seeded, tmp_path: Path) -> None:
    _unknowns(seeded)
    with _Loop(tmp_path, "--store", seeded.url, "--json") as loop:
        lines, err = _stop_after_first_pass(loop, signal.SIGTERM)
    assert loop.proc.returncode == 0, err
    documents = [json.loads(line) for line in lines]
    assert documents[0]["pass"] == 1
    assert documents[0]["succeeded"] == 1
    assert documents[0]["interrupted"] is None  # a whole pass
    totals = documents[-1]
    assert totals["passes"] == len(documents) - 1
    assert totals["cut_short"] == 0
    assert totals["succeeded"] == 1
    assert totals["failed"] == 1


def test_loop_keeps_running_through_a_store_outage_until_sigint(tmp_path: Path) -> None:
    # The loop is Reconciler.run's: a store gone away is reported on stderr and the loop keeps
    # going (it used to exit 3 at the first failed pass), until the signal stops it.
    with redis_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        open_store(url).close()  # the store exists (with no records): reconcile creates none
        with _Loop(tmp_path, "--store", url, "--interval", "0.05") as loop:
            first = loop.until(loop.out, "pass 1:")
            with redis.Redis(host="127.0.0.1", port=port) as client:
                client.shutdown(nosave=True)  # the store goes away mid-loop
            reported = loop.until(loop.err, "payonce reconciler: the store is unavailable")
            assert loop.proc.poll() is None  # still running after the failed pass
            rest, err = loop.stop(signal.SIGINT)
    assert loop.proc.returncode == 0, reported + err
    assert "trying again later" in reported[-1]
    # The totals of the passes that finished (one, or more if one ran before the shutdown).
    assert re.search(r"Reconcile( pass|: \d+ passes)\s", "".join(first + rest))
    assert "Traceback" not in "".join(reported + err)


def test_the_loop_sends_reconciler_logs_to_stderr_and_leaves_the_logger_as_it_was(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # For whoever runs the command in its own process (a test runner, an embedding tool).
    import logging  # noqa: PLC0415

    from payonce.cli._reconcile import _logging_to_stderr  # noqa: PLC0415

    logger = logging.getLogger("payonce.reconciler")
    before = (list(logger.handlers), logger.level, logger.propagate)
    with _logging_to_stderr():
        logger.warning("payonce reconciler: the store is unavailable (test)")
    assert capsys.readouterr().err == "payonce reconciler: the store is unavailable (test)\n"
    assert (list(logger.handlers), logger.level, logger.propagate) == before


# The handler in the main thread while that thread is inside stop.wait(), holding the event's
# lock (as between two bytecodes of Event.wait): run in a child process, so that a handler that
# deadlocks fails the test at the bound instead of hanging it.
_HANDLER_INSIDE_WAIT = """
import signal, threading
from payonce.cli._reconcile import _stopping

stop = threading.Event()
handler = _stopping(stop)
# What Event.wait holds before it sleeps, and the lock the threading module takes to start a
# non-daemon thread (Python 3.11 and 3.12), which the interrupted thread may hold as well.
shutdown = getattr(threading, "_shutdown_locks_lock", None) or threading.Lock()
with stop._cond, shutdown:
    handler(signal.SIGTERM, None)
print("handler returned")
print("stopped" if stop.wait(30) else "not stopped")
"""


def test_the_signal_handler_stops_the_loop_from_inside_the_events_own_wait(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HANDLER_INSIDE_WAIT],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["handler", "returned", "stopped"]

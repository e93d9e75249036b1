"""Out-of-range numbers and undecodable URLs on the command line: a usage error (exit 2) that
says what to write, never a Python traceback, and nothing changed."""

from __future__ import annotations

import pytest

from payonce import ConfigurationError, MemoryStore, Reconciler, open_store
from payonce.gateways.simulated import SimulatedGateway
from tests.cli.conftest import Cli, Seeded

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("purge", "--retention", "99999999999999d"), "longer than any duration"),
        (("reconcile", "--once", "--batch", HUGE), "--batch"),
        (("reconcile", "--interval", "1e308"), "--interval"),
        (("ledger", "tail", "-n", HUGE), "--count"),
    ],
    ids=["retention", "batch", "interval", "tail"],
)
def test_a_number_past_what_payonce_can_hold_is_a_usage_error(
    args: tuple[str, ...], says: str, known: Seeded, cli: Cli
) -> None:
    before = known.path.read_bytes()
    done = cli(*args, "--store", known.url)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert known.path.read_bytes() == before


def test_a_store_url_that_is_not_utf8_is_a_usage_error(cli: Cli) -> None:
    # A byte that is not UTF-8 reaches Python as a lone surrogate (surrogateescape).
    done = cli("ledger", "verify", "--store", "redis://:pw\udcff@127.0.0.1:6379/0?prefix=x")
    assert done.returncode == 2, done.stderr
    assert "not UTF-8 text" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "url",
    ["postgresql://app:s3cret@127.0.0.1/pay\x00_staging", "redis://:s3cr\udcffet@127.0.0.1:6379/0"],
    ids=["nul", "not utf-8"],
)
def test_open_store_refuses_a_url_no_driver_can_send_without_quoting_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="NUL character or bytes that are not UTF-8") as e:
        open_store(url)
    assert "s3cr" not in str(e.value)
    assert e.value.option == "url"


@pytest.mark.parametrize("batch", [0, 100_001, 10**20, True])
def test_a_batch_out_of_range_is_refused_before_any_scan(batch: int) -> None:
    reconciler = Reconciler(MemoryStore(), SimulatedGateway())
    with pytest.raises(ConfigurationError, match="from 1 to 100,000"):
        reconciler.run_once(batch)

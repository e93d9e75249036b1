"""The durability check of the PostgreSQL store's open (``_check_durability``): a server with
``fsync`` off may lose acknowledged commits, so it is refused unless the caller accepts the risk,
and the message names the file to fix."""

from __future__ import annotations

import logging

import pytest

from payonce import ConfigurationError
from payonce.stores._postgres_sql import _check_durability

SERVER = "PostgreSQL 16.4 on x86_64-pc-linux-gnu"


def test_fsync_off_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        _check_durability(SERVER, "off", "on", False)
    message = str(caught.value)
    assert caught.value.option == "allow_unsafe_durability"
    assert "fsync is off (set fsync = on in postgresql.conf)" in message, message
    assert "synchronous_commit" not in message  # on: not a problem
    assert "allow_unsafe_durability=True" in message


def test_fsync_off_is_accepted_with_the_opt_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="payonce.stores.postgres"):
        _check_durability(SERVER, "off", "on", True)
    assert any("fsync is off" in record.getMessage() for record in caplog.records)


def test_fsync_on_passes_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="payonce.stores.postgres"):
        _check_durability(SERVER, "on", "on", False)
    assert not caplog.records

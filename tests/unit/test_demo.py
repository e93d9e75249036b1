"""The demo runs, and its payonce side shows no duplicate charge and nothing unresolved."""

from __future__ import annotations

import pytest

from payonce.demo import main


def test_demo_shows_duplicates_only_without_payonce(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--agents", "8", "--seed", "3", "--loss-rate", "0.3"]) == 0
    lines = {line[:24].strip(): line[24:].split() for line in capsys.readouterr().out.splitlines()}
    direct, guarded = lines["duplicate charges"]
    assert int(direct) > 0
    assert int(guarded) == 0
    assert lines["left unresolved"][-1] == "0"

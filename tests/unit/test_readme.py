"""The README's quick start runs as written."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAYONCE_SECRET", secrets.token_bytes(32).hex())
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["again"].replayed  # type: ignore[attr-defined]
    assert (tmp_path / "payonce.db").exists()

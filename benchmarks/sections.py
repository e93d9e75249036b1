"""A generated section inside another generated report: ``docs/performance.md`` is written by
``benchmarks.run`` (SQLite) and carries the stores benchmark's summary between two markers,
written by ``benchmarks.stores_bench --summary``. Each script rewrites only its own part."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["STORES", "kept", "put"]

#: The name of the stores benchmark's section.
STORES = "stores_bench"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def _pattern(name: str) -> re.Pattern[str]:
    begin, end = _markers(name)
    return re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)


def put(path: Path, name: str, body: str) -> None:
    """Write ``body`` as section ``name`` of ``path``: in place of the section's last version,
    or at the end of the file when it has none (a new file holds the section alone)."""
    begin, end = _markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    found = _pattern(name).search(text)
    if found is not None:
        text = text[: found.start()] + section + text[found.end() :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def kept(path: Path, name: str) -> str | None:
    """Section ``name`` of ``path`` with its markers, to carry over into a rewrite; None when
    the file or the section is missing."""
    if not path.exists():
        return None
    found = _pattern(name).search(path.read_text(encoding="utf-8"))
    return None if found is None else found.group(0)

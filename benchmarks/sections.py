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


def _find(text: str, name: str) -> tuple[int, int] | None:
    """Where section ``name`` is in ``text`` (start of its begin line, end of its end line), or
    None when it has none. The markers count only as whole lines; anything but one begin line
    followed by one end line is refused, so that a stray marker never costs the file's text."""
    begin, end = _markers(name)
    begins = [m.start() for m in re.finditer(f"^{re.escape(begin)}$", text, re.M)]
    ends = [m.end() for m in re.finditer(f"^{re.escape(end)}$", text, re.M)]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(
            f"the {name} section's markers are broken ({len(begins)} begin and {len(ends)} end "
            "lines, or in the wrong order); mend them by hand, each on a line of its own, then "
            "run the benchmark again"
        )
    return begins[0], ends[0]


def put(path: Path, name: str, body: str) -> None:
    """Write ``body`` as section ``name`` of ``path``: in place of the section's last version,
    or at the end of the file when it has none (a new file holds the section alone).

    Raises:
        ValueError: the file's markers of this section are broken (see ``_find``).
    """
    begin, end = _markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    found = _find(text, name)
    if found is not None:
        text = text[: found[0]] + section + text[found[1] :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def kept(path: Path, name: str) -> str | None:
    """Section ``name`` of ``path`` with its markers, to carry over into a rewrite; None when
    the file or the section is missing.

    Raises:
        ValueError: the file's markers of this section are broken (see ``_find``).
    """
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    found = _find(text, name)
    return None if found is None else text[found[0] : found[1]]

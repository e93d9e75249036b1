"""``benchmarks.sections``: the stores benchmark's section inside docs/performance.md, written
in place, kept by the SQLite benchmark's rewrite, and never at the cost of the file's text."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks import sections

SQLITE = "# Performance\n\nsee `<!-- stores_bench: begin -->` quoted inline\n\n## SQLite\nrows\n"


def test_a_section_is_appended_once_then_replaced_in_place(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(SQLITE, encoding="utf-8")
    sections.put(page, sections.STORES, "## Stores\n\nfirst run")
    sections.put(page, sections.STORES, "## Stores\n\nsecond run")
    text = page.read_text(encoding="utf-8")
    assert text.startswith(SQLITE)  # the rest of the page, the inline quote included, as it was
    assert text.count("\n<!-- stores_bench: begin -->\n") == 1
    assert "first run" not in text
    assert sections.kept(page, sections.STORES) == (
        "<!-- stores_bench: begin -->\n## Stores\n\nsecond run\n<!-- stores_bench: end -->"
    )


def test_a_missing_file_or_section_keeps_nothing(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    assert sections.kept(page, sections.STORES) is None
    page.write_text(SQLITE, encoding="utf-8")
    assert sections.kept(page, sections.STORES) is None


@pytest.mark.parametrize(
    "markers",
    [
        "<!-- stores_bench: begin -->\nold\n",
        "<!-- stores_bench: end -->\nold\n<!-- stores_bench: begin -->\n",
        "<!-- stores_bench: begin -->\na\n<!-- stores_bench: end -->\n"
        "<!-- stores_bench: begin -->\nb\n<!-- stores_bench: end -->\n",
    ],
    ids=["begin without end", "end before begin", "twice"],
)
def test_broken_markers_are_refused_and_the_file_left_as_it_is(
    tmp_path: Path, markers: str
) -> None:
    page = tmp_path / "performance.md"
    page.write_text(SQLITE + markers, encoding="utf-8")
    with pytest.raises(ValueError, match="markers are broken"):
        sections.put(page, sections.STORES, "## Stores")
    with pytest.raises(ValueError, match="mend them by hand"):
        sections.kept(page, sections.STORES)
    assert page.read_text(encoding="utf-8") == SQLITE + markers

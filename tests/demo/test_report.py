"""The HTML report renders in headless Chromium with its charts drawn and carrying the demo's
numbers: read back from the DOM Chromium built, and from the pixels of its screenshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from payonce.demo import DemoResult, run_demo
from payonce.demo._figures import TIMELINE_KINDS
from payonce.demo._report import COLOURS

FLOWS = ("checkout", "renewals", "disbursements")
WIDTH = 1200


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "headless Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs it, so under CI this is a failure")
        pytest.skip(reason)
    return found


def _browse(
    chromium: str, page: Path, height: int, *flags: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--window-size={WIDTH},{height}",
            *flags,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


class _Elements(HTMLParser):
    """Every start tag's attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))

    def by_id(self, ident: str) -> dict[str, str]:
        hits = [a for _, a in self.found if a.get("id") == ident]
        assert len(hits) == 1, f"{ident}: {len(hits)} elements"
        return hits[0]

    def with_class(self, css: str) -> list[dict[str, str]]:
        return [a for _, a in self.found if css in a.get("class", "").split()]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, _Elements, Image.Image]:
    chromium = _chromium()
    folder = tmp_path_factory.mktemp("report")
    result = run_demo(report=folder / "payonce-demo-report.html", progress=False)
    dom = _browse(chromium, result.report_path, 1000, "--dump-dom").stdout
    elements = _Elements()
    elements.feed(dom)
    body = next(a for tag, a in elements.found if tag == "body")
    assert body.get("data-rendered") == "true", "the report's script did not run"
    height = int(body["data-height"])
    shot = folder / "report.png"
    _browse(chromium, result.report_path, height, f"--screenshot={shot}")
    image = Image.open(shot).convert("RGB")
    assert image.size == (WIDTH, height)
    return result, elements, image


def test_the_report_is_one_self_contained_file(rendered: tuple[DemoResult, Any, Any]) -> None:
    result, _, _ = rendered
    text = result.report_path.read_text(encoding="utf-8")
    for outside in ("http://", "https://", "<link", "src=", "@import", "url("):
        assert outside not in text
    embedded = text.split('<script type="application/json" id="demo-data">')[1]
    data = json.loads(embedded.split("</script>")[0])
    assert data["unguarded"] == result.to_json()["unguarded"]


def test_the_bars_carry_the_demo_numbers(rendered: tuple[DemoResult, _Elements, Any]) -> None:
    result, elements, _ = rendered
    data = result.to_json()
    for flow in FLOWS:
        intended = elements.by_id(f"chart-movements-{flow}-intended")
        assert int(intended["data-value"]) == data["intended"][flow]
        for run in ("unguarded", "payonce"):
            kpis = data["kpis"][flow][run]
            moved = elements.by_id(f"chart-movements-{flow}-{run}")
            assert int(moved["data-value"]) == kpis["movements"]
            assert float(moved["height"]) > 2
            twice = elements.by_id(f"chart-duplicates-{flow}-{run}")
            assert int(twice["data-value"]) == kpis["duplicates"]
            assert twice["fill"] == COLOURS[run]
    assert sum(data["kpis"][f]["payonce"]["duplicates"] for f in FLOWS) == 0
    assert sum(data["kpis"][f]["unguarded"]["duplicates"] for f in FLOWS) > 0


def test_the_timeline_carries_every_call(rendered: tuple[DemoResult, _Elements, Any]) -> None:
    result, elements, _ = rendered
    runs = result.to_json()["timeline"]["runs"]
    for run, buckets in runs.items():
        drawn = {
            (int(a["data-bucket"]), a["data-kind"]): int(a["data-value"])
            for a in elements.with_class("tl")
            if a["data-run"] == run
        }
        expected = {
            (i, kind): bucket[kind]
            for i, bucket in enumerate(buckets)
            for kind in TIMELINE_KINDS
            if bucket[kind]
        }
        assert drawn == expected
    unguarded = sum(b["first"] + b["retry"] + b["repeat"] for b in runs["unguarded"])
    assert unguarded == result.unguarded.provider_calls
    replays = sum(b["replay"] for b in runs["payonce"])
    assert replays == result.payonce.replays_served > 0


def test_the_tables_and_verdict_match_the_json(rendered: tuple[DemoResult, _Elements, Any]) -> None:
    result, elements, _ = rendered
    verdict = elements.by_id("verdict")
    assert verdict["data-ok"] == str(result.ok).lower() == "true"
    ledger = elements.by_id("ledger")
    assert ledger["data-verified"] == "true"
    assert int(ledger["data-value"]) == result.ledger_entries
    pieces = {
        (a["data-run"], a["data-kind"]): int(a["data-value"]) for a in elements.with_class("res")
    }
    assert pieces[("unguarded", "never_resolved")] == result.unguarded.unresolved_unknown
    settled = pieces.get(("payonce", "resolved_by_lookup"), 0) + pieces.get(
        ("payonce", "resolved_by_reconciler"), 0
    )
    assert settled == result.payonce.unknown_outcomes
    assert ("payonce", "never_resolved") not in pieces


def _cells(dom: str) -> dict[tuple[str, str], str]:
    """(metric, run) -> text of the figures table's cells."""

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.metric = ""
            self.run: str | None = None
            self.out: dict[tuple[str, str], str] = {}
            self.inside = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found = dict(attrs)
            if tag == "table":
                self.inside = found.get("id") == "figures-table"
            if self.inside and tag == "tr":
                self.metric = found.get("data-metric") or ""
            if self.inside and tag == "td":
                self.run = found.get("data-run")

        def handle_data(self, data: str) -> None:
            if self.inside and self.run is not None:
                self.out[(self.metric, self.run)] = data.strip()
                self.run = None

    parser = Cells()
    parser.feed(dom)
    return parser.out


def test_the_figures_table_shows_the_json_values(rendered: tuple[DemoResult, Any, Any]) -> None:
    result, _, _ = rendered
    cells = _cells(result.report_path.read_text(encoding="utf-8"))
    data = result.to_json()
    for metric in ("duplicate_charges", "money_movements", "replays_served", "unknown_outcomes"):
        for run in ("unguarded", "payonce"):
            assert cells[(metric, run)] == str(data[run][metric])


def _pixels(image: Image.Image, box: dict[str, float], colour: str) -> int:
    """Pixels of ``colour`` (within a small tolerance) inside a chart's box."""
    want = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
    crop = image.crop(
        (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"]))
    )
    return sum(
        count
        for count, rgb in crop.getcolors(maxcolors=1 << 20) or []
        if all(abs(a - b) <= 3 for a, b in zip(rgb, want, strict=True))
    )


def test_the_screenshot_shows_the_charts_drawn(
    rendered: tuple[DemoResult, _Elements, Image.Image],
) -> None:
    result, elements, image = rendered
    boxes = {a["id"]: json.loads(a["data-box"]) for a in elements.with_class("chart")}
    assert set(boxes) == {"chart-movements", "chart-duplicates", "chart-timeline", "chart-unknowns"}
    for ident, box in boxes.items():
        assert box["width"] > 300, ident
        assert box["height"] > 100, ident
        assert box["y"] + box["height"] <= image.height, f"{ident} is below the screenshot"
    # Grouped bars: every series is drawn with a real area (not just a legend swatch).
    for colour in ("intended", "unguarded", "payonce"):
        assert _pixels(image, boxes["chart-movements"], COLOURS[colour]) > 1500, colour
    assert _pixels(image, boxes["chart-duplicates"], COLOURS["unguarded"]) > 1500
    # payonce's duplicate bars are zero: drawn as baseline marks, a few pixels each.
    assert 0 < _pixels(image, boxes["chart-duplicates"], COLOURS["payonce"]) < 400
    totals = {
        kind: sum(b[kind] for rows in result.to_json()["timeline"]["runs"].values() for b in rows)
        for kind in TIMELINE_KINDS
    }
    for kind, total in totals.items():
        if total:
            assert _pixels(image, boxes["chart-timeline"], COLOURS[kind]) > 20 * total**0.5, kind
    assert _pixels(image, boxes["chart-unknowns"], COLOURS["unguarded"]) > 1500
    background = image.getpixel((5, 5))
    assert background == (248, 249, 250)  # the page's background, outside every chart

"""The HTML report in Debian's Chromium: charts fit the page, at a desktop's width and a
phone's, and no legend, tick label or axis title is cut off. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from relay.loadtest.page import to_html
from relay.loadtest.report import build
from relay.loadtest.scenario import Scenario
from tests.e2e.chat_page import ARTIFACTS, chromium_path, launch
from tests.loadtest.test_output import phase, raw_run

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (tests/run.sh)"),
]

#: for each chart: its box, and the boxes of its texts that stick out of it
MEASURE = """() => [...document.querySelectorAll('svg')].map(svg => {
  const box = svg.getBoundingClientRect();
  const out = [...svg.querySelectorAll('text')].map(t => [t.textContent, t.getBoundingClientRect()])
    .filter(([, r]) => r.left < box.left - 1 || r.right > box.right + 1
                    || r.top < box.top - 1 || r.bottom > box.bottom + 1)
    .map(([text]) => text);
  return {left: box.left, right: box.right, texts: svg.querySelectorAll('text').length, out};
})"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scn = Scenario(ramp=True, max_p99_ms=100).validate()
    raw = raw_run(
        [phase(0, 100), phase(1, 150), phase(2, 225, latency_us=400_000)],
        ramp_stop="p99 400.0 ms > 100 ms at 225 msgs/s",
    )
    page = tmp_path_factory.mktemp("report") / "report.html"
    page.write_text(to_html(build(scn, raw)))
    return page


@pytest.mark.parametrize(("name", "width"), [("desktop", 1280), ("phone", 360)])
def test_charts_fit_the_page_and_nothing_is_clipped(
    browser: Browser, report_page: Path, name: str, width: int
) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(report_page.as_uri())
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"loadtest-report-{name}.png"), full_page=True)
        charts: list[dict[str, Any]] = page.evaluate(MEASURE)
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        ramp_rows = page.locator("table").nth(1).locator("tr").count()
    finally:
        page.close()
    assert scroll_width <= width  # the page never scrolls sideways
    assert len(charts) == 5
    for chart in charts:
        assert chart["left"] >= 0 and chart["right"] <= width, chart
        assert chart["texts"] >= 7, chart  # ticks, both axis titles (and legends)
        assert chart["out"] == [], chart
    assert ramp_rows == 1 + 3  # the ramp table: a header and a row per step

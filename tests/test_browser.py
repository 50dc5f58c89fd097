"""index.html in a real browser: Debian's headless Chromium driven by playwright.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python package (the
``test`` extra). Playwright's own browser download (``playwright install``) is NOT used: the test
launches the system Chromium through ``executable_path``. Without either, the test is skipped with
the reason. It saves a screenshot in the test's temporary folder; with
``DISTILLBENCH_UPDATE_SCREENSHOT=1`` it also refreshes docs/leaderboard.png, which the README shows
(a test run never changes tracked files otherwise).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distillbench.leaderboard import build_leaderboard
from tests.test_leaderboard import realistic_rows, write_all

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DISTILLBENCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
README_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "leaderboard.png"


def _skip_reason() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (install Debian's package: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]'; no 'playwright install' needed)"
    return None


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """index.html of the realistic fixture rows, opened in headless Chromium; collects console errors."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser")
    write_all(root / "results", realistic_rows())
    result = build_leaderboard([root / "results"], root / "out", generated_at="2025-01-01T00:00:00+00:00")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 1000})
            tab.set_default_timeout(15_000)
            tab.errors = []  # type: ignore[attr-defined]
            tab.requests = []  # type: ignore[attr-defined]
            tab.on("console", lambda m: m.type in ("error", "warning") and tab.errors.append(f"{m.type}: {m.text}"))
            tab.on("pageerror", lambda e: tab.errors.append(f"pageerror: {e}"))
            tab.on("request", lambda r: tab.requests.append(r.url))
            tab.goto(result.html_path.resolve().as_uri())
            tab.wait_for_load_state("load")
            yield tab
        finally:
            browser.close()


def _column(page: Any, section: str, index: int) -> list[str]:
    """Texts of column ``index`` of the main table of the section whose dataset is ``section``."""
    return page.locator(f'section[data-dataset="{section}"] table.main tbody tr').evaluate_all(
        f"rows => rows.map(r => r.cells[{index}].textContent.trim())"
    )


class TestBrowser:
    def test_tables_and_plots_render(self, page: Any) -> None:
        """Every table section has a non-empty main table and an SVG plot with lines, points and error bars."""
        sections = page.locator("section.board")
        assert sections.count() == 4
        for i in range(sections.count()):
            section = sections.nth(i)
            assert section.locator("table.main tbody tr").count() >= 2
            svg = section.locator("svg.plot")
            box = svg.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 150
            assert svg.locator("circle").count() >= 2
            assert svg.locator("g.series").count() == section.locator("table.main tbody tr").count()
        digits = page.locator('section[data-dataset="digits"] svg.plot')
        assert digits.locator("polyline").count() == 3  # three methods over IPC 1, 10, 50
        assert page.locator("table.bias").count() == 1 and page.locator("table.longtail").count() == 1
        assert page.locator("table.cost tbody tr").count() > 0

    def test_clicking_a_header_sorts_the_table(self, page: Any) -> None:
        """IPC 1 header: ascending by mean, then descending on the second click."""
        assert _column(page, "digits", 0) == ["dm[iterations=200]", "herding", "random"]
        header = page.locator('section[data-dataset="digits"] table.main thead th').nth(1)  # IPC 1
        header.click()
        assert _column(page, "digits", 0) == ["random", "herding", "dm[iterations=200]"]
        assert header.get_attribute("aria-sort") == "ascending"
        header.click()
        assert _column(page, "digits", 0) == ["dm[iterations=200]", "herding", "random"]
        assert header.get_attribute("aria-sort") == "descending"

    def test_dataset_filter_hides_other_datasets(self, page: Any, tmp_path: Path) -> None:
        """Choosing mnist hides the other sections and their cost rows; 'all' shows them again."""
        page.select_option("#filter-dataset", "mnist")
        visible = [s for s in page.locator("section.board").all() if s.is_visible()]
        assert [s.get_attribute("data-dataset") for s in visible] == ["mnist"]
        cost_rows = page.locator("table.cost tbody tr").all()
        assert {r.get_attribute("data-dataset") for r in cost_rows if r.is_visible()} == {"mnist"}
        assert page.locator("#filter-count").text_content() == "1 table(s) shown"
        shot = tmp_path / "leaderboard.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000, "the screenshot is nearly empty: the page did not render"
        if os.environ.get("DISTILLBENCH_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, README_SCREENSHOT)
        page.select_option("#filter-dataset", "")
        page.select_option("#filter-protocol", "quick-v1@1")
        visible = [s for s in page.locator("section.board").all() if s.is_visible()]
        assert [s.get_attribute("data-dataset") for s in visible] == ["digits"]
        page.select_option("#filter-protocol", "")
        assert all(s.is_visible() for s in page.locator("section.board").all())

    def test_no_console_errors_and_no_network(self, page: Any) -> None:
        """The page logs no error or warning, and requests nothing but its own file."""
        assert page.errors == []
        assert all(url.startswith("file://") for url in page.requests), page.requests

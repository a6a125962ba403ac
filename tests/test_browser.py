"""The rendered book in a real browser: Debian's Chromium, driven by Playwright.

The book is served from 127.0.0.1 and every request to anywhere else is
blocked and recorded: the pages must render from the book alone (MathJax
included). Screenshots go to the test's tmp dir, and under CI to
``_build/screenshots/`` of the checkout.
"""
import functools
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import BIN, ROOT

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser download
PAGES = ["results", "beyond_the_paper", "rfw", "reported_vs_reproduced", "protocol", "runs/dlib__demo"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]


def require_chromium():
    if CHROMIUM.exists():
        return
    why = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def site(demo_project):
    """The demo book's HTML, built once (or reused when the book test built it), served on 127.0.0.1."""
    require_chromium()
    project, _ = demo_project
    html = project / "_build" / "html"
    if not (html / "book" / "results.html").exists():
        build = subprocess.run([str(BIN / "jupyter-book"), "build", str(project), "-n", "-W", "--keep-going"],
                               capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def visit(browser, url: str, screenshot: Path) -> tuple:
    """Load ``url``; returns the page, the same-origin failures and the blocked outside requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    origin = url.split("/book/")[0]
    failures, outside = [], []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith((origin, "data:"))
               else (outside.append(route.request.url), route.abort()))
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failures.append(f"failed {r.url}") if r.url.startswith(origin) else None)
    page.goto(url, wait_until="networkidle", timeout=60_000)
    page.screenshot(path=str(screenshot), full_page=False)
    return page, failures, outside


def save_for_ci(screenshot: Path) -> None:
    if os.environ.get("CI"):
        folder = ROOT / "_build" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, folder / screenshot.name)


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_every_figure_from_the_book_alone(browser, site, tmp_path, name):
    shot = tmp_path / f"{name.replace('/', '__')}.png"
    page, failures, outside = visit(browser, f"{site}/book/{name}.html", shot)
    try:
        assert not failures, f"{name}: requests that failed: {failures}"
        assert not outside, f"{name}: the page needs outside resources: {outside}"
        broken = page.evaluate("""() => Array.from(document.images)
            .filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))""")
        assert not broken, f"{name}: broken images {broken}"
        empty_svg = page.evaluate("""() => Array.from(document.querySelectorAll('.cell_output svg'))
            .filter(s => s.getBoundingClientRect().width === 0).length""")
        assert empty_svg == 0, f"{name}: {empty_svg} inline SVG figure(s) with no size"
        assert page.title(), f"{name}: no title"
        assert shot.stat().st_size > 10_000
        save_for_ci(shot)
    finally:
        page.close()


def test_results_page_shows_the_main_table(browser, site, tmp_path):
    page, _, _ = visit(browser, f"{site}/book/results.html", tmp_path / "results.png")
    try:
        tables = page.locator("table").filter(has_text="dlib")
        assert tables.count() >= 1
        row = tables.first.locator("tr").filter(has=page.locator("th", has_text="dlib")).first
        cell = row.locator("td").first.inner_text()
        assert "±" in cell, f"main table cell {cell!r} is not 'mean ± std'"
        missing = tables.first.locator("tr").filter(has=page.locator("th", has_text="arcface-r50")).first
        assert missing.locator("td").first.inner_text() == "not available"
        assert tables.first.is_visible()
    finally:
        page.close()


def test_figures_and_formulas_are_on_the_analysis_pages(browser, site, tmp_path):
    page, _, _ = visit(browser, f"{site}/book/beyond_the_paper.html", tmp_path / "beyond.png")
    try:
        # ROC/DET and score distributions (files), the hardest-pairs thumbnails (inline data)
        figures = page.evaluate("() => Array.from(document.images).filter(i => i.src.includes('_images/')).length")
        faces = page.evaluate("() => document.querySelectorAll('table.hardest-pairs img').length")
        assert figures >= 2 and faces >= 2
    finally:
        page.close()
    page, _, _ = visit(browser, f"{site}/book/protocol.html", tmp_path / "protocol.png")
    try:
        page.wait_for_selector("mjx-container", timeout=30_000)  # MathJax typeset, offline
        assert page.locator("mjx-container").count() >= 3
    finally:
        page.close()

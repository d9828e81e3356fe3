"""The static book as a reader meets it: every page in headless chromium, over a local HTTP server.

For every page: no console errors, no failed requests, no request leaving the local server (the
book must work offline), every <img> loaded. For every explorer (spatialkit.present.widgets): it rendered
from the saved widget state, and moving its control changes the shown frame. Notebook pages also
offer Binder/Colab launch links to ``notebooks/NAME.ipynb`` and an ``.ipynb`` download. One page is
also opened from ``file://``. Screenshots of every page go to ``test-artifacts/browser/``.

The book is built by the test itself with the ``smoke`` profile into a temporary copy of the
repository, from the notebook runs of the conftest's ``smoke_book`` fixture (shared with
tests/test_notebooks.py; a few minutes: it executes every notebook). To check an already built book instead,
set ``SPATIALKIT_BOOK_HTML=_build/html``. Needs Debian's chromium (``apt-get install chromium``;
``.ci/run`` installs it via ``make browser-deps``) and the ``playwright`` package (its own browser
download is not used); without chromium the browser tests skip with that reason. One fast test
checks, without a browser, that the widget scripts are vendored files wired into ``_config.yml``.
"""

from __future__ import annotations

import functools
import posixpath
import html as htmllib
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from spatialkit.suite import book
from spatialkit.suite import catalog

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("SPATIALKIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDGETS_TIMEOUT_MS = 60_000  # the 3.6 MB widget bundle on a loaded 2-core machine
NOT_PAGES = {"_static", "_sources", "_images", "jupyter-widgets"}

def in_browser(test):
    """Slow, and skipped (with the reason) where chromium is missing."""
    test = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")(test)
    return pytest.mark.slow(test)


def playwright():
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")


def test_widget_scripts_are_vendored_not_fetched():
    """Fast, no browser: every script the widget pages load is a vendored file that the build copies."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())["sphinx"]["config"]
    scripts = list(config["nb_ipywidgets_js"])
    assert scripts and not [s for s in scripts if "://" in s], "widget scripts must not come from a CDN"
    [extra] = config["html_extra_path"]
    for script in scripts:
        # Sphinx resolves script paths against _static/ in the HTML root; html_extra_path fills the root
        in_root = posixpath.normpath(posixpath.join("_static", script))
        assert (REPO / extra / in_root).is_file(), f"{script}: not vendored as {extra}/{in_root}"
    assert [Path(s).name for s in scripts] == ["require.js", "widgets-config.js", "embed-amd.js"]  # load order


# --- the book under test --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def html_dir(request) -> Path:
    given = os.environ.get("SPATIALKIT_BOOK_HTML")
    if given:
        path = Path(given).resolve()
        if not (path / "index.html").exists():
            pytest.fail(f"SPATIALKIT_BOOK_HTML={given}: no index.html there (build it with `make book`)")
        return path
    # the conftest's smoke book: notebooks executed once per session (shared with test_notebooks.py), built once
    return Path(request.getfixturevalue("smoke_book_html"))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(html_dir):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(html_dir)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    with playwright().sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def pages(html_dir: Path) -> list[str]:
    return sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html")
                  if not NOT_PAGES & set(p.relative_to(html_dir).parts))


def explorer_views(page_html: str) -> int:
    """How many explorers the saved widget state of a page displays (VBox/Tab with our CSS class)."""
    state = re.search(r'<script type="application/vnd\.jupyter\.widget-state\+json">(.*?)</script>', page_html, re.S)
    if not state:
        return 0
    models = json.loads(htmllib.unescape(state.group(1)) if "&quot;" in state.group(1) else state.group(1))["state"]
    explorers = {mid for mid, m in models.items() if "spatialkit-explorer" in m["state"].get("_dom_classes", [])}
    views = re.findall(r'<script type="application/vnd\.jupyter\.widget-view\+json">(.*?)</script>', page_html, re.S)
    return sum(json.loads(v)["model_id"] in explorers for v in views)


# --- one page -------------------------------------------------------------------------------------

class PageLog:
    """Everything a page did wrong, collected from the browser's events."""

    def __init__(self, page, base: str):
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        page.on("request", lambda r: self._check_local(r.url, base))

    def _check_local(self, url: str, base: str) -> None:
        scheme = urlparse(url).scheme
        if scheme in ("data", "blob", "about") or url.startswith(base):
            return
        self.problems.append(f"request leaves the book (must work offline): {url}")


def shown_frame(explorer) -> str:
    """What the explorer shows now: the visible image's source and the visible caption."""
    return explorer.evaluate("""e => {
        const visible = el => el.offsetParent !== null;
        const img = [...e.querySelectorAll('img')].filter(visible).map(i => i.src).join(' ');
        const text = [...e.querySelectorAll('.widget-html-content, .lm-TabBar-tab.lm-mod-current')]
            .filter(visible).map(t => t.textContent).join(' ');
        return img + ' | ' + text;
    }""")


def frame_count(explorer) -> int:
    handle = explorer.locator(".noUi-handle")
    if handle.count():
        low, high = (float(handle.first.get_attribute(a)) for a in ("aria-valuemin", "aria-valuemax"))
        return int(high - low) + 1
    return explorer.locator(".lm-TabBar-tab").count()


def move_control(page, explorer) -> None:
    handle = explorer.locator(".noUi-handle")
    if handle.count():
        handle.first.focus()
        page.keyboard.press("ArrowRight")  # noUiSlider: one step up
        return
    tabs = explorer.locator(".lm-TabBar-tab")
    if tabs.count() > 1:
        tabs.nth(1).click()
        return
    raise AssertionError("explorer has neither a slider nor tabs")


def check_page(browser, url: str, base: str, page_html: str, screenshot: Path) -> tuple[list[str], int]:
    """Open one page; return its problems (empty: the page is fine) and how many explorers were moved."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log = PageLog(page, base)
    moved = 0
    try:
        page.goto(url, wait_until="load")
        expected = explorer_views(page_html)
        if expected:
            page.wait_for_function("n => document.querySelectorAll('.spatialkit-explorer').length >= n",
                                   arg=expected, timeout=WIDGETS_TIMEOUT_MS)
        page.wait_for_function("[...document.images].every(i => i.complete)", timeout=WIDGETS_TIMEOUT_MS)
        broken = page.evaluate("[...document.images].filter(i => !(i.naturalWidth > 0)).map(i => i.src.slice(0, 120))")
        log.problems += [f"image not loaded: {src}" for src in broken]
        # the book shows the experiment, not the plumbing: one parameters cell, code that fits the page width
        n_params = page.evaluate("document.querySelectorAll('.tag_parameters, .tag_injected-parameters').length")
        if n_params > 1:
            log.problems.append(f"{n_params} parameters cells shown (papermill's injected cell must be folded in)")
        wide = page.evaluate("[...document.querySelectorAll('div.cell_input pre')]"
                             ".filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.textContent.slice(0, 60))")
        log.problems += [f"code cell scrolls horizontally: {text!r}" for text in wide]
        rendered = page.locator(".spatialkit-explorer")
        if rendered.count() != expected:
            log.problems.append(f"{expected} explorer(s) in the saved widget state, {rendered.count()} rendered")
        for i in range(rendered.count()):
            explorer = rendered.nth(i)
            explorer.scroll_into_view_if_needed()
            if frame_count(explorer) < 2:  # e.g. one layer under the smoke profile: nothing to move to
                continue
            moved += 1
            before = shown_frame(explorer)
            move_control(page, explorer)
            after = before
            for _ in range(50):  # jslink runs client-side; give it up to 5 s on a loaded machine
                page.wait_for_timeout(100)
                after = shown_frame(explorer)
                if after != before:
                    break
            if after == before:
                log.problems.append(f"explorer {i}: moving its control did not change the shown frame")
        page.wait_for_timeout(200)  # let late console messages arrive
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        # Chromium cannot capture a page taller than its texture limit (16384 px) in one image: the artifact
        # keeps the top 16000 px of a long chapter (the screenshot is for a reader of the CI artifacts, not a check)
        height = min(page.evaluate("document.documentElement.scrollHeight"), 16000)
        try:
            page.screenshot(path=str(screenshot), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height})
        except playwright().Error:
            # Chromium's "Unable to capture screenshot" of a long page came once under the test suite's load (the
            # same page captured fine alone): the artifact then holds the first screen; if that fails too, the
            # outer handler reports it as the page's problem
            page.screenshot(path=str(screenshot))
    except playwright().Error as err:  # a timeout waiting for widgets is a finding, not a crash
        log.problems.append(f"{type(err).__name__}: {str(err).splitlines()[0]}")
    finally:
        page.close()
    return log.problems, moved


def screenshot_path(rel: str, suffix: str = "") -> Path:
    return ARTIFACTS / (rel[: -len(".html")].replace("/", "__") + suffix + ".png")


def chapter_pages(html_dir: Path) -> list[Path]:
    """The notebooks' pages (the generated Scorecard page beside them is not a notebook)."""
    return [p for p in sorted((html_dir / "book" / "executed").glob("*.html"))
            if (REPO / "notebooks" / f"{p.stem}.ipynb").exists()]


# --- the tests ------------------------------------------------------------------------------------

@in_browser
def test_every_page_loads_cleanly_and_every_explorer_responds(html_dir, server, browser):
    all_pages = pages(html_dir)
    assert "index.html" in all_pages and "book/intro.html" in all_pages and "book/bibliography.html" in all_pages
    problems, moved = {}, 0
    for rel in all_pages:
        found, n = check_page(browser, server + rel, server, (html_dir / rel).read_text(), screenshot_path(rel))
        moved += n
        if found:
            problems[rel] = found
    report = "\n".join(f"{rel}:\n  " + "\n  ".join(found) for rel, found in problems.items())
    assert not problems, f"{len(problems)} of {len(all_pages)} page(s) have problems:\n{report}"
    assert moved >= 1, "no explorer with two or more frames anywhere in the book: the frame check checked nothing"


@pytest.mark.slow  # builds the book, needs no browser
def test_explorers_are_there_to_check(html_dir):
    """Not vacuous: every notebook that builds an explorer has it in its page's saved widget state."""
    for page in chapter_pages(html_dir):
        source = (REPO / "notebooks" / f"{page.stem}.ipynb").read_text()
        if re.search(r"\b(frame|tab)_explorer\(", source):
            assert explorer_views(page.read_text()) >= 1, f"{page.name}: explorer missing from the saved widget state"


@pytest.mark.slow  # builds the book, needs no browser
def test_notebook_pages_offer_launch_buttons_and_ipynb_download(html_dir):
    chapters = chapter_pages(html_dir)
    assert chapters, "no notebook page in the book"
    for page in chapters:
        text = page.read_text()
        source = f"notebooks/{page.stem}.ipynb"
        assert re.search(rf'href="https://colab\.research\.google\.com/github/[^"]+/blob/[^"]+/{source}"', text), page.name
        assert re.search(rf'href="https://mybinder\.org/v2/gh/[^"]+\?urlpath=tree/{source}"', text), page.name
        assert "book/executed" not in " ".join(re.findall(r'href="https://[^"]*"', text)), "launch link to an unpublished copy"
        download = re.search(r'href="([^"]*_sources/book/executed/[^"]+\.ipynb)"', text)
        assert download and (page.parent / download.group(1)).resolve().exists(), f"{page.name}: no .ipynb download"


@in_browser
def test_widgets_work_from_file_url(html_dir, browser):
    """Offline and without a server: the vendored widget manager also loads from file://."""
    with_explorers = [p for p in sorted((html_dir / "book" / "executed").glob("*.html")) if explorer_views(p.read_text())]
    if not with_explorers:
        pytest.skip("no page with an explorer")
    page = with_explorers[0]
    rel = page.relative_to(html_dir).as_posix()
    problems, _ = check_page(browser, page.as_uri(), html_dir.as_uri() + "/", page.read_text(), screenshot_path(rel, ".file"))
    assert not problems, "\n".join(problems)

"""Headless Chromium (Debian's package, driven by Playwright) for the tests of HTML pages.

`open_offline` loads a local page with every request that is not the page itself aborted, and
reports what the page asked for: a self-contained page asks for nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
"""Without the background-networking flags Chromium tries to reach Google's hosts at start."""


def chromium_path() -> str:
    """Debian's Chromium (``make test`` installs it); fails the test with the fix if absent."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install "
                    "chromium), or run `make browser`")
    return path


@dataclass
class PageVisit:
    """What loading a page did."""

    text: str
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    title: str = ""
    counts: dict[str, str] = field(default_factory=dict)


def open_offline(page_path: Path, *, screenshot: Path | None = None, width: int = 1200,
                 height: int = 900, full_page: bool = True) -> PageVisit:
    """Load `page_path` in headless Chromium with the network blocked (every request but the
    page's own file is aborted); return its visible text, requests, failures and a screenshot
    (the whole page, or the first `height` pixels)."""
    from playwright.sync_api import sync_playwright

    url = page_path.resolve().as_uri()
    visit = PageVisit(text="")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.route("**/*", lambda route: route.continue_()
                       if route.request.url == url else route.abort("internetdisconnected"))
            page.on("request", lambda r: visit.requests.append(r.url))
            page.on("requestfailed", lambda r: visit.failed.append(r.url))
            page.on("console", lambda m: visit.console_errors.append(m.text)
                    if m.type == "error" else None)
            page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
            page.goto(url, wait_until="load")
            visit.text = page.inner_text("body")
            visit.title = page.title()
            visit.counts = page.eval_on_selector_all(
                "[data-count]",
                "els => Object.fromEntries(els.map(e => [e.dataset.count, "
                "(e.querySelector('.n') || e).innerText.trim()]))")
            visit.screenshot = page.screenshot(full_page=full_page,
                                               path=str(screenshot) if screenshot else None)
        finally:
            browser.close()
    return visit


def main() -> None:
    """``python tests/browser.py PAGE.html OUT.png``: the README's screenshot of a report (the
    top `--height` pixels, loaded offline as in the tests)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=1250)
    args = parser.parse_args()
    visit = open_offline(args.page, screenshot=args.png, width=args.width, height=args.height,
                         full_page=False)
    assert not visit.failed and visit.requests == [args.page.resolve().as_uri()]


if __name__ == "__main__":
    main()

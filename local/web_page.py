"""Serve web/ on loopback and drive the page in a real browser: shared by make web, the test and the bench.

    python -m local.web_page [--port 8000]      # what `make web` runs: serve web/ on 127.0.0.1

The browser is the system's Chromium (Debian package ``chromium``) driven by Playwright: Playwright's
own browser download is never used (``executable_path``), so nothing but the Debian package is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from local.loopback import LoopbackServer, QuietHandler

REPO = Path(__file__).resolve().parent.parent
WEB_DIR = REPO / "web"
MODEL = WEB_DIR / "model" / "model.tflite"
BUNDLE = WEB_DIR / "node_modules" / "@mediapipe" / "tasks-vision" / "vision_bundle.mjs"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
# Model load (22 MB from loopback + WASM compile) and the first inference take seconds on 2 cores.
LOAD_TIMEOUT_MS = 120_000
CLASSIFY_TIMEOUT_MS = 60_000


class _Handler(QuietHandler, SimpleHTTPRequestHandler):
    # Module scripts and WASM streaming compilation need these exact types; Python 3.11's table
    # lacks .mjs.
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".tflite": "application/octet-stream",
    }


def missing_parts() -> list[str]:
    """What the page needs and is not there yet (`make web` builds both)."""
    missing = []
    if not MODEL.is_file():
        missing.append(f"{MODEL.relative_to(REPO)} (make ondevice)")
    if not BUNDLE.is_file():
        missing.append("web/node_modules (cd web && npm ci)")
    return missing


@contextlib.contextmanager
def serve(root: Path = WEB_DIR, port: int = 0) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1:``port`` (0 = any free port) in a thread; yield its base URL."""
    with LoopbackServer(functools.partial(_Handler, directory=str(root)), port=port) as server:
        yield server.url("/")


def chromium_path() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def browser() -> Iterator[object]:
    """Headless system Chromium under Playwright (no sandbox: we run as root in containers)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        raise RuntimeError("No Chromium found: apt-get install chromium (or set CHROMIUM=/path/to/chrome).")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


def open_page(browser_instance, base_url: str, query: str = ""):
    """A new page on the classifier, once its model is loaded; its console errors are collected."""
    page = browser_instance.new_page(viewport={"width": 900, "height": 900})
    page.console_errors = []  # type: ignore[attr-defined]
    page.requests = []  # type: ignore[attr-defined]  # (method, url) of every request, from the first
    page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
    page.on("request", lambda request: page.requests.append((request.method, request.url)))
    page.goto(base_url + "index.html" + query)
    # Selectors, not wait_for_function: the page's CSP forbids the eval that the latter needs.
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=LOAD_TIMEOUT_MS)
    return page


def classify(page, image: Path) -> dict:
    """Upload ``image`` through the page's file input; return what the page shows."""
    page.evaluate("document.body.dataset.state = 'waiting'")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=CLASSIFY_TIMEOUT_MS)
    return page.evaluate(
        """() => ({
            state: document.body.dataset.state,
            status: document.getElementById('status').textContent,
            ms: Number(document.getElementById('timing').dataset.ms),
            timing: document.getElementById('timing').textContent,
            results: [...document.querySelectorAll('#results li')].map(li => ({
                label: li.dataset.label, score: Number(li.dataset.score),
                shown: li.querySelector('.label').textContent,
                bar: li.querySelector('.bar span').getBoundingClientRect().width
                     / li.querySelector('.bar').getBoundingClientRect().width,
            })),
        })"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve web/ on 127.0.0.1 (Ctrl-C to stop).")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    missing = missing_parts()
    if missing:
        print("error: missing " + ", ".join(missing))
        return 2
    with serve(port=args.port) as url:
        print(f"Open {url} (loopback only; Ctrl-C stops it)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The in-browser page (web/) in headless Chromium: it labels real sample photos, and talks to nobody.

Needs what `make test-web` installs: web/node_modules (npm ci), web/model/model.tflite (make ondevice),
playwright (the web extra) and Debian's chromium. Under plain `make test` the module is skipped when
one of them is missing; `make test-web` sets REQUIRE_WEB=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from local import web_page

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


def _missing() -> list[str]:
    missing = web_page.missing_parts()
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[web]')")
    if web_page.chromium_path() is None:
        missing.append("chromium (apt-get install chromium)")
    return missing


@pytest.fixture(scope="module")
def web_parts():
    missing = _missing()
    if missing:
        message = "the page's parts are missing: " + ", ".join(missing) + " (make test-web installs them)"
        if os.environ.get("REQUIRE_WEB"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser(web_parts):
    with web_page.browser() as instance:
        yield instance


@pytest.fixture(scope="module")
def site():
    with web_page.serve() as url:
        yield url


@pytest.fixture(scope="module")
def page(browser, site):
    page = web_page.open_page(browser, site)
    assert page.get_attribute("body", "data-state") == "ready", page.text_content("#status")
    yield page
    page.close()


def _cli_top1(image: Path) -> str:
    from lambda_function.classifier import Classifier
    from lambda_function.preprocess import preprocess

    classifier = Classifier.from_path(REPO / "lambda_function" / "model" / "model.tflite", num_threads=1)
    probs = classifier.predict(preprocess(image.read_bytes(), classifier.input_size))
    return classifier.labels[int(probs.argmax())]


@pytest.mark.parametrize("sample, expected", [("pants.jpg", "pants"), ("shirt.jpg", "shirt")])
def test_the_page_labels_sample_photos_like_our_cli(page, sample, expected):
    shown = web_page.classify(page, SAMPLES / sample)
    assert shown["state"] == "done", shown["status"]
    results = shown["results"]
    assert [r["label"] for r in results][0] == expected == _cli_top1(SAMPLES / sample)
    assert len(results) == 3 and len({r["label"] for r in results}) == 3
    assert all(r["shown"] == r["label"] for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1.0 and sum(scores) <= 1.0 + 1e-5
    assert results[0]["bar"] == pytest.approx(scores[0], abs=0.02)  # the bar is the probability
    assert shown["ms"] > 0 and "Classified in" in shown["timing"]
    assert sample in shown["status"] and expected in shown["status"]


def test_a_file_that_is_not_a_photo_gets_a_message_and_the_next_photo_works(page, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    shown = web_page.classify(page, text)
    assert shown["state"] == "error" and "not an image" in shown["status"]
    fake = tmp_path / "broken.jpg"
    fake.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    shown = web_page.classify(page, fake)
    assert shown["state"] == "error" and "could not be decoded" in shown["status"]
    assert web_page.classify(page, SAMPLES / "pants.jpg")["results"][0]["label"] == "pants"


def test_nothing_leaves_the_device(page, site):
    # Every request the page made, from its first, went to the loopback origin and none sent a body:
    # the module, the WASM and the model came from there; the photos went nowhere.
    web_page.classify(page, SAMPLES / "shirt.jpg")
    assert any(url.endswith("model/model.tflite") for _, url in page.requests), page.requests
    assert all(url.startswith(site) or url.startswith("blob:") for _, url in page.requests), page.requests
    assert {method for method, _ in page.requests} <= {"GET"}
    # The page's CSP is what guarantees it: a fetch to another origin is refused by the browser.
    refused = page.evaluate(
        "() => fetch('http://192.0.2.1/upload', {method: 'POST', body: 'x'}).then(() => false, () => true)"
    )
    assert refused
    # Refused by the policy, not by the (unroutable) network: the browser says which directive.
    assert any("connect-src" in e and "192.0.2.1" in e for e in page.console_errors), page.console_errors
    # MediaPipe logs its INFO lines on console.error; anything else is a page error.
    others = [e for e in page.console_errors if not e.startswith("INFO:") and "192.0.2.1" not in e]
    assert not others


def test_served_types_let_the_browser_compile_wasm_and_modules(web_parts, site):
    import urllib.request

    wasm = "node_modules/@mediapipe/tasks-vision/wasm/vision_wasm_internal.wasm"
    for path, expected in (("app.js", "text/javascript"), (wasm, "application/wasm")):
        with urllib.request.urlopen(site + path) as response:
            assert response.headers["Content-Type"] == expected


def test_no_cdn_or_other_origin_in_the_page_sources():
    for name in ("index.html", "app.js"):
        source = (REPO / "web" / name).read_text()
        assert "https://" not in source and "http://" not in source, name
    lock = (REPO / "web" / "package-lock.json").read_text()
    assert '"node_modules/@mediapipe/tasks-vision"' in lock  # npm ci installs exactly this

"""lambda_function.app.lambda_handler end to end: tiny model, images from a loopback server only."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lambda_function.classifier import Classifier
from lambda_function.fetch import FetchLimits
from tests.fixtures.bombs import exif_jpeg, progressive_jpeg_bomb
from tests.fixtures.images import BLUE, GREEN, RED, encode, raw_png, solid
from tests.fixtures.make_tiny_model import LABELS as TINY_LABELS
from tests.fixtures.proxy_events import v1_event, v2_event

REPO = Path(__file__).resolve().parents[2]
CONTEXT = SimpleNamespace(aws_request_id="req-123")


def body_of(response: dict) -> dict:
    """The response body whatever the event kind, after checking a proxy response's envelope."""
    if "statusCode" in response:
        assert response["headers"]["Content-Type"] == "application/json"
        body = json.loads(response["body"])
        expected = body["error"]["status"] if "error" in body else 200
        assert response["statusCode"] == expected
        return body
    return response


def assert_success(body: dict, label: str | None = None, top_k: int = 3) -> None:
    assert "error" not in body, body
    assert set(body) == {"predictions", "scores", "model", "timings_ms"}
    predictions = body["predictions"]
    assert len(predictions) == top_k
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert set(body["scores"]) == set(TINY_LABELS)
    assert abs(sum(body["scores"].values()) - 1.0) < 1e-4
    assert set(body["timings_ms"]) == {"fetch", "preprocess", "inference"}
    assert all(isinstance(v, float) and v >= 0 for v in body["timings_ms"].values())
    if label is not None:
        assert predictions[0]["label"] == label


def assert_error(body: dict, status: int, code: str) -> None:
    assert set(body) == {"error"}, body
    assert (body["error"]["status"], body["error"]["code"]) == (status, code), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in json.dumps(body)


def log_lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- success


def test_direct_url(app, allowed_server, red_png, tiny_model_path):
    body = app.lambda_handler({"url": allowed_server.add("/red.png", red_png)}, CONTEXT)
    assert_success(body, "red")
    assert body["predictions"][0]["score"] > 0.99
    assert body["model"] == Classifier.from_path(tiny_model_path, num_threads=1).model_id
    assert body["timings_ms"]["fetch"] > 0


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k(app, allowed_server, blue_jpeg, top_k):
    body = app.lambda_handler({"url": allowed_server.add("/b.jpg", blue_jpeg, "image/jpeg"), "top_k": top_k})
    assert_success(body, "blue", top_k=top_k)


@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
def test_proxy_json_url(app, allowed_server, red_png, make):
    url = allowed_server.add("/red.png", red_png)
    response = app.lambda_handler(make(json.dumps({"url": url, "top_k": 1})), CONTEXT)
    assert response["statusCode"] == 200
    assert_success(body_of(response), "red", top_k=1)


@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
def test_proxy_base64_image(app, make):
    data = solid(GREEN, fmt="WEBP")
    event = make(base64.b64encode(data).decode(), b64=True, headers={"Content-Type": "image/webp"})
    body = body_of(app.lambda_handler(event, CONTEXT))
    assert_success(body, "green")
    assert body["timings_ms"]["fetch"] == 0.0


@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
def test_proxy_get_query_url(app, allowed_server, red_png, make):
    url = allowed_server.add("/red.png", red_png)
    body = body_of(app.lambda_handler(make(None, method="GET", query={"url": url, "top_k": "2"}), CONTEXT))
    assert_success(body, "red", top_k=2)


def test_batch_one_bad_url_does_not_fail_the_others(app, allowed_server, red_png, blue_jpeg):
    urls = [
        allowed_server.add("/red.png", red_png),
        allowed_server.url("/missing.png"),  # 404 upstream
        42,
        "ftp://example.com/x.png",
        allowed_server.add("/blue.jpg", blue_jpeg, "image/jpeg"),
        allowed_server.add("/page", b"<html></html>", "image/jpeg"),
    ]
    response = app.lambda_handler({"urls": urls, "top_k": 1}, CONTEXT)
    results = response["results"]
    assert len(results) == len(urls)
    assert_success(results[0], "red", top_k=1)
    assert_error(results[1], 502, "upstream_error")
    assert_error(results[2], 400, "invalid_url")
    assert_error(results[3], 400, "unsupported_scheme")
    assert_success(results[4], "blue", top_k=1)
    assert_error(results[5], 415, "unsupported_media_type")


def test_batch_through_a_proxy_is_200_with_per_item_errors(app, allowed_server, red_png):
    urls = [allowed_server.add("/red.png", red_png), allowed_server.url("/missing.png")]
    response = app.lambda_handler(v2_event(json.dumps({"urls": urls})), CONTEXT)
    assert response["statusCode"] == 200
    results = json.loads(response["body"])["results"]
    assert_success(results[0], "red")
    assert_error(results[1], 502, "upstream_error")


# ---------------------------------------------------------------- decoding edge cases that must succeed


def _cmyk_red():
    return encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)


def _png16_red():
    return raw_png(8, 8, 16, 2, [struct.pack(">HHH", 65535, 0, 0) * 8] * 8)


def _rgba_red_on_transparent():
    image = Image.new("RGBA", (40, 40), (0, 0, 255, 0))  # transparent blue must not count as blue
    image.paste((255, 0, 0, 255), (5, 5, 35, 35))
    return encode(image, "PNG")


def _palette_transparent_green():
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 blue, transparent
    image.paste(1, (5, 5, 35, 35))
    return encode(image, "PNG", transparency=0)


def _exif6():
    image = Image.new("RGB", (40, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


def _animated_gif_red_first():
    frames = [
        Image.new("RGB", (16, 16), RED),
        Image.new("RGB", (16, 16), BLUE),
        Image.new("RGB", (16, 16), BLUE),
    ]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


@pytest.mark.parametrize(
    ("make_image", "content_type", "label"),
    [
        (_cmyk_red, "image/jpeg", "red"),
        (_png16_red, "image/png", "red"),
        (_rgba_red_on_transparent, "image/png", "red"),
        (_palette_transparent_green, "image/png", "green"),
        (_exif6, "image/jpeg", "red"),
        (lambda: solid(BLUE, size=(1, 1)), "image/png", "blue"),
        (_animated_gif_red_first, "image/gif", "red"),
        (lambda: solid(GREEN, fmt="WEBP"), "image/webp", "green"),
        (lambda: solid(RED), "application/octet-stream", "red"),
        (lambda: solid(RED), "", "red"),
    ],
    ids=[
        "cmyk-jpeg",
        "png16",
        "rgba",
        "palette-trns",
        "exif6",
        "1x1",
        "animated-gif",
        "webp",
        "octet",
        "no-type",
    ],
)
def test_valid_edge_cases_succeed(app, allowed_server, make_image, content_type, label):
    body = app.lambda_handler({"url": allowed_server.add("/img", make_image(), content_type)}, CONTEXT)
    assert_success(body, label)


# ---------------------------------------------------------------- every error status through the handler


def _truncated_jpeg():
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, "JPEG")
    return data[: len(data) // 2]


BAD_IMAGES = [
    pytest.param(
        b"<!doctype html><html><body>404</body></html>",
        "image/jpeg",
        415,
        "unsupported_media_type",
        id="html-as-jpeg",
    ),
    pytest.param(b"<html></html>", "text/html", 415, "unsupported_media_type", id="html"),
    pytest.param(b"", "image/jpeg", 422, "empty_image", id="empty"),
    pytest.param(_truncated_jpeg(), "image/jpeg", 422, "invalid_image", id="truncated-jpeg"),
    pytest.param(raw_png(30000, 30000, 8, 2, None), "image/png", 422, "image_too_large", id="30000x30000"),
    pytest.param(
        np.random.default_rng(4).bytes(4096),
        "application/octet-stream",
        415,
        "unsupported_media_type",
        id="random",
    ),
    pytest.param(solid(RED, fmt="BMP"), "image/bmp", 415, "unsupported_media_type", id="bmp"),
]


@pytest.mark.parametrize(("data", "content_type", "status", "code"), BAD_IMAGES)
def test_bad_images_by_url(app, allowed_server, data, content_type, status, code):
    assert_error(
        app.lambda_handler({"url": allowed_server.add("/bad", data, content_type)}, CONTEXT), status, code
    )


# An empty proxy body is a 400 missing_body (tested with the other proxy errors); HTML needs a URL.
@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"), [p for p in BAD_IMAGES if p.id not in ("html", "empty")]
)
@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
def test_bad_images_inline(app, make, data, content_type, status, code):
    event = make(base64.b64encode(data).decode(), b64=True, headers={"content-type": content_type})
    response = app.lambda_handler(event, CONTEXT)
    assert response["statusCode"] == status
    assert_error(body_of(response), status, code)


def test_loopback_url_is_refused_unless_allowed(app, image_server, red_png):
    url = image_server.add("/red.png", red_png)
    assert_error(app.lambda_handler({"url": url}, CONTEXT), 400, "url_refused")
    assert image_server.requests == []  # refused before any connection


def test_upstream_error_is_502(app, allowed_server):
    url = allowed_server.add("/boom", b"oops", "text/plain", status=500)
    body = app.lambda_handler({"url": url}, CONTEXT)
    assert_error(body, 502, "upstream_error")
    assert "500" in body["error"]["message"]


def test_too_large_is_413(app, allowed_server):
    url = allowed_server.add("/big.jpg", b"\xff" * (FetchLimits().max_bytes + 1), "image/jpeg")
    assert_error(app.lambda_handler({"url": url}, CONTEXT), 413, "image_too_large_bytes")


def test_slow_upstream_is_504(app, allowed_server, red_png, monkeypatch):
    monkeypatch.setattr(
        app, "FETCH_LIMITS", FetchLimits(connect_timeout=0.5, read_timeout=0.2, total_timeout=0.4)
    )
    url = allowed_server.add("/slow.png", red_png, delay=1.0)
    assert_error(app.lambda_handler({"url": url}, CONTEXT), 504, "upstream_timeout")


@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
@pytest.mark.parametrize(
    ("build", "status", "code"),
    [
        (lambda make: make("{oops", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (lambda make: make('{"url": 5}'), 400, "invalid_url"),
        (lambda make: make('{"nothing": 1}'), 400, "missing_url"),
        (lambda make: make('{"url": "gopher://x/"}'), 400, "unsupported_scheme"),
        (lambda make: make('{"url": "http://127.0.0.2:9/x.png"}'), 400, "url_refused"),
        (lambda make: make('{"url": "http://x/", "top_k": 4}'), 400, "invalid_top_k"),
        (lambda make: make("%%%", b64=True), 400, "invalid_base64"),
        (lambda make: make(None), 400, "missing_body"),
    ],
)
def test_proxy_errors_set_status_code(app, make, build, status, code):
    response = app.lambda_handler(build(make), CONTEXT)
    assert response["statusCode"] == status
    assert_error(body_of(response), status, code)


def test_inline_image_over_the_limit_is_413(app, monkeypatch):
    monkeypatch.setattr("lambda_function.events.MAX_INLINE_IMAGE_BYTES", 10)
    response = app.lambda_handler(v2_event(base64.b64encode(solid(RED)).decode(), b64=True), CONTEXT)
    assert response["statusCode"] == 413
    assert_error(body_of(response), 413, "image_too_large_bytes")


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({}, "missing_url"),
        ({"url": 3}, "invalid_url"),
        ({"url": "file:///etc/passwd"}, "unsupported_scheme"),
        ("text", "invalid_request"),
        ({"urls": []}, "invalid_urls"),
        ({"urls": ["http://a/"] * 17}, "too_many_urls"),
        ({"url": "http://[::ffff:127.0.0.1]:9/"}, "url_refused"),
        ({"url": "http://x/", "top_k": 0}, "invalid_top_k"),
    ],
)
def test_direct_bad_requests_are_400(app, event, code):
    assert_error(app.lambda_handler(event, CONTEXT), 400, code)


# ---------------------------------------------------------------- 500s, robustness, logging


def test_unexpected_exception_is_a_generic_500_with_the_traceback_in_the_log(
    app, allowed_server, red_png, monkeypatch, capsys
):
    def explode(self, pixels):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Classifier, "predict", explode)
    response = app.lambda_handler(
        v1_event(json.dumps({"url": allowed_server.add("/r.png", red_png)})), CONTEXT
    )
    assert response["statusCode"] == 500
    body = body_of(response)
    assert_error(body, 500, "internal_error")
    assert "secret" not in response["body"]
    errors = [line for line in log_lines(capsys) if line["level"] == "ERROR"]
    assert errors and errors[0]["error_type"] == "RuntimeError"
    assert "secret internal detail" in errors[0]["traceback"] and "Traceback" in errors[0]["traceback"]


def test_unexpected_exception_in_one_batch_item(app, allowed_server, red_png, blue_jpeg, monkeypatch):
    real_predict = Classifier.predict

    def flaky(self, pixels):
        if pixels[0, 0, 2] > 200:  # blue images break
            raise RuntimeError("boom")
        return real_predict(self, pixels)

    monkeypatch.setattr(Classifier, "predict", flaky)
    urls = [allowed_server.add("/b.jpg", blue_jpeg, "image/jpeg"), allowed_server.add("/r.png", red_png)]
    results = app.lambda_handler({"urls": urls}, CONTEXT)["results"]
    assert_error(results[0], 500, "internal_error")
    assert_success(results[1], "red")


def test_missing_model_is_500_for_every_request_then_recovers(
    app, allowed_server, red_png, monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "gone.tflite"))
    url = allowed_server.add("/r.png", red_png)
    for event in ({"url": url}, v2_event(json.dumps({"url": url}))):
        body = body_of(app.lambda_handler(event, CONTEXT))
        assert_error(body, 500, "model_unavailable")
        assert "gone.tflite" not in json.dumps(body)  # paths stay in the log
    assert any("gone.tflite" in json.dumps(line) for line in log_lines(capsys))
    monkeypatch.setenv("MODEL_PATH", str(REPO / "tests/fixtures/tiny_model.tflite"))
    assert_success(app.lambda_handler({"url": url}, CONTEXT), "red")


def test_model_is_loaded_once_per_container(app, allowed_server, red_png, monkeypatch):
    calls = []
    real = Classifier.from_path.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Classifier, "from_path", classmethod(counting))
    url = allowed_server.add("/r.png", red_png)
    for _ in range(3):
        assert_success(app.lambda_handler({"url": url}, CONTEXT), "red")
    app.lambda_handler({"url": 1}, CONTEXT)
    app.lambda_handler({"urls": [url, url]}, CONTEXT)
    assert len(calls) == 1


def test_next_request_works_after_every_kind_of_error(app, allowed_server, red_png, monkeypatch):
    good = allowed_server.add("/r.png", red_png)
    bad_events = [
        {"url": allowed_server.add("/t.jpg", _truncated_jpeg(), "image/jpeg")},
        {"url": allowed_server.add("/h", b"<html>", "image/jpeg")},
        {"url": allowed_server.url("/404")},
        {"url": allowed_server.add("/big", b"\0" * (FetchLimits().max_bytes + 1))},
        {"url": "http://10.0.0.1/x.png"},
        {"top_k": "many"},
        v2_event("{bad json"),
        None,
    ]
    for event in bad_events:
        response = app.lambda_handler(event, CONTEXT)
        assert "error" in body_of(response)
        assert_success(app.lambda_handler({"url": good}, CONTEXT), "red")


def test_one_json_log_line_per_request_without_paths_or_queries(app, allowed_server, red_png, capsys):
    capsys.readouterr()
    url = allowed_server.add("/secret/path.png", red_png) + "?X-Amz-Signature=TOKEN123"
    app.lambda_handler({"url": url}, CONTEXT)
    app.lambda_handler({"url": "http://10.1.2.3/private?token=TOKEN456"}, CONTEXT)
    out = capsys.readouterr().out
    requests = [json.loads(line) for line in out.splitlines() if json.loads(line)["message"] == "request"]
    assert [r["status"] for r in requests] == [200, 400]
    first, second = requests
    assert first["request_id"] == "req-123" and first["kind"] == "direct"
    assert first["hosts"] == ["127.0.0.1"] and set(first["timings_ms"]) == {
        "fetch",
        "preprocess",
        "inference",
    }
    assert second["code"] == "url_refused" and second["hosts"] == ["10.1.2.3"]
    for secret in ("TOKEN123", "TOKEN456", "/secret/path", "/private"):
        assert secret not in out


def test_handler_without_context(app):
    assert_error(app.lambda_handler({}, None), 400, "missing_url")


# ---------------------------------------------------------------- imports


def test_runtime_never_imports_tensorflow_and_survives_a_missing_model(tmp_path):
    # A fresh interpreter: this pytest process may have imported TensorFlow for other tests.
    code = (
        "import sys, json\n"
        "import lambda_function.app as app, lambda_function.predict\n"
        "banned = ('tensorflow', 'keras', 'train', 'convert', 'boto3')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(json.dumps({'heavy': heavy, 'body': app.lambda_handler({'url': 'http://example.com/x.jpg'})}))\n"
    )
    env = {**os.environ, "MODEL_PATH": str(tmp_path / "missing.tflite")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["body"]["error"]["code"] == "model_unavailable"


def test_runtime_requirements_are_only_the_runtime():
    lines = (REPO / "lambda_function/requirements.txt").read_text().splitlines()
    names = {line.split(">")[0].split("=")[0].strip().lower() for line in lines if line.strip()[:1].isalpha()}
    assert names == {"ai-edge-litert", "numpy", "pillow"}


# ---------------------------------------------------------------- hostile requests (issue 12)


def _inline(data: bytes) -> dict:
    return v2_event(base64.b64encode(data).decode(), b64=True, headers={"content-type": "image/jpeg"})


JSON = {"content-type": "application/json"}
HOSTILE = [
    pytest.param(lambda: _inline(progressive_jpeg_bomb(64, 64, 100)), 422, "image_too_complex", id="scans"),
    pytest.param(lambda: _inline(raw_png(7071, 7071, 16, 0, None)), 422, "image_too_large", id="png16"),
    pytest.param(lambda: {"url": "http://x/", "top_k": "9" * 5000}, 400, "invalid_top_k", id="top_k-str"),
    pytest.param(lambda: {"url": "http://x/", "top_k": 10**5000}, 400, "invalid_top_k", id="top_k-int"),
    pytest.param(
        lambda: v2_event("[" * 100_000 + "]" * 100_000, headers=JSON), 400, "invalid_json", id="deep-json"
    ),
    pytest.param(lambda: {"url": "http://example.com/a\ud800.jpg"}, 400, "invalid_url", id="surrogate-path"),
    pytest.param(lambda: {"url": "http://\ud800example/x.jpg"}, 400, "invalid_url", id="surrogate-host"),
    pytest.param(lambda: v1_event('{"url": "\udfff"}'), 400, "invalid_body", id="surrogate-body"),
    pytest.param(lambda: v2_event('{"url": "http://x/\\ud800"}'), 400, "invalid_url", id="escaped-surrogate"),
    pytest.param(lambda: {"url": "s3://my..bucket/k.jpg"}, 400, "invalid_url", id="bucket-dots"),
    pytest.param(lambda: {"url": "s3://192.168.1.1/k.jpg"}, 400, "invalid_url", id="bucket-ip"),
    pytest.param(lambda: {**v1_event("AAAA"), "isBase64Encoded": 1}, 400, "invalid_request", id="b64-flag"),
]


@pytest.mark.parametrize(("build", "status", "code"), HOSTILE)
def test_hostile_requests_are_4xx_with_one_log_line_and_the_next_request_works(
    app, build, status, code, capsys
):
    capsys.readouterr()
    response = app.lambda_handler(build(), CONTEXT)
    assert_error(body_of(response), status, code)
    assert [line["code"] for line in log_lines(capsys) if line["message"] == "request"] == [code]
    assert_success(body_of(app.lambda_handler(_inline(solid(RED, fmt="JPEG")), CONTEXT)), "red")


def test_mistyped_exif_and_a_false_string_flag_are_served(app):
    body = body_of(app.lambda_handler(_inline(exif_jpeg(6, {0x0128: (2, b"2\x00")}, size=(40, 30))), CONTEXT))
    assert_success(body)
    raw = {
        **v2_event("GIF89a not an image", headers={"content-type": "image/gif"}),
        "isBase64Encoded": "false",
    }
    assert_error(body_of(app.lambda_handler(raw, CONTEXT)), 415, "unsupported_media_type")


def test_batch_item_with_a_lone_surrogate_fails_alone(app, allowed_server, red_png):
    good = allowed_server.add("/red.png", red_png)
    body = app.lambda_handler({"urls": [good, "http://example.com/\ud800.jpg", good]}, CONTEXT)
    results = body["results"]
    assert_success(results[0], "red")
    assert_error(results[1], 400, "invalid_url")
    assert_success(results[2], "red")


def test_a_lone_surrogate_never_costs_the_request_its_log_line(app, monkeypatch):
    # A strict UTF-8 stdout, like Lambda's: a formatter writing the raw surrogate made the write fail,
    # and logging swallows that error, so the request vanished from the logs.
    raw = io.BytesIO()
    monkeypatch.setattr(
        sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    )
    app.lambda_handler({"url": "http://\ud800example/x.jpg"}, CONTEXT)
    app.lambda_handler({"urls": ["http://\udc00a/", "http://b\u00e9/"]}, CONTEXT)
    lines = raw.getvalue().decode("ascii").splitlines()  # ASCII: any stream can take it
    requests = [json.loads(line) for line in lines if json.loads(line)["message"] == "request"]
    assert [r["status"] for r in requests] == [400, 200]
    assert requests[0]["hosts"] == ["\ud800example"]
    assert requests[1]["hosts"] == ["\udc00a", "b\u00e9"]

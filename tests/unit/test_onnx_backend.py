"""The ONNX Runtime backend: an .onnx MODEL_PATH served through the same Classifier and handler as LiteRT.

The tiny colour model exists in both formats (tests/fixtures/tiny_onnx.py builds the ONNX graph from the
weights of make_tiny_model.py), so both backends must agree on the same photos; broken ONNX files must
be a 500 model_unavailable at load, and the next request with a good model must work.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from lambda_function.classifier import Classifier, bundled_model_path  # noqa: E402
from lambda_function.errors import ServingError  # noqa: E402
from lambda_function.preprocess import preprocess  # noqa: E402
from lambda_function.service import classify_bytes  # noqa: E402
from tests.fixtures import tiny_onnx  # noqa: E402
from tests.fixtures.images import BLUE, GREEN, RED, encode, solid  # noqa: E402

# fp32 on two runtimes: only summation order differs (convert/validate.py's fp32 tolerance).
FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return tiny_onnx.write(tmp_path_factory.mktemp("onnx"))


def load_error(path) -> ServingError:
    with pytest.raises(ServingError) as info:
        Classifier.from_path(path, num_threads=1)
    assert (info.value.status, info.value.code) == (500, "model_unavailable")
    return info.value


def photos() -> list[bytes]:
    """Synthetic photos: solid colours, noisy colours and mixtures, as JPEG and PNG."""
    rng = np.random.default_rng(0)
    images = [solid(color, (40, 30), fmt) for color in (RED, GREEN, BLUE) for fmt in ("PNG", "JPEG")]
    for _ in range(12):
        base = rng.uniform(0, 255, 3)
        pixels = np.clip(base + rng.normal(0, 40, (37, 45, 3)), 0, 255).astype(np.uint8)
        images.append(encode(Image.fromarray(pixels), "JPEG"))
    return images


def test_both_backends_give_the_same_answers_on_the_same_photos(onnx_model, tiny_model_path):
    lite = Classifier.from_path(tiny_model_path, num_threads=1)
    ort = Classifier.from_path(onnx_model, num_threads=1)
    assert (lite.backend, ort.backend) == ("tflite", "onnx")
    assert (ort.labels, ort.input_size, ort.resize) == (lite.labels, lite.input_size, lite.resize)
    for data in photos():
        a, b = classify_bytes(data, lite, 3), classify_bytes(data, ort, 3)
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        diff = max(abs(a["scores"][k] - b["scores"][k]) for k in a["scores"])
        assert diff <= FP32_TOLERANCE
        assert b["timings_ms"]["inference"] >= 0


def test_the_onnx_model_classifies_colours(onnx_model):
    ort = Classifier.from_path(onnx_model, num_threads=1)
    for color, label in ((RED, "red"), (GREEN, "green"), (BLUE, "blue")):
        pixels = preprocess(solid(color), ort.input_size)
        assert ort.top_k(ort.predict(pixels), 1)[0]["label"] == label


def test_num_threads_reaches_the_session(onnx_model):
    ort = Classifier.from_path(onnx_model, num_threads=3)
    assert ort.engine.session.get_session_options().intra_op_num_threads == 3


# ---------------------------------------------------------------- bad files: 500 at load, never a crash


def bad_model(tmp_path, data: bytes):
    return tiny_onnx.write(tmp_path, data, name="bad")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: tiny_onnx.build()[:200], "could not load"),  # truncated
        (lambda: b"\x89PNG\r\n\x1a\n" + bytes(500), "could not load"),  # not ONNX at all
        (lambda: b"", "could not load"),  # empty
        (lambda: tiny_onnx.build(layout="NCHW"), "input shape"),  # wrong input shape
        (lambda: tiny_onnx.build(outputs=2), "1 input and 1 output"),  # wrong number of outputs
        (lambda: tiny_onnx.build(classes=4), "4 outputs"),  # more classes than labels
    ],
    ids=["truncated", "not-onnx", "empty", "nchw-input", "two-outputs", "four-classes"],
)
def test_bad_onnx_files_are_a_clear_500_at_load(tmp_path, make, reason):
    error = load_error(bad_model(tmp_path, make()))
    assert reason in error.message


def test_a_sidecar_of_the_other_format_is_refused(tmp_path, onnx_model):
    path = tiny_onnx.write(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["format"] = "tflite"
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert "format 'tflite'" in load_error(path).message


def test_without_onnxruntime_the_error_says_how_to_build(monkeypatch, onnx_model):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert "BACKEND=onnx" in load_error(onnx_model).message


def test_model_backend_chooses_the_bundled_model():
    assert bundled_model_path({}).name == "model.tflite"
    assert bundled_model_path({"MODEL_BACKEND": "onnx"}).as_posix().endswith("model/onnx/model.onnx")
    with pytest.raises(ServingError, match="MODEL_BACKEND"):
        bundled_model_path({"MODEL_BACKEND": "tensorrt"})


# ---------------------------------------------------------------- through the handler


def test_the_handler_serves_an_onnx_model_path_and_logs_its_backend(
    app, allowed_server, red_png, onnx_model, monkeypatch, capsys
):
    monkeypatch.setenv("MODEL_PATH", str(onnx_model))
    url = allowed_server.add("/r.png", red_png)
    body = app.lambda_handler({"url": url}, None)
    assert body["predictions"][0]["label"] == "red"
    loaded = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "model loaded" in line]
    assert loaded and loaded[0]["backend"] == "onnx"


def test_a_bad_onnx_model_is_500_for_every_request_then_a_good_one_serves(
    app, allowed_server, red_png, onnx_model, monkeypatch, tmp_path
):
    monkeypatch.setenv("MODEL_PATH", str(bad_model(tmp_path, tiny_onnx.build()[:100])))
    url = allowed_server.add("/r.png", red_png)
    for _ in range(2):
        body = app.lambda_handler({"url": url}, None)
        assert body["error"]["code"] == "model_unavailable" and body["error"]["status"] == 500
        assert "onnx" not in json.dumps(body).lower()  # no paths or library names to the client
    monkeypatch.setenv("MODEL_PATH", str(onnx_model))
    assert app.lambda_handler({"url": url}, None)["predictions"][0]["label"] == "red"


def test_an_unknown_model_backend_is_a_500_not_a_crash(app, allowed_server, red_png, monkeypatch):
    monkeypatch.delenv("MODEL_PATH")
    monkeypatch.setenv("MODEL_BACKEND", "tensorrt")
    body = app.lambda_handler({"url": allowed_server.add("/r.png", red_png)}, None)
    assert body["error"]["code"] == "model_unavailable"


def test_the_bundled_onnx_model_is_the_bundled_tflite_models_twin():
    """Both bundled files come from the same trained model and name the same label on every sample photo
    (a stale ONNX file, left behind by a retrained TFLite one, fails here)."""
    from pathlib import Path

    tflite = Classifier.from_path(bundled_model_path({"MODEL_BACKEND": "tflite"}), num_threads=1)
    onnx = Classifier.from_path(bundled_model_path({"MODEL_BACKEND": "onnx"}), num_threads=1)
    assert onnx.meta["source"] == tflite.meta["source"] and onnx.meta["labels"] == tflite.meta["labels"]
    assert onnx.meta["quantization"]["activations"].startswith("uint8")
    photos = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.jpg"))
    assert len(photos) == 10
    for photo in photos:
        data = photo.read_bytes()
        labels = [model.top_k(model.predict(preprocess(data, model.input_size, model.resize)), 1)[0]["label"]
                  for model in (tflite, onnx)]  # fmt: skip
        assert labels[0] == labels[1], photo.name


def test_the_onnx_backend_turns_onnxruntime_telemetry_off(onnx_model, tmp_path):
    """onnxruntime sends usage events and keeps a device ID under XDG_CACHE_HOME unless
    ORT_DISABLE_TELEMETRY is set before it starts: the engine sets it (a user's own value wins)."""
    import os
    import subprocess

    cache = tmp_path / "xdg-cache"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["XDG_CACHE_HOME"] = str(cache)
    script = (
        "import os; from lambda_function.classifier import Classifier; "
        f"Classifier.from_path({str(onnx_model)!r}, num_threads=1); "
        "print(os.environ.get('ORT_DISABLE_TELEMETRY'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert not cache.exists() or not any(cache.rglob("*")), "onnxruntime wrote its telemetry files"
    assert done.stdout.strip() == "1"
    assert "telemetry" not in done.stderr

"""The deployment artifact serves requests with nothing but what it ships.

``deploy/build_artifact.py --platform local`` builds the same layout ``sam build`` does (for this
interpreter), then a fresh ``python -I -S`` (no site-packages: TensorFlow is physically absent) imports
the handler from the artifact and classifies images fetched from a loopback HTTP server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BLUE, GREEN, TINY_LABELS, solid

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "build_artifact.py"
BUNDLED_MODEL = REPO / "lambda_function" / "model" / "model.tflite"
SAMPLE_PHOTO = REPO / "samples" / "pants.jpg"
# Same budget as build_artifact.SIZE_BUDGET_BYTES (Lambda's own limit is 250 MB unzipped).
SIZE_BUDGET_BYTES = 160 * 1000 * 1000
RESULT_MARKER = "ARTIFACT-RESULT "
# Packages that must never reach the artifact (the runtime would not need them, and they are huge).
FORBIDDEN_TOP_LEVEL = ("tensorflow", "keras", "tf_keras", "train", "convert", "tests", "onnx", "onnxruntime")

# Runs in the child: argv = [artifact, events_json, marker]. Prints one marker line of JSON for the parent.
CHILD = """
import json, sys
artifact, events, marker = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.insert(0, artifact)

def importable(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True

tensorflow_importable = importable("tensorflow")
keras_importable = importable("keras")
import lambda_function.app as app
import ai_edge_litert, numpy, PIL

result = {
    "tensorflow_importable": tensorflow_importable,
    "keras_importable": keras_importable,
    "files": {m.__name__: m.__file__ for m in (app, ai_edge_litert, numpy, PIL)},
    "site_packages_on_path": [p for p in sys.path if "site-packages" in p],
    "heavy_modules": sorted(
        m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "train", "convert", "boto3"}
    ),
    "responses": [app.lambda_handler(event, None) for event in events],
}
print(marker + json.dumps(result), flush=True)
"""


def build(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--platform", "local", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "build"
    result = build(out)
    assert result.returncode == 0, result.stderr
    assert "bytes" in result.stdout and str(out) in result.stdout
    return out


def run_handler(artifact: Path, events: list[dict], workdir: Path, **env: str) -> dict:
    """Invoke the handler from ``artifact`` in a fresh interpreter with no site-packages."""
    child_env = {
        key: value for key, value in os.environ.items() if key not in ("MODEL_PATH", "FETCH_ALLOWED_HOSTS")
    }
    child_env.update(NUM_THREADS="1", **env)
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", CHILD, str(artifact), json.dumps(events), RESULT_MARKER],
        capture_output=True,
        text=True,
        cwd=workdir,  # not the repo root: nothing may be imported from the source tree
        env=child_env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert len(lines) == 1, result.stdout[-4000:]
    return json.loads(lines[0][len(RESULT_MARKER) :])


def body_of(response: dict) -> dict:
    if "statusCode" in response:
        assert response["statusCode"] == 200, response
        return json.loads(response["body"])
    return response


def function_url_event(url: str) -> dict:
    """The Function URL shape (payload 2.0) that events/function-url.json holds, with our body."""
    event = json.loads((REPO / "events" / "function-url.json").read_text())
    event["body"] = json.dumps({"url": url, "top_k": 2})
    return event


def test_artifact_layout(artifact):
    top = {path.name for path in artifact.iterdir()}
    assert {"lambda_function", "numpy", "PIL", "ai_edge_litert"} <= top
    assert not top & set(FORBIDDEN_TOP_LEVEL)
    package = artifact / "lambda_function"
    assert (package / "app.py").is_file() and (package / "preprocess.py").is_file()
    assert (package / "model").is_dir()
    assert not (package / "Makefile").exists() and not (package / "requirements.txt").exists()
    # Bytecode, if any, is this interpreter's, compiled at build time (never a stale dev cache).
    tag = sys.implementation.cache_tag
    compiled = list(artifact.rglob("*.pyc"))
    assert all(pyc.parent.name == "__pycache__" and f".{tag}." in pyc.name for pyc in compiled)
    assert (package / "__pycache__" / f"app.{tag}.pyc").is_file()
    assert not (artifact / "bin").exists()


def test_artifact_fits_the_size_budget(artifact):
    size = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
    print(f"local artifact: {size / 1e6:.1f} MB unzipped (bundled model present: {BUNDLED_MODEL.is_file()})")
    assert size < SIZE_BUDGET_BYTES


def test_handler_runs_from_artifact_without_tensorflow(artifact, image_server, tmp_path):
    green = image_server.add("/green.png", solid(GREEN, (64, 48)))
    blue = image_server.add("/blue.jpg", solid(BLUE, (50, 50), fmt="JPEG"), content_type="image/jpeg")
    tiny = REPO / "tests" / "fixtures" / "tiny_model.tflite"
    events = [{"url": green}, function_url_event(blue), {"urls": [green, blue]}]

    result = run_handler(
        artifact, events, tmp_path, MODEL_PATH=str(tiny), FETCH_ALLOWED_HOSTS=image_server.host
    )

    assert result["tensorflow_importable"] is False
    assert result["keras_importable"] is False
    assert result["site_packages_on_path"] == []
    assert result["heavy_modules"] == []
    for name, file in result["files"].items():
        assert Path(file).is_relative_to(artifact), f"{name} came from {file}, not the artifact"

    direct, proxy, batch = result["responses"]
    assert body_of(direct)["predictions"][0]["label"] == "green"
    assert set(body_of(direct)["scores"]) == set(TINY_LABELS)
    proxied = body_of(proxy)
    assert [p["label"] for p in proxied["predictions"]][:1] == ["blue"] and len(proxied["predictions"]) == 2
    assert [r["predictions"][0]["label"] for r in batch["results"]] == ["green", "blue"]
    assert sorted(image_server.requests) == ["/blue.jpg", "/blue.jpg", "/green.png", "/green.png"]


def test_handler_refuses_loopback_without_the_test_exemption(artifact, image_server, tmp_path):
    # The artifact must not carry a way around the private-address block: no env, no fetch.
    url = image_server.add("/green.png", solid(GREEN))
    tiny = REPO / "tests" / "fixtures" / "tiny_model.tflite"

    result = run_handler(artifact, [{"url": url}], tmp_path, MODEL_PATH=str(tiny))

    (response,) = result["responses"]
    assert response["error"]["status"] == 400, response
    assert image_server.requests == []


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="no bundled model yet (lambda_function/model/)")
def test_bundled_model_serves_from_artifact(artifact, image_server, tmp_path):
    labels = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())["labels"]
    if SAMPLE_PHOTO.is_file():
        url = image_server.add("/photo.jpg", SAMPLE_PHOTO.read_bytes(), content_type="image/jpeg")
    else:
        url = image_server.add("/photo.png", solid(GREEN, (320, 240)))

    # No MODEL_PATH: the handler must find the model the artifact bundles.
    result = run_handler(
        artifact, [{"url": url, "top_k": 3}], tmp_path, FETCH_ALLOWED_HOSTS=image_server.host
    )

    body = body_of(result["responses"][0])
    assert "error" not in body, body
    assert len(labels) == 10 and set(body["scores"]) == set(labels)
    assert abs(sum(body["scores"].values()) - 1.0) < 1e-3
    top = [p["label"] for p in body["predictions"]]
    assert len(top) == 3 and len(set(top)) == 3 and set(top) <= set(labels)


def test_build_refuses_to_clear_a_directory_that_is_not_an_artifact(tmp_path):
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")

    result = build(tmp_path)

    assert result.returncode == 1
    assert "refusing" in result.stderr and "Traceback" not in result.stderr
    assert precious.read_text() == "keep me"


def test_a_build_without_its_backends_bundled_model_fails_before_downloading(tmp_path):
    from deploy.build_artifact import BuildError, build_artifact

    package = tmp_path / "lambda_function"
    shutil.copytree(REPO / "lambda_function", package, ignore=shutil.ignore_patterns("onnx", "*.tflite"))
    for backend, missing in (("onnx", "model/onnx/model.onnx"), ("tflite", "model/model.tflite")):
        with pytest.raises(BuildError, match=f"bundles lambda_function/{missing}, which is missing"):
            build_artifact(tmp_path / "out", platform="lambda", package=package, backend=backend)
    assert not (tmp_path / "out").exists()

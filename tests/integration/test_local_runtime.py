"""The built artifact under AWS's runtime interface client (awslambdaric) and a loopback Runtime API.

What Lambda gives the function is reproduced by local/lambda_runtime.py: template.yaml's handler string
and environment, the AWS_LAMBDA_* variables, a read-only task root, only /tmp writable, no HOME. Every
event in events/ goes through it, its URLs pointed at a loopback server holding samples/, and is served
by the bundled model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local.lambda_runtime import LocalLambda, SampleServer, can_use_mount_namespace, read_function_config
from tests.fixtures.emf import parse_emf

REPO = Path(__file__).resolve().parents[2]
EVENTS = sorted((REPO / "events").glob("*.json"))
SAMPLES = REPO / "samples"
BUNDLED_MODEL = REPO / "lambda_function" / "model" / "model.tflite"

pytest.importorskip("awslambdaric", reason="awslambdaric is in the dev extras (pip install -e '.[dev]')")

# A handler that reports what its sandbox allows (the real handler is not told how it is run).
PROBE = """
import os

def handler(event, context):
    def writable(directory):
        try:
            with open(os.path.join(directory, "probe.txt"), "w") as handle:
                handle.write("x")
            return True
        except OSError:
            return False
    return {
        "env": dict(os.environ),
        "task_root_writable": writable(os.environ["LAMBDA_TASK_ROOT"]),
        "tmp_writable": writable("/tmp"),
        "root_writable": writable("/"),
        "cwd": os.getcwd(),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_arn": context.invoked_function_arn,
    }
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runtime-artifact") / "build"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "build_artifact.py"),
            "--platform",
            "local",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def samples():
    with SampleServer(SAMPLES) as server:
        yield server


def body_of(payload: dict) -> dict:
    if "statusCode" in payload:
        assert payload["statusCode"] == 200, payload
        assert payload["headers"]["Content-Type"] == "application/json"
        return json.loads(payload["body"])
    return payload


def urls_in(event: object) -> list[str]:
    """Every URL in ``event``, in order, also inside JSON-encoded bodies."""
    if isinstance(event, dict):
        return [url for value in event.values() for url in urls_in(value)]
    if isinstance(event, list):
        return [url for value in event for url in urls_in(value)]
    if isinstance(event, str):
        if "://" in event and " " not in event:
            return [event]
        if event.startswith("{"):
            return urls_in(json.loads(event))
    return []


def test_handler_and_environment_come_from_the_template():
    config = read_function_config()

    assert config.handler == "lambda_function.app.lambda_handler"
    assert config.runtime.startswith("python3.")
    assert "NUM_THREADS" in config.environment and "LOG_LEVEL" in config.environment
    assert "FETCH_ALLOWED_HOSTS" not in config.environment and "MODEL_PATH" not in config.environment
    # Lambda writes the JSON log lines itself (with its request id); INFO lets the request line through.
    assert config.log_format == "JSON" and config.log_level == "INFO"


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="no bundled model (lambda_function/model/)")
def test_every_event_runs_through_the_runtime_interface_client(artifact, samples):
    with LocalLambda(artifact, extra_env={"FETCH_ALLOWED_HOSTS": samples.host}) as function:
        assert not function.init_failed, function.init_logs
        assert any('"model loaded"' in line for line in function.init_logs), function.init_logs
        for path in EVENTS:
            event = samples.rewrite(json.loads(path.read_text()))
            result = function.invoke(event)

            assert result.status == "ok", (path.name, result)
            # The same request id reaches the handler (context) and the runtime's JSON log line, which
            # carries our fields and the CloudWatch metrics block.
            request_lines = [r for r in result.log_records() if r.get("message") == "request"]
            assert len(request_lines) == 1, (path.name, result.logs)
            line = request_lines[0]
            assert line["requestId"] == line["request_id"] == result.request_id
            assert line["level"] == "INFO" and line["logger"] == "lambda_function"
            metrics = parse_emf(line)
            assert (
                metrics[("Requests", (("EventKind", line["kind"]), ("StatusCode", str(line["status"]))))] == 1
            )
            local_urls = [u for u in urls_in(event) if u.startswith(f"http://{samples.host}/")]
            if not local_urls:
                continue  # an event that names no URL (nothing to point at the samples)
            body = body_of(result.payload)
            items = body["results"] if "results" in body else [body]
            assert len(items) == len(local_urls), (path.name, body)
            for url, item in zip(local_urls, items, strict=True):
                assert set(item) >= {"predictions", "scores", "model", "timings_ms"}, item
                expected = Path(url).stem  # samples/<label>.jpg
                assert item["predictions"][0]["label"] == expected, (path.name, url, item["predictions"])


def test_sandbox_is_what_lambda_gives(tmp_path):
    probe_artifact = tmp_path / "probe-artifact"
    (probe_artifact / "lambda_function").mkdir(parents=True)
    (probe_artifact / "probe.py").write_text(PROBE)
    config = dataclasses.replace(read_function_config(), handler="probe.handler")

    with LocalLambda(probe_artifact, config) as function:
        result = function.invoke({"ping": True})

    assert result.status == "ok", result
    report = result.payload
    env = report["env"]
    assert "HOME" not in env and "VIRTUAL_ENV" not in env
    assert env["_HANDLER"] == "probe.handler" and env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["LAMBDA_TASK_ROOT"] == report["cwd"]
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == str(config.memory_mb)
    for name, value in config.environment.items():
        assert env[name] == value
    assert 0 < report["remaining_ms"] <= config.timeout_s * 1000
    assert report["function_arn"].startswith("arn:aws:lambda:")
    assert report["tmp_writable"] is True
    if os.geteuid() == 0 and not can_use_mount_namespace():
        pytest.skip(
            "root without a private mount namespace: file permissions cannot make the task root read-only"
        )
    assert report["task_root_writable"] is False
    if function.isolate:
        assert report["root_writable"] is False


def test_a_model_that_fails_to_load_answers_500_and_logs_why(artifact, tmp_path):
    missing = tmp_path / "missing.tflite"
    with LocalLambda(artifact, extra_env={"MODEL_PATH": str(missing)}) as function:
        init_failed = function.init_failed
        init_records = [json.loads(line) for line in function.init_logs if line.startswith("{")]
        result = function.invoke({"url": "https://example.com/pants.jpg"})

    # The init phase succeeds (the import does), the reason is in the log, each request is a clean 500.
    assert not init_failed
    failures = [r for r in init_records if r.get("message") == "model load failed"]
    assert len(failures) == 1 and failures[0]["level"] == "ERROR"
    assert str(missing) in json.dumps(failures[0])
    assert result.status == "ok"
    assert result.payload["error"]["status"] == 500
    assert result.payload["error"]["code"] == "model_unavailable"
    assert "Traceback" not in json.dumps(result.payload)


def test_a_handler_that_cannot_be_imported_is_an_init_error(artifact):
    config = dataclasses.replace(read_function_config(), handler="lambda_function.missing_module.handler")

    with LocalLambda(artifact, config) as function:
        init_failed = function.init_failed
        result = function.invoke({"url": "https://example.com/pants.jpg"})
        logs = function.init_logs + result.logs

    assert init_failed
    assert any("Runtime.ImportModuleError" in line for line in logs), logs
    assert result.status == "init_error"
    assert result.payload["errorType"] == "Runtime.ImportModuleError"
    assert "lambda_function.missing_module" in result.payload["errorMessage"]


# ---------------------------------------------------------------- the ONNX build (make build BACKEND=onnx)


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory) -> Path:
    """The ONNX build for this interpreter, its bundled model the tiny colour model as ONNX."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from deploy.build_artifact import build_artifact
    from tests.fixtures import tiny_onnx

    root = tmp_path_factory.mktemp("onnx-artifact")
    package = root / "lambda_function"
    # The bundled models stay behind: the tiny ONNX model takes the bundled ONNX model's place.
    shutil.copytree(
        REPO / "lambda_function", package, ignore=shutil.ignore_patterns("__pycache__", "*.tflite", "onnx")
    )
    (package / "model" / "onnx").mkdir()
    tiny_onnx.write(package / "model" / "onnx", name="model")
    built = build_artifact(root / "build", platform="local", package=package, backend="onnx")
    assert built.backend == "onnx"
    return built.path


def test_the_onnx_build_ships_onnxruntime_and_its_model_only(onnx_artifact):
    assert (onnx_artifact / "onnxruntime").is_dir() and not (onnx_artifact / "ai_edge_litert").exists()
    model_dir = onnx_artifact / "lambda_function" / "model"
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()) == [
        "onnx/model.json",
        "onnx/model.onnx",
    ]


def test_the_onnx_build_serves_under_the_runtime_interface_client(onnx_artifact, samples, tmp_path):
    from tests.fixtures import tiny_onnx

    with LocalLambda(onnx_artifact, extra_env={"FETCH_ALLOWED_HOSTS": samples.host}) as function:
        assert not function.init_failed, function.init_logs
        loaded = [json.loads(line) for line in function.init_logs if '"model loaded"' in line]
        result = function.invoke(samples.rewrite({"url": "https://example.com/pants.jpg"}))
    assert len(loaded) == 1 and loaded[0]["backend"] == "onnx", function.init_logs
    assert result.status == "ok"
    body = body_of(result.payload)
    assert body["predictions"][0]["label"] in {"red", "green", "blue"}  # the tiny model's classes

    # MODEL_PATH at an .onnx file outside the task root, as with make invoke-local's --env
    model = tiny_onnx.write(tmp_path)
    with LocalLambda(
        onnx_artifact, extra_env={"FETCH_ALLOWED_HOSTS": samples.host, "MODEL_PATH": str(model)}
    ) as function:
        result = function.invoke(samples.rewrite({"url": "https://example.com/pants.jpg"}))
    assert body_of(result.payload)["model"] == body["model"]


def test_an_onnx_model_path_in_the_default_build_is_a_500_that_says_why(artifact, samples, tmp_path):
    pytest.importorskip("onnx")
    from tests.fixtures import tiny_onnx

    model = tiny_onnx.write(tmp_path)  # the LiteRT build has no onnxruntime
    with LocalLambda(
        artifact, extra_env={"FETCH_ALLOWED_HOSTS": samples.host, "MODEL_PATH": str(model)}
    ) as function:
        init_records = [json.loads(line) for line in function.init_logs if line.startswith("{")]
        result = function.invoke(samples.rewrite({"url": "https://example.com/pants.jpg"}))
    assert result.payload["error"]["code"] == "model_unavailable"
    (failure,) = [r for r in init_records if r.get("message") == "model load failed"]
    assert "BACKEND=onnx" in failure["reason"]

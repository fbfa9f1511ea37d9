"""``python -m lambda_function.predict`` in a subprocess: files, loopback URLs, table and JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import BLUE, GREEN, RED, solid
from tests.fixtures.make_tiny_model import LABELS as TINY_LABELS

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict | None = None, module: str = "lambda_function.predict"):
    # Only what the test sets: an inherited MODEL_PATH or allow-list would change what is tested.
    inherited = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "FETCH_ALLOWED_HOSTS")}
    full_env = {**inherited, "NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, color, fmt in (("red", RED, "PNG"), ("green", GREEN, "JPEG"), ("blue", BLUE, "WEBP")):
        paths[name] = tmp_path / f"{name}.{fmt.lower()}"
        paths[name].write_bytes(solid(color, size=(64, 48), fmt=fmt))
    return paths


def test_files_as_a_table(tiny_model_path, images):
    result = run_cli(str(images["red"]), str(images["blue"]), "--model", str(tiny_model_path), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6  # a header line and two label lines per input
    assert lines[0].startswith(str(images["red"]))
    assert lines[1].split()[0] == "red" and float(lines[1].split()[1]) > 0.99
    assert lines[4].split()[0] == "blue"
    # Aligned: every score starts in the same column within an input's block.
    assert len({line.index(line.split()[1]) for line in lines[1:3]}) == 1
    assert "Traceback" not in result.stderr


def test_json_lines_match_the_handler_body(tiny_model_path, images):
    result = run_cli(str(images["green"]), str(images["red"]), "--model", str(tiny_model_path), "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(images["green"]), str(images["red"])]
    assert [r["predictions"][0]["label"] for r in records] == ["green", "red"]
    for record in records:
        assert set(record) == {"input", "predictions", "scores", "model", "timings_ms"}
        assert len(record["predictions"]) == 3 and set(record["scores"]) == set(TINY_LABELS)


def test_model_from_env(tiny_model_path, images):
    result = run_cli(str(images["blue"]), "--json", env={"MODEL_PATH": str(tiny_model_path)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["label"] == "blue"


def test_loopback_url_needs_the_allow_list(tiny_model_path, allowed_server):
    url = allowed_server.add("/red.png", solid(RED))
    allowed = run_cli(
        url, "--model", str(tiny_model_path), "--json", env={"FETCH_ALLOWED_HOSTS": allowed_server.host}
    )
    assert allowed.returncode == 0, allowed.stderr
    record = json.loads(allowed.stdout)
    assert record["input"] == url and record["predictions"][0]["label"] == "red"
    assert record["timings_ms"]["fetch"] > 0

    refused = run_cli(url, "--model", str(tiny_model_path), env={"FETCH_ALLOWED_HOSTS": ""})
    assert refused.returncode == 1
    assert "url_refused" in refused.stderr
    assert "FETCH_ALLOWED_HOSTS=127.0.0.1:" in refused.stderr  # the hint names the switch
    assert allowed_server.requests == ["/red.png"]  # the refused run never connected


def test_a_failing_input_sets_the_exit_code_but_the_others_still_run(tiny_model_path, images, tmp_path):
    html = tmp_path / "page.jpg"
    html.write_text("<html>not an image</html>")
    args = [str(images["red"]), str(html), str(tmp_path / "missing.png"), str(images["blue"])]
    result = run_cli(*args, "--model", str(tiny_model_path), "--json")
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("error", {}).get("code") for r in records] == [
        None,
        "unsupported_media_type",
        "file_not_found",
        None,
    ]
    assert records[3]["predictions"][0]["label"] == "blue"
    errors = result.stderr.strip().splitlines()
    assert any(str(html) in e and "415" in e for e in errors)
    assert "Traceback" not in result.stderr


def test_human_mode_prints_errors_to_stderr_only(tiny_model_path, tmp_path):
    missing = tmp_path / "nope.jpg"
    result = run_cli(str(missing), "--model", str(tiny_model_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "file_not_found" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_is_exit_2(images, tmp_path):
    result = run_cli(str(images["red"]), "--model", str(tmp_path / "none.tflite"))
    assert result.returncode == 2
    assert "none.tflite" in result.stderr and "Traceback" not in result.stderr


def test_bad_top_k_is_exit_2(tiny_model_path, images):
    result = run_cli(str(images["red"]), "--model", str(tiny_model_path), "--top-k", "9")
    assert result.returncode == 2
    # Named as the user typed it, not as the API field.
    assert "--top-k 9 is more than the model's 3 labels" in result.stderr and "top_k" not in result.stderr


@pytest.mark.parametrize(
    "flag, value",
    [("--top-k", "0"), ("--top-k", "-1"), ("--top-k", "two"), ("--min-confidence", "0")]
    + [("--min-confidence", v) for v in ("1.5", "-0.2", "nan", "inf", "high")],
)
def test_flags_are_checked_before_the_model_loads(images, tmp_path, flag, value):
    # The model does not exist: a flag error must come first, and name the flag.
    missing = tmp_path / "absent.tflite"
    result = run_cli(str(images["red"]), "--model", str(missing), f"{flag}={value}")
    assert result.returncode == 2
    assert f"argument {flag}:" in result.stderr and repr(value) in result.stderr
    assert "absent.tflite" not in result.stderr and "Traceback" not in result.stderr


def test_help_lists_the_exit_codes():
    result = run_cli("--help")
    assert result.returncode == 0
    text = result.stdout
    assert "exit status:" in text
    for code in ("0  every input was classified", "1  at least one input failed", "2  bad arguments"):
        assert code in text
    assert "--min-confidence" in text and "--verbose" in text


def test_an_unknown_scheme_says_so(tiny_model_path):
    result = run_cli("ftp://example.com/shoe.jpg", "--model", str(tiny_model_path), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "unsupported_scheme"
    assert "'ftp' is not allowed" in result.stderr and "file_not_found" not in result.stderr


def test_no_runtime_info_lines_unless_asked(tiny_model_path, images):
    quiet = run_cli(str(images["red"]), "--model", str(tiny_model_path))
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "INFO" not in quiet.stdout
    verbose = run_cli(str(images["red"]), "--model", str(tiny_model_path), "--verbose")
    assert verbose.returncode == 0
    # XNNPACK announces itself when it takes the graph, which it does for the tiny model.
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in verbose.stderr
    assert verbose.stdout.splitlines()[1:] == quiet.stdout.splitlines()[1:]  # the same answer


def test_min_confidence_says_not_sure_and_keeps_the_top_k(tiny_model_path, tmp_path):
    grey = tmp_path / "grey.png"  # the tiny model's three scores are equal on grey: 0.33 each
    grey.write_bytes(solid((128, 128, 128)))
    red = tmp_path / "red.png"
    red.write_bytes(solid(RED))
    args = [str(red), str(grey), "--model", str(tiny_model_path), "--min-confidence", "0.5"]
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr  # "not sure" is an answer, not a failure
    sure, unsure = (json.loads(line) for line in result.stdout.splitlines())
    assert (sure["label"], sure["confident"], sure["min_confidence"]) == ("red", True, 0.5)
    assert (unsure["label"], unsure["confident"]) == (None, False)
    assert len(unsure["predictions"]) == 3 and unsure["predictions"][0]["score"] < 0.5
    table = run_cli(*args).stdout
    assert table.count("not sure") == 1 and "--min-confidence 0.5" in table
    # Without the flag the JSON is as it always was.
    plain = json.loads(run_cli(str(grey), "--model", str(tiny_model_path), "--json").stdout)
    assert set(plain) == {"input", "predictions", "scores", "model", "timings_ms"}


def test_package_main_runs_the_same_cli(tiny_model_path, images):
    result = run_cli(str(images["red"]), "--model", str(tiny_model_path), "--json", module="lambda_function")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["label"] == "red"


def test_model_backend_picks_the_bundled_model_as_the_handler_does():
    pytest.importorskip("onnxruntime")
    sidecar = json.loads((REPO / "lambda_function" / "model" / "onnx" / "model.json").read_text())
    result = run_cli("samples/pants.jpg", "--json", env={"MODEL_BACKEND": "onnx"})
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["model"] == sidecar["sha256"][:12]
    assert body["predictions"][0]["label"] == "pants"

    result = run_cli("samples/pants.jpg", env={"MODEL_BACKEND": "pytorch"})
    assert result.returncode == 2
    assert "MODEL_BACKEND must be one of tflite, onnx" in result.stderr and "Traceback" not in result.stderr

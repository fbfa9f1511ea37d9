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
    assert "top_k" in result.stderr


def test_package_main_runs_the_same_cli(tiny_model_path, images):
    result = run_cli(str(images["red"]), "--model", str(tiny_model_path), "--json", module="lambda_function")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["label"] == "red"

"""``pip install .``: the wheel carries the bundled model and the ``clothes-classify`` console script.

Built offline from a copy of the sources (``pip wheel --no-deps --no-build-isolation``: the build backend
is in the dev extras), installed with ``--no-deps --target`` into a scratch folder, and run from there on
``samples/pants.jpg``, with this environment's numpy, Pillow and LiteRT. A fresh venv with its own
dependencies from the package index is what the README promises; that was checked by hand (README).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "lambda_function", "train", "convert")
MODEL_FILES = ("model.tflite", "model.json", "MODEL_CARD.md")
SCRIPT = "clothes-classify"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # A copy: setuptools builds in the source tree (build/, *.egg-info), which must stay the user's.
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run(
        [*command, "--quiet", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_the_model_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in MODEL_FILES:
            assert f"lambda_function/model/{name}" in names, name
        packaged = archive.read("lambda_function/model/model.tflite")
        meta = json.loads(archive.read("lambda_function/model/model.json"))
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert hashlib.sha256(packaged).hexdigest() == meta["sha256"]  # the same model the sidecar describes
    assert f"{SCRIPT} = lambda_function.predict:main" in scripts
    assert not any(n.startswith(("tests/", "local/", "deploy/", "bench/")) for n in names)


def test_the_installed_console_script_classifies_a_sample(wheel, tmp_path):
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
    result = subprocess.run(
        [*install, "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "FETCH_ALLOWED_HOSTS")}
    # Outside the checkout (cwd), so the installed package and its model are what runs.
    env.update(PYTHONPATH=str(target), NUM_THREADS="1")
    sample = REPO / "samples" / "pants.jpg"
    run = subprocess.run(
        [str(target / "bin" / SCRIPT), str(sample), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no runtime INFO line
    body = json.loads(run.stdout)
    assert body["predictions"][0]["label"] == "pants"
    where = subprocess.run(
        [sys.executable, "-c", "import lambda_function.classifier as c; print(c.DEFAULT_MODEL_PATH)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)

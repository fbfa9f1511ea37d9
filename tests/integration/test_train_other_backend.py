"""``python -m train`` on Keras's JAX backend with no TensorFlow importable, as on a GPU machine whose image
holds PyTorch and JAX only (docs/training.md), and its model read back under TensorFlow, the way
``python -m convert`` reads it. Random-init Xception at 71 px on coloured shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("tensorflow")
pytest.importorskip("jax")

from tests.fixtures.shapes import write_shapes_dataset  # noqa: E402
from train.evaluate import evaluate_saved_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# The child cannot import TensorFlow: a finder first on the import path refuses it, as a missing package
# would. (A None in sys.modules would not do: Keras takes a name in sys.modules as TensorFlow being in use.)
WITHOUT_TENSORFLOW = """
import runpy, sys

class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
sys.argv[0] = "train"
runpy.run_module("train", run_name="__main__")
"""


def train_on_jax(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    command = [sys.executable, "-c", WITHOUT_TENSORFLOW, *argv]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_and_fine_tune_on_jax_without_tensorflow_then_load_under_tensorflow(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", {"train": 4, "validation": 2, "test": 2})
    out = tmp_path / "run"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--weights", "none", "--image-size", "71"]
    argv += ["--epochs", "2", "--batch-size", "8"]
    # The default extractor is converted to LiteRT by TensorFlow: refused in one line, before any work.
    refused = train_on_jax(*argv)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "use --feature-backend keras" in refused.stderr and not out.exists()

    argv += ["--feature-backend", "keras", "--fine-tune", "--fine-tune-epochs", "1", "--view-style", "photo"]
    child = train_on_jax(*argv)
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-3000:]
    assert "fine-tuning blocks 13,14" in child.stdout
    versions = json.loads((out / "config.json").read_text())["versions"]
    assert versions["keras_backend"] == "jax" and versions["jax"]
    trained = json.loads((out / "metrics.json").read_text())["calibration"]["test"]

    # This process runs Keras on TensorFlow: the JAX-made model, calibration inside, gives the same scores.
    report = evaluate_saved_model(out / "model.keras", data_dir=data, split="test")
    again = report["calibration"]
    assert again["images"] == trained["images"] == 6
    assert again["top1"] == trained["top1"]
    assert again["ece"] == pytest.approx(trained["ece"], abs=1e-5)
    assert again["brier"] == pytest.approx(trained["brier"], abs=1e-5)

"""``python -m train`` on Keras's JAX backend with no TensorFlow importable, as on a GPU machine whose image
holds PyTorch and JAX only (docs/training.md); its model read back under TensorFlow, the way ``python -m
convert`` reads it, whole and from ``studies.slim_run``'s pieces (what may come back from such a machine).
Random-init Xception at 71 px on coloured shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("tensorflow")
pytest.importorskip("jax")
keras = pytest.importorskip("keras")

from studies import slim_run  # noqa: E402
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
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__")
"""


def on_jax(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    command = [sys.executable, "-c", WITHOUT_TENSORFLOW, module, *argv]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_and_fine_tune_on_jax_without_tensorflow_then_load_under_tensorflow(tmp_path, capsys):
    data = write_shapes_dataset(tmp_path / "data", {"train": 4, "validation": 2, "test": 2})
    # A weights file of its own, as the ImageNet one is for a real run: what the pieces leave out.
    weights = tmp_path / "base.weights.h5"
    base = keras.applications.Xception(weights=None, include_top=False, input_shape=(71, 71, 3))
    base.save_weights(weights)
    out = tmp_path / "run"
    argv = ["--data-dir", str(data), "--output-dir", str(out), "--weights", str(weights)]
    argv += ["--image-size", "71", "--epochs", "2", "--batch-size", "8"]
    # The default extractor is converted to LiteRT by TensorFlow: refused in one line, before any work.
    refused = on_jax("train", *argv)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "use --feature-backend keras" in refused.stderr and not out.exists()

    argv += ["--feature-backend", "keras", "--fine-tune", "--fine-tune-epochs", "1", "--view-style", "photo"]
    child = on_jax("train", *argv)
    assert child.returncode == 0, child.stdout[-2000:] + child.stderr[-3000:]
    assert "fine-tuning blocks 13,14" in child.stdout
    versions = json.loads((out / "config.json").read_text())["versions"]
    assert versions["keras_backend"] == "jax" and versions["jax"]
    trained = json.loads((out / "metrics.json").read_text())["calibration"]["test"]

    # This process runs Keras on TensorFlow: the JAX-made model, calibration inside, gives the same scores.
    again = evaluate_saved_model(out / "model.keras", data_dir=data, split="test")["calibration"]
    assert again["images"] == trained["images"] == 6
    assert again["top1"] == trained["top1"]
    assert again["ece"] == pytest.approx(trained["ece"], abs=1e-5)
    assert again["brier"] == pytest.approx(trained["brier"], abs=1e-5)

    # Packed on JAX into pieces of at most 13 MiB: only what fine-tuning and the heads changed travels.
    pieces = tmp_path / "pieces"
    packed = on_jax("studies.slim_run", "pack", str(out), "--out-dir", str(pieces), "--max-mib", "13")
    assert packed.returncode == 0, packed.stderr[-3000:]
    files = sorted(pieces.glob("weights-*.npz"))
    assert len(files) >= 3 and all(f.stat().st_size < 13.1 * 2**20 for f in files)
    paths = {str(p) for f in files for p in np.load(f)["paths"]}
    assert {"block14_sepconv2/pointwise_kernel", "standardize/mean", "logits_5/kernel"} <= paths
    assert not any(p.startswith(("block1_", "block12_")) for p in paths)  # frozen: as in the weights file
    # A variable larger than the pieces may be is refused, not split unreadably.
    too_small = ["pack", str(out), "--out-dir", str(tmp_path / "tiny"), "--max-mib", "1"]
    assert slim_run.main(too_small) == 2
    assert "MiB, over --max-mib 1" in capsys.readouterr().err
    # Rebuilt here, on TensorFlow, from the pieces and the same weights file: the run's own test figures.
    rebuilt = tmp_path / "rebuilt"
    unpack = ["unpack", str(pieces), "--weights", str(weights)]
    assert slim_run.main([*unpack, "--output-dir", str(rebuilt), "--data-dir", str(data)]) == 0
    assert "in the run: same" in capsys.readouterr().out
    assert (rebuilt / "labels.json").read_text() == (out / "labels.json").read_text()
    # A piece lost on the way is named, not filled in from the weights file.
    files[0].unlink()
    assert slim_run.main([*unpack, "--output-dir", str(tmp_path / "partial")]) == 2
    assert "piece weights-0.npz is missing" in capsys.readouterr().err

"""Load the trained Keras model and its labels, export a SavedModel, compute Keras reference logits."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from convert.errors import ModelLoadError
from lambda_function.jsonfile import JSONFileError, labels_problem, read_json
from train.config import trained_resize
from train.errors import RunConfigError

# Written by ``python -m train`` next to model.keras; its "config" holds the training options.

# Keras on the real Xception runs ~3 images/s on 2 cores; small batches keep memory flat.
PREDICT_BATCH = 16
REFERENCE_FILE = "keras_reference.npz"


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_keras_model(path: str | Path):
    """Load a ``.keras`` file (without its optimizer) or raise ModelLoadError."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Model file not found: {path}")
    # A .keras file is a zip archive; checking first gives a clear message for a stray text file.
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a Keras model (expected a .keras zip archive).")
    _quiet_tensorflow()
    import keras

    from train.model import TopLabelCalibration  # noqa: F401 - registers the layer for load_model

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise ModelLoadError(f"{path} could not be loaded as a Keras model: {exc}") from None
    shape = tuple(model.inputs[0].shape) if model.inputs else ()
    if len(shape) != 4 or shape[-1] != 3 or shape[1] is None or shape[2] is None:
        raise ModelLoadError(f"{path}: expected an input of shape (None, H, W, 3), got {shape}.")
    return model


def input_hw(model) -> tuple[int, int]:
    shape = model.inputs[0].shape
    return int(shape[1]), int(shape[2])


def num_outputs(model) -> int:
    return int(model.outputs[0].shape[-1])


def load_labels(path: str | Path, expected: int | None = None) -> list[str]:
    """Read labels.json (a JSON list of class names in output order)."""
    try:
        labels = read_json(path, "Labels file")
    except JSONFileError as exc:
        raise ModelLoadError(f"{exc} (pass --labels PATH).") from None
    problem = labels_problem(labels)
    if problem:
        raise ModelLoadError(f"{path}: {problem}.")
    if expected is not None and len(labels) != expected:
        raise ModelLoadError(f"{path} has {len(labels)} labels but the model has {expected} outputs.")
    return labels


def load_resize(model_path: str | Path) -> str:
    """The resize mode the model was trained with (``train.config.trained_resize``), as a conversion error."""
    try:
        return trained_resize(model_path)
    except RunConfigError as exc:
        raise ModelLoadError(str(exc)) from None


def export_saved_model(model, directory: str | Path) -> Path:
    """``model.export()`` to a TF SavedModel (the input of both the TFLite and the ONNX converters)."""
    directory = Path(directory)
    model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def keras_logits(model, pixels: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    outputs = []
    for start in tqdm(range(0, len(pixels), batch_size), desc="Keras reference", unit="batch", leave=False):
        batch = pixels[start : start + batch_size].astype(np.float32)
        outputs.append(np.asarray(model(batch, training=False), dtype=np.float32))
    return np.concatenate(outputs) if outputs else np.zeros((0, num_outputs(model)), np.float32)


def cached_keras_logits(model, model_sha256: str, images, cache_dir: str | Path) -> np.ndarray:
    """Keras logits for ``images``, reused from ``cache_dir/keras_reference.npz`` when the key matches."""
    cache = Path(cache_dir) / REFERENCE_FILE
    key = f"{model_sha256}:{images.key()}"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["key"]) == key:
                return data["logits"]
    logits = keras_logits(model, images.pixels)
    np.savez(cache, key=np.array(key), logits=logits)
    return logits

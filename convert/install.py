"""Which converted variant ships, and its install into ``lambda_function/model/``.

The rule (docs/conversion.md): the fastest validated TFLite variant within ``MAX_ACCURACY_DROP`` points of
the Keras model's accuracy and at most ``MAX_INSTALL_MB`` (``--target host``; convert/targets.py chooses
for the other targets from the same qualified rows); or one the user names with ``--install``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from convert.errors import ConversionError, SidecarError
from convert.metadata import read_sidecar, sidecar_path, verify_model_file
from convert.ondevice import ONDEVICE_ID
from convert.variants import variant_id
from lambda_function.classifier import BUNDLED_MODELS, DEFAULT_MODEL_PATH

# "Within 1 point of Keras": the accuracy a variant may lose and still be shipped.
MAX_ACCURACY_DROP = 1.0
# The bundled model's size budget: it keeps the unzipped Lambda artifact (~107 MB of libraries,
# docs/benchmarks.md) under 160 MB and the cold start short. fp32 (85 MB) never qualifies.
MAX_INSTALL_MB = 25.0
# Report rows that are not a serving model: the on-device file outputs probabilities (softmax and
# MediaPipe metadata inside) and is derived from the installed variant; it is never installed itself.
NOT_INSTALLABLE = frozenset({ONDEVICE_ID})
INSTALL_DIR = DEFAULT_MODEL_PATH.parent
# Per format, where serving finds the bundled model under INSTALL_DIR (its sidecar: the same stem, .json).
BUNDLED_NAMES = {fmt: path.relative_to(INSTALL_DIR) for fmt, path in BUNDLED_MODELS.items()}


def qualified(
    rows: list[dict],
    keras_accuracy: float | None,
    formats: tuple[str, ...] = ("tflite",),
    max_drop: float = MAX_ACCURACY_DROP,
    max_size_mb: float = MAX_INSTALL_MB,
) -> list[dict]:
    """The validated rows of ``formats`` within ``max_drop`` points of Keras and ``max_size_mb`` in size;
    ConversionError when none is."""
    if keras_accuracy is None:
        raise ConversionError(
            "Cannot choose a variant without a test accuracy (pass --data-dir with a test split)."
        )
    keras_pct = 100.0 * keras_accuracy if keras_accuracy <= 1.0 else keras_accuracy
    candidates = [
        row
        for row in rows
        if row.get("format") in formats
        and row.get("variant") not in NOT_INSTALLABLE
        and row.get("passed")
        and row.get("accuracy") is not None
        and row["accuracy"] >= keras_pct - max_drop
        and row.get("size_mb", 0.0) <= max_size_mb
    ]
    if not candidates:
        raise ConversionError(
            f"No validated {' or '.join(f.upper() if f == 'onnx' else 'TFLite' for f in formats)} variant "
            f"is within {max_drop} point(s) of the Keras accuracy ({keras_pct:.2f}%) and at most "
            f"{max_size_mb} MB."
        )
    return candidates


def choose_variant(
    rows: list[dict],
    keras_accuracy: float | None,
    max_drop: float = MAX_ACCURACY_DROP,
    max_size_mb: float = MAX_INSTALL_MB,
) -> dict:
    """The fastest validated TFLite row (as timed here) within ``max_drop`` points of Keras and
    ``max_size_mb`` in size: ``--target host``."""
    candidates = qualified(rows, keras_accuracy, ("tflite",), max_drop, max_size_mb)
    timed = [row for row in candidates if row.get("latency_p50_ms") is not None]
    if not timed:
        raise ConversionError("No qualifying TFLite variant was timed on this machine.")
    return min(timed, key=lambda row: row["latency_p50_ms"])


def install(variant_path: str | Path, dest_dir: str | Path = INSTALL_DIR) -> Path:
    """Copy a model and its sidecar to where serving looks for it (BUNDLED_NAMES under ``dest_dir``):
    ``model.tflite`` / ``model.json``, or ``onnx/model.onnx`` / ``onnx/model.json``."""
    variant_path = Path(variant_path)
    fmt = variant_path.suffix.lstrip(".")
    if fmt not in BUNDLED_NAMES:
        raise ConversionError(f"Only TFLite and ONNX models can be installed: {variant_path}")
    if not variant_path.is_file():
        raise ConversionError(f"Model file not found: {variant_path}")
    meta = read_sidecar(variant_path)
    verify_model_file(variant_path, meta)
    if meta.get("validation", {}).get("passed") is False:
        raise SidecarError(f"{variant_path} failed validation; it will not be installed.")
    model = Path(dest_dir) / BUNDLED_NAMES[fmt]
    model.parent.mkdir(parents=True, exist_ok=True)
    # Model first, then sidecar, each via a temporary name: a reader never sees half a file.
    for src, dest in ((variant_path, model), (sidecar_path(variant_path), model.with_suffix(".json"))):
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    return model


def named_target(name: str, pairs: list[tuple[str, str]]) -> str:
    """The variant id ``--install NAME`` means (``int8`` is TFLite's, ``onnx-int8`` ONNX's); ConversionError
    unless this run converts it."""
    vid = name if name.startswith(("tflite-", "onnx-")) else f"tflite-{name}"
    if vid not in {variant_id(fmt, v) for fmt, v in pairs}:
        raise ConversionError(
            f"--install {name}: only a variant converted in this run can be installed "
            f"({', '.join(variant_id(f, v) for f, v in pairs)})."
        )
    return vid

"""Which converted variant ships, and its install into ``lambda_function/model/``.

The rule (docs/conversion.md): the fastest validated TFLite variant within ``MAX_ACCURACY_DROP`` points of
the Keras model's accuracy and at most ``MAX_INSTALL_MB``; or one the user names with ``--install``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from convert.errors import ConversionError, SidecarError
from convert.metadata import read_sidecar, sidecar_path, verify_model_file
from convert.variants import variant_id

# "Within 1 point of Keras": the accuracy a variant may lose and still be shipped.
MAX_ACCURACY_DROP = 1.0
# The bundled model's size budget: it keeps the unzipped Lambda artifact (~107 MB of libraries,
# docs/benchmarks.md) under 160 MB and the cold start short. fp32 (85 MB) never qualifies.
MAX_INSTALL_MB = 25.0
INSTALL_DIR = Path(__file__).resolve().parent.parent / "lambda_function" / "model"


def choose_variant(
    rows: list[dict],
    keras_accuracy: float | None,
    max_drop: float = MAX_ACCURACY_DROP,
    max_size_mb: float = MAX_INSTALL_MB,
) -> dict:
    """The fastest validated TFLite row within ``max_drop`` points of Keras and ``max_size_mb`` in size."""
    if keras_accuracy is None:
        raise ConversionError(
            "Cannot choose a variant without a test accuracy (pass --data-dir with a test split)."
        )
    keras_pct = 100.0 * keras_accuracy if keras_accuracy <= 1.0 else keras_accuracy
    candidates = [
        row
        for row in rows
        if row.get("format") == "tflite"
        and row.get("passed")
        and row.get("accuracy") is not None
        and row.get("latency_p50_ms") is not None
        and row["accuracy"] >= keras_pct - max_drop
        and row.get("size_mb", 0.0) <= max_size_mb
    ]
    if not candidates:
        raise ConversionError(
            f"No validated TFLite variant is within {max_drop} point(s) of the Keras accuracy "
            f"({keras_pct:.2f}%) and at most {max_size_mb} MB."
        )
    return min(candidates, key=lambda row: row["latency_p50_ms"])


def install(variant_path: str | Path, dest_dir: str | Path = INSTALL_DIR) -> Path:
    """Copy a TFLite model and its sidecar to ``dest_dir`` as ``model.tflite`` / ``model.json``."""
    variant_path = Path(variant_path)
    if variant_path.suffix != ".tflite":
        raise ConversionError(f"Only TFLite models can be installed (the Lambda runs LiteRT): {variant_path}")
    if not variant_path.is_file():
        raise ConversionError(f"Model file not found: {variant_path}")
    meta = read_sidecar(variant_path)
    verify_model_file(variant_path, meta)
    if meta.get("validation", {}).get("passed") is False:
        raise SidecarError(f"{variant_path} failed validation; it will not be installed.")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    # Model first, then sidecar, each via a temporary name: a reader never sees half a file.
    for src, name in ((variant_path, "model.tflite"), (sidecar_path(variant_path), "model.json")):
        tmp = dest_dir / (name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dest_dir / name)
    return dest_dir / "model.tflite"


def named_target(name: str, pairs: list[tuple[str, str]]) -> str:
    """The variant id ``--install NAME`` means; ConversionError unless this run converts it to TFLite."""
    vid = name if name.startswith("tflite-") else f"tflite-{name}"
    if vid not in {variant_id(fmt, v) for fmt, v in pairs}:
        raise ConversionError(
            f"--install {name}: only a TFLite variant converted in this run can be installed "
            f"({', '.join(variant_id(f, v) for f, v in pairs if f == 'tflite') or 'none'})."
        )
    return vid

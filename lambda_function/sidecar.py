"""The metadata sidecar ``NAME.json`` next to every exported model: its one schema and its one sha256 check.

``convert`` writes it (convert/metadata.py); the Lambda (classifier.py), the converter's install step and
the model card read it through :func:`read_sidecar`, so every reader accepts and refuses the same files.
Each caller turns :class:`SidecarProblem` into its own error (a 500 ``model_unavailable`` when serving,
``SidecarError`` when converting). Pure Python: this ships to Lambda.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lambda_function.jsonfile import JSONFileError, labels_problem, read_json_object
from lambda_function.preprocess import DEFAULT_RESIZE, RESIZE_MODES

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (SCHEMA_VERSION,)
# Every sidecar has these; the runtime relies on labels, input, output and sha256, the rest documents
# the file for people (and the model card). Optional: "validation", "training", "calibration".
REQUIRED_KEYS = (
    "schema_version",
    "format",
    "variant",
    "labels",
    "input",
    "output",
    "preprocessing",
    "sha256",
    "source",
    "quantization",
    "created",
)
OUTPUTS = ("logits", "probabilities")
WHAT = "Metadata sidecar"
# Optional "calibration": how the model's logits were calibrated. The map is a layer inside the model, so
# every runtime gets calibrated scores from the file alone and nothing reads this to compute a score: it
# records the map, what it was fitted on, its held-out figures and the recommended "not sure" threshold
# (for people and the model card). Absent means the file's scores are the model's raw softmax, as in
# every sidecar written before the key existed; such files are served exactly as before.
CALIBRATION_METHODS = ("none", "temperature", "vector", "matrix", "top-label")


class SidecarProblem(ValueError):
    """A sidecar is missing, unreadable, off-schema, or describes another model file."""


def sidecar_path(model_path: str | Path) -> Path:
    """``NAME.json`` for ``NAME.tflite`` / ``NAME.onnx`` (or the ``.json`` itself)."""
    return Path(model_path).with_suffix(".json")


def read_sidecar(path: str | Path) -> dict:
    """Parse and check the sidecar of ``path`` (the model or its ``.json``); SidecarProblem if unusable."""
    path = sidecar_path(path)
    try:
        meta = read_json_object(path, WHAT, required=REQUIRED_KEYS)
    except JSONFileError as exc:
        raise SidecarProblem(str(exc)) from None
    if meta["schema_version"] not in SUPPORTED_SCHEMA_VERSIONS:
        raise SidecarProblem(f"{WHAT} {path}: schema_version {meta['schema_version']!r} is not supported.")
    problem = labels_problem(meta["labels"])
    if problem:
        raise SidecarProblem(f"{WHAT} {path}: {problem}.")
    if meta["output"] not in OUTPUTS:
        raise SidecarProblem(f"{WHAT} {path}: output must be one of {OUTPUTS}, not {meta['output']!r}.")
    inp = meta["input"]
    if not isinstance(inp, dict) or not all(
        isinstance(inp.get(k), int) and inp[k] > 0 for k in ("height", "width", "channels")
    ):
        raise SidecarProblem(f"{WHAT} {path}: input height/width/channels must be positive ints.")
    # Optional: absent means "squash", how every model was trained before the key existed.
    if inp.get("resize", DEFAULT_RESIZE) not in RESIZE_MODES:
        choices = ", ".join(RESIZE_MODES)
        raise SidecarProblem(
            f"{WHAT} {path}: input resize mode must be one of {choices}, not {inp['resize']!r}."
        )
    problem = calibration_problem(meta.get("calibration"))
    if problem:
        raise SidecarProblem(f"{WHAT} {path}: {problem}.")
    return meta


def calibration_problem(record) -> str | None:
    """What is wrong with an optional ``calibration`` record, or None (absent is fine)."""
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("method") not in CALIBRATION_METHODS:
        return f"calibration must be an object whose method is one of {', '.join(CALIBRATION_METHODS)}"
    threshold = (record.get("threshold") or {}).get("recommended")
    if threshold is not None and not (
        isinstance(threshold, int | float) and not isinstance(threshold, bool) and 0.0 < threshold < 1.0
    ):
        return f"calibration's recommended threshold must be a number between 0 and 1, not {threshold!r}"
    return None


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_model_file(model_path: str | Path, meta: dict) -> str:
    """The sha256 of ``model_path``; SidecarProblem unless it is the file ``meta`` describes.

    Cheap insurance against serving a model with the labels of another run.
    """
    actual = file_sha256(model_path)
    if actual != meta["sha256"]:
        raise SidecarProblem(
            f"{model_path} does not match its metadata (sha256 {actual[:12]}..., metadata says "
            f"{str(meta['sha256'])[:12]}...): the model and its labels may be from different runs."
        )
    return actual

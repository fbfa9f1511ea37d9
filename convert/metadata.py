"""The metadata sidecar ``NAME.json`` written next to every exported ``NAME.tflite`` / ``NAME.onnx``.

The serving code parses this file (labels, input size), so the schema is fixed: see docs/conversion.md.
Pure Python: no TensorFlow here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from convert.errors import SidecarError
from convert.variants import VARIANTS, check_variant
from lambda_function.classifier import file_sha256 as sha256_file  # one hashing helper for every package
from lambda_function.jsonfile import JSONFileError, labels_problem, read_json_object

SCHEMA_VERSION = 1
PREPROCESSING = {
    "function": "lambda_function.preprocess.preprocess",
    "resize": "bilinear",
    "color": "RGB",
    "scaling": "inside the model: x / 127.5 - 1",
}
INPUT_RANGE = [0, 255]
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


def sidecar_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def write_sidecar(
    model_path: str | Path,
    format: str,
    variant: str,
    labels: list[str],
    input_hw: tuple[int, int],
    source_path: str | Path,
    quantization: dict,
    validation: dict | None = None,
) -> Path:
    """Write ``NAME.json`` (the schema the serving code reads) next to ``model_path``; return its path."""
    check_variant(format, variant)
    height, width = (int(v) for v in input_hw)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "format": format,
        "variant": variant,
        "labels": [str(label) for label in labels],
        "input": {
            "height": height,
            "width": width,
            "channels": 3,
            "layout": "NHWC",
            "dtype": "float32",
            "range": list(INPUT_RANGE),
        },
        "output": "logits",
        "preprocessing": dict(PREPROCESSING),
        "sha256": sha256_file(model_path),
        "source": {"model": Path(source_path).name, "sha256": sha256_file(source_path)},
        "quantization": quantization,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if validation is not None:
        meta["validation"] = validation
    path = sidecar_path(model_path)
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def read_sidecar(path: str | Path) -> dict:
    """Parse and check a sidecar (the ``.json`` itself or the model file next to it)."""
    path = Path(path)
    if path.suffix != ".json":
        path = sidecar_path(path)
    try:
        meta = read_json_object(path, "Metadata sidecar", required=REQUIRED_KEYS)
    except JSONFileError as exc:
        raise SidecarError(str(exc)) from None
    if meta["schema_version"] != SCHEMA_VERSION:
        raise SidecarError(f"Metadata sidecar {path} has schema_version {meta['schema_version']!r}.")
    if meta["format"] not in VARIANTS or meta["variant"] not in VARIANTS[meta["format"]]:
        raise SidecarError(f"Metadata sidecar {path} names an unknown variant.")
    problem = labels_problem(meta["labels"])
    if problem:
        raise SidecarError(f"Metadata sidecar {path}: {problem}.")
    inp = meta["input"]
    if not isinstance(inp, dict) or not all(
        isinstance(inp.get(k), int) and inp[k] > 0 for k in ("height", "width", "channels")
    ):
        raise SidecarError(f"Metadata sidecar {path}: input height/width/channels must be positive ints.")
    return meta


def verify_model_file(model_path: str | Path, meta: dict) -> None:
    """Raise SidecarError unless the model file is the one the sidecar describes."""
    actual = sha256_file(model_path)
    if actual != meta["sha256"]:
        raise SidecarError(f"{model_path} does not match its sidecar (sha256 {actual} != {meta['sha256']}).")

"""The metadata sidecar ``NAME.json`` written next to every exported ``NAME.tflite`` / ``NAME.onnx``.

The schema and its checks live in lambda_function/sidecar.py (the serving code reads the same file);
this module writes it.
Pure Python: no TensorFlow here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from convert.errors import ModelLoadError, SidecarError
from convert.variants import VARIANTS, check_variant
from lambda_function import sidecar as schema
from lambda_function.jsonfile import JSONFileError, read_json_object
from lambda_function.preprocess import DEFAULT_RESIZE, check_resize_mode
from lambda_function.sidecar import SCHEMA_VERSION, sidecar_path
from lambda_function.sidecar import file_sha256 as sha256_file  # one hashing helper for every package

PREPROCESSING = {
    "function": "lambda_function.preprocess.preprocess",
    "resize": "bilinear",
    "color": "RGB",
    "scaling": "inside the model: x / 127.5 - 1",
}
INPUT_RANGE = [0, 255]
REQUIRED_KEYS = schema.REQUIRED_KEYS
# Written by ``python -m train`` next to model.keras; the source of the sidecar's "training" record.
TRAINING_CONFIG = "config.json"
# The training settings the model card describes the model with (train/config.py names them).
TRAINING_KEYS = (
    "image_size",
    "resize",
    "pooled_blocks",
    "standardize",
    "dense_units",
    "dropout",
    "heads",
    "tune_block14_epochs",
    "label_smoothing",
    "train_views",
    "view_style",
    "extra_dir",
    "extra_weight",
    "fine_tune",
)
# Written by ``python -m train`` next to model.keras; its "calibration" block becomes the sidecar's.
TRAINING_METRICS = "metrics.json"


def training_facts(model_path: str | Path) -> dict | None:
    """What the model card says about training, from the run's config.json next to ``model_path``.

    None when there is no config.json (a model trained elsewhere): the card then says so.
    """
    path = Path(model_path).with_name(TRAINING_CONFIG)
    if not path.is_file():
        return None
    try:
        record = read_json_object(path, "Training config", required=("config",))
    except JSONFileError as exc:
        raise ModelLoadError(str(exc)) from None
    config, data = record["config"], record.get("data") or {}
    facts = {key: config[key] for key in TRAINING_KEYS if key in config}
    # Folders are named, not located: the sidecar ships, and the build machine's paths are nobody's business.
    if facts.get("extra_dir"):
        facts["extra_dir"] = Path(facts["extra_dir"]).name
    if data.get("root"):
        facts["dataset"] = Path(data["root"]).name
    counts = data.get("counts") or {}
    facts["images"] = {split: sum(per_class.values()) for split, per_class in counts.items()}
    return facts


def calibration_facts(model_path: str | Path) -> dict | None:
    """The sidecar's ``calibration`` record, from the training run's metrics.json next to ``model_path``:
    the map inside the model, what it was fitted on, its nested held-out figures (validation, the extra
    photos' grouped CV), their risk-coverage points and the recommended "not sure" threshold. Test-split
    figures stay out: the model card measures the converted file itself. None without a calibration."""
    path = Path(model_path).with_name(TRAINING_METRICS)
    if not path.is_file():
        return None
    try:
        record = read_json_object(path, "Training metrics")
    except JSONFileError as exc:
        raise ModelLoadError(str(exc)) from None
    trained = record.get("calibration")
    if not isinstance(trained, dict) or "method" not in trained:
        return None
    facts = {
        k: v
        for k, v in trained.items()
        if k in ("method", "temperature", "scale", "slope", "offset", "matrix")
    }
    facts["in_model"] = True  # a layer of the graph: no runtime applies it again
    facts["fitted_on"] = trained.get("fitted_on")
    facts["held_out"] = {
        "validation": (trained.get("validation") or {}).get("calibrated"),
        "extra_grouped_cv": trained.get("extra_grouped_cv"),
    }
    facts["risk_coverage"] = trained.get("risk_coverage")
    threshold = dict(trained.get("threshold") or {})
    threshold.pop("test", None)
    threshold["recommended"] = (threshold.get("held_out") or {}).get("threshold")
    facts["threshold"] = threshold
    return facts


def write_sidecar(
    model_path: str | Path,
    format: str,
    variant: str,
    labels: list[str],
    input_hw: tuple[int, int],
    source_path: str | Path,
    quantization: dict,
    validation: dict | None = None,
    training: dict | None = None,
    resize: str = DEFAULT_RESIZE,
    calibration: dict | None = None,
) -> Path:
    """Write ``NAME.json`` (the schema the serving code reads) next to ``model_path``; return its path.

    ``input.resize`` names the resize mode the model was trained with (lambda_function.preprocess);
    the runtime serves a sidecar without it as "squash", the only mode before the key existed.
    ``calibration`` (:func:`calibration_facts`) documents the calibration layer inside the model.
    """
    check_variant(format, variant)
    check_resize_mode(resize)
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
            "resize": resize,
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
    if training is not None:
        meta["training"] = training
    if calibration is not None:
        problem = schema.calibration_problem(calibration)
        if problem:
            raise SidecarError(f"Cannot write the sidecar of {model_path}: {problem}.")
        meta["calibration"] = calibration
    path = sidecar_path(model_path)
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


def read_sidecar(path: str | Path) -> dict:
    """Parse and check a sidecar (the ``.json`` itself or the model file next to it)."""
    try:
        meta = schema.read_sidecar(path)
    except schema.SidecarProblem as exc:
        raise SidecarError(str(exc)) from None
    if meta["format"] not in VARIANTS or meta["variant"] not in VARIANTS[meta["format"]]:
        raise SidecarError(f"Metadata sidecar {sidecar_path(path)} names an unknown variant.")
    return meta


def verify_model_file(model_path: str | Path, meta: dict) -> None:
    """Raise SidecarError unless the model file is the one the sidecar describes."""
    try:
        schema.check_model_file(model_path, meta)
    except schema.SidecarProblem as exc:
        raise SidecarError(str(exc)) from None

"""Why does int8 lose accuracy? Per-layer quantization error and a sweep of int8 settings.

``python -m studies.int8_debug MODEL.keras --data-dir DIR --output-dir DIR`` calibrates once per
calibration set, then re-quantizes the calibrated model under each setting (cheap), and measures
accuracy and top-1 agreement with Keras on the VALIDATION split (settings are never tuned on test),
file size and single-image latency. Per-layer error comes from TFLite's QuantizationDebugger:
``rmse/scale`` = RMS error of a layer's int8 output relative to one quantization step (about 0.29 for
pure rounding noise; much larger means the layer's range or weights quantize badly).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from convert import data as datamod
from convert.errors import ConversionError
from convert.metadata import sha256_file
from convert.report import benchmark
from convert.runners import TFLiteRunner, predict_all
from convert.savedmodel import (
    cached_keras_logits,
    export_saved_model,
    input_hw,
    load_keras_model,
    load_labels,
)
from convert.tflite import (
    activation_ranges,
    calibrate,
    clip_ranges,
    convert_dynamic,
    convert_fp32,
    convert_int8_naive,
    quantize_calibrated,
)
from lambda_function.classifier import softmax
from lambda_function.jsonfile import JSONFileError, read_json

DEBUG_IMAGES = 32
# rmse/scale above this marks a layer as quantization-sensitive (TF's debugger guide uses 0.7).
SENSITIVE_THRESHOLD = 0.7
# (name, calibration set, settings). Calibration sets: (images, flips).
CALIBRATIONS = {"c100": (100, False), "c300": (300, False), "c300f": (300, True), "c150f": (150, True)}
DEFAULT_SWEEP = [  # the sweep behind docs/conversion.md's int8 findings (run in two parts there)
    {"name": "fp32", "kind": "fp32"},
    {"name": "int8 naive (stock converter, 100 imgs)", "kind": "naive", "calibration": "c100"},
    {"name": "int8 100 imgs (calibrate+quantize path)", "calibration": "c100"},
    {"name": "int8 100 imgs, per-tensor weights", "calibration": "c100", "per_channel": False},
    {"name": "int8 100 imgs + FC float", "calibration": "c100", "denylisted_ops": ["FULLY_CONNECTED"]},
    {"name": "int8 150 imgs + flips (min/max)", "calibration": "c150f"},
    {"name": "int8 150 imgs + flips, p99 ranges", "calibration": "c150f", "range_percentile": 99},
    {
        "name": "int8 150 imgs + flips, p99 ranges + FC float",
        "calibration": "c150f",
        "range_percentile": 99,
        "denylisted_ops": ["FULLY_CONNECTED"],
    },
    {"name": "int8 150 imgs + flips, p99.9 ranges", "calibration": "c150f", "range_percentile": 99.9},
]


def layer_statistics(calibrated: bytes, debug_data, per_channel: bool = True) -> list[dict]:
    """Per-layer error of the int8 model (QuantizationDebugger), worst first."""
    import tensorflow as tf

    debug_model = quantize_calibrated(
        calibrated, per_channel=per_channel, denylisted_ops=(), denylisted_nodes=(), numeric_verify=True
    )
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model, debug_dataset=debug_data
    )
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"])
        mse = float(row["mean_squared_error"])
        rows.append(
            {
                "op_name": row["op_name"],
                "tensor_name": row["tensor_name"],
                "scale": scale,
                "range": 255.0 * scale,
                "rmse/scale": (mse**0.5) / scale if scale else float("inf"),
                "max_abs_error": float(row["max_abs_error"]),
            }
        )
    return sorted(rows, key=lambda r: r["rmse/scale"], reverse=True)


def evaluate(model_bytes: bytes, path: Path, pixels, keras_probs, targets, latency_image) -> dict:
    path.write_bytes(model_bytes)
    probs = softmax(predict_all(TFLiteRunner(path), pixels, progress=path.stem))
    bench = benchmark(path, latency_image)
    return {
        "accuracy": 100.0 * float((probs.argmax(-1) == targets).mean()),
        "top1_agreement": float((probs.argmax(-1) == keras_probs.argmax(-1)).mean()),
        "max_abs_diff": float(np.abs(probs - keras_probs).max()),
        "size_mb": path.stat().st_size / 1e6,
        **bench,
    }


def sweep(
    model_path: Path,
    data_dir: Path,
    output_dir: Path,
    settings: list[dict],
    split: str = "validation",
    threshold: float = SENSITIVE_THRESHOLD,
    debug_images: int = DEBUG_IMAGES,
) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    model = load_keras_model(model_path)
    labels = load_labels(model_path.parent / "labels.json")
    size = input_hw(model)
    images = datamod.load_split(data_dir, split, labels, size)
    keras_probs = softmax(cached_keras_logits(model, sha256_file(model_path), images, output_dir))
    keras_acc = 100.0 * float((keras_probs.argmax(-1) == images.targets).mean())
    results = {"split": split, "images": len(images), "keras_accuracy": keras_acc, "rows": []}
    print(f"Keras {split} accuracy: {keras_acc:.2f}% on {len(images)} images", flush=True)
    calibrated: dict[str, bytes] = {}
    reps: dict[str, object] = {}
    sensitive: list[str] | None = None
    act_ranges: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".work-") as work:
        saved_model = export_saved_model(model, Path(work) / "saved_model")
        for i, setting in enumerate(settings):
            kind = setting.get("kind", "int8")
            cal = setting.get("calibration")
            if cal and cal not in reps:
                n, flips = CALIBRATIONS[cal]
                cal_images = datamod.load_split(data_dir, datamod.CALIBRATION_SPLIT, labels, size, n)
                reps[cal] = datamod.calibration_batches(cal_images, flips=flips)
            if kind == "fp32":
                model_bytes = convert_fp32(saved_model)[0]
            elif kind == "dynamic":
                model_bytes = convert_dynamic(saved_model)[0]
            elif kind == "naive":
                model_bytes = convert_int8_naive(saved_model, reps[cal])
            else:
                if cal not in calibrated:
                    print(f"calibrating {cal} ...", flush=True)
                    calibrated[cal] = calibrate(saved_model, reps[cal])
                    (output_dir / f"calibrated_{cal}.tflite").write_bytes(calibrated[cal])
                nodes = setting.get("denylisted_nodes", [])
                if nodes == "auto":
                    if sensitive is None:
                        debug = list(reps[cal]())[:debug_images]
                        stats = layer_statistics(calibrated[cal], lambda debug=debug: iter(debug))
                        (output_dir / "layer_stats.json").write_text(json.dumps(stats, indent=1))
                        sensitive = [r["tensor_name"] for r in stats if r["rmse/scale"] > threshold]
                        print(f"{len(sensitive)} sensitive layers: {sensitive}", flush=True)
                    nodes = sensitive
                base = calibrated[cal]
                percentile = setting.get("range_percentile")
                if percentile is not None:
                    if cal not in act_ranges:
                        print(f"per-image activation ranges {cal} ...", flush=True)
                        act_ranges[cal] = activation_ranges(calibrated[cal], reps[cal])
                    base = clip_ranges(calibrated[cal], act_ranges[cal], percentile)
                model_bytes = quantize_calibrated(
                    base,
                    per_channel=setting.get("per_channel", True),
                    denylisted_ops=setting.get("denylisted_ops", ()),
                    denylisted_nodes=nodes,
                )
            row = {
                "name": setting["name"],
                "setting": {**setting, "denylisted_nodes": nodes if kind == "int8" else []},
            }
            row.update(
                evaluate(
                    model_bytes,
                    Path(work) / f"v{i}.tflite",
                    images.pixels,
                    keras_probs,
                    images.targets,
                    images.pixels[0],
                )
            )
            results["rows"].append(row)
            print(_format_row(row), flush=True)
            (output_dir / "sweep.json").write_text(json.dumps(results, indent=1))
    return results


def _format_row(row: dict) -> str:
    return (
        f"| {row['name']} | {row['accuracy']:.2f} | {row['top1_agreement']:.4f} | {row['max_abs_diff']:.3f} "
        f"| {row['size_mb']:.1f} | {row['latency_p50_ms']:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.int8_debug", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, default=Path("artifacts/int8_debug"))
    parser.add_argument("--split", default="validation")
    parser.add_argument("--settings", type=Path, help="JSON list of settings (default: the built-in sweep)")
    parser.add_argument("--threshold", type=float, default=SENSITIVE_THRESHOLD)
    args = parser.parse_args(argv)
    try:
        settings = DEFAULT_SWEEP
        if args.settings:
            try:
                settings = read_json(args.settings, "Settings file")
            except JSONFileError as exc:
                raise ConversionError(str(exc)) from None
        sweep(args.model, args.data_dir, args.output_dir, settings, args.split, args.threshold)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

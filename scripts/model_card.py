"""Write ``lambda_function/model/MODEL_CARD.md`` by measuring the bundled model on the test split.

Runs the model through the serving code (``lambda_function.classifier`` + ``preprocess``), so the
figures are what the Lambda serves. Needs numpy, Pillow and ai-edge-litert only (no TensorFlow).

    python scripts/model_card.py --data-dir ../shared/data/clothing-dataset-small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lambda_function.classifier import Classifier  # noqa: E402
from lambda_function.preprocess import load_image_file  # noqa: E402
from train.data import discover  # noqa: E402
from train.evaluate import compute_metrics  # noqa: E402

MODEL = ROOT / "lambda_function" / "model" / "model.tflite"
LATENCY_RUNS = 30  # single-image invokes timed after warm-up


def measure(model_path: Path, data_dir: Path) -> dict:
    classifier = Classifier.from_path(model_path)
    split = discover(data_dir).splits["test"]
    logits = []
    for path in split.paths:
        probs = classifier.predict(load_image_file(path, classifier.input_size, classifier.resize))
        logits.append(np.log(np.clip(probs, 1e-12, None)))  # softmax(log p) == p
    metrics = compute_metrics(np.array(logits), split.labels, classifier.labels)
    pixels = load_image_file(split.paths[0], classifier.input_size, classifier.resize)
    for _ in range(3):
        classifier.predict(pixels)
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        classifier.predict(pixels)
        times.append((time.perf_counter() - started) * 1000)
    metrics["latency_p50_ms"] = float(np.median(times))
    return metrics


def quantization_text(quant: dict) -> str:
    """One sentence from the sidecar's quantization record; dynamic-range models have no calibration."""
    if not quant.get("method"):
        return "none (float weights and activations)"
    parts = [
        quant["method"],
        f"weights {quant.get('weights')}",
        f"activations {quant.get('activations')}",
        "float32 input/output",
    ]
    if quant.get("calibration_images"):
        parts.append(
            f"{quant['calibration_images']} calibration images from {quant.get('calibration_split')}"
            f" (ranges: {quant.get('activation_ranges')})"
        )
    if quant.get("kept_float_ops"):
        parts.append(f"kept in float: {', '.join(quant['kept_float_ops'])}")
    return ", ".join(parts)


def render(model_path: Path, data_dir: Path, metrics: dict) -> str:
    meta = json.loads(model_path.with_suffix(".json").read_text())
    rows = "\n".join(
        f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        for name, m in metrics["per_class"].items()
    )
    return f"""# Model card: clothing classifier ({meta["variant"]} TFLite)

- **Task**: classify a photo of one garment into 10 classes: {", ".join(meta["labels"])}.
- **Architecture**: ImageNet Xception base, frozen; the global average of blocks 11-14's outputs
  (4528 features), standardized, + Dense(100, relu) + Dropout(0.5) + Dense(10) logits;
  input {meta["input"]["height"]}x{meta["input"]["width"]} RGB pixels 0-255 (scaling inside the model);
  the runtime applies the softmax in float.
- **Data**: clothing-dataset-small (CC0, Alexey Grigorev and contributors): 3068 train / 341 validation /
  372 test images. Hyper-parameters were chosen on the validation split (the pooled blocks by 5-fold
  cross-validation on train + validation); the test split is used for reporting only.
- **Made by**: `make train` then `make convert` (README, "The workflow"); source `{meta["source"]["model"]}`
  sha256 `{meta["source"]["sha256"][:16]}…`.
- **Quantization**: {quantization_text(meta.get("quantization") or {})}.
- **File**: `model.tflite`, {model_path.stat().st_size / 1e6:.1f} MB, sha256 `{meta["sha256"]}`.

## Measured on the test split ({metrics["num_images"]} images), {datetime.now(UTC):%Y-%m-%d}

Test accuracy **{100 * metrics["accuracy"]:.2f}%**, macro F1 {metrics["macro_avg"]["f1"]:.3f}.
Single-image latency p50 {metrics["latency_p50_ms"]:.0f} ms (ai-edge-litert, 2-core x86-64 build machine,
`NUM_THREADS` = CPU count). Figures from `python scripts/model_card.py --data-dir {data_dir}`.

| class | precision | recall | F1 | test images |
|---|---:|---:|---:|---:|
{rows}

## Limits

Trained on product-style photos of a single garment, mostly on plain backgrounds. Shirt vs longsleeve vs
t-shirt and dress are its weakest classes; photos of several garments, people in full outfits or classes
outside the ten get a confident-looking but meaningless answer (there is no "other" class).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args(argv)
    metrics = measure(args.model, args.data_dir)
    card = args.model.parent / "MODEL_CARD.md"
    card.write_text(render(args.model, args.data_dir, metrics))
    print(f"wrote {card}: test accuracy {100 * metrics['accuracy']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

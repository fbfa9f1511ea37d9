"""``make model-card``: write ``lambda_function/model/MODEL_CARD.md`` for the bundled model.

Every fact comes from the model's sidecar ``model.json`` (labels, input, quantization, sha256, and the
training facts ``convert`` copied from the training run's ``config.json``); the figures are measured
here, by running the file through the serving code (``lambda_function.classifier`` + ``preprocess``)
on the test split, so they are what the Lambda serves. Needs the runtime requirements only (numpy,
Pillow, ai-edge-litert): no TensorFlow, no tqdm.

    python -m bench.model_card --data-dir data/clothing-dataset-small
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from convert.report import latency_p50_ms  # noqa: E402  (numpy only at import)
from lambda_function.classifier import Classifier  # noqa: E402
from lambda_function.errors import ServingError  # noqa: E402
from lambda_function.preprocess import load_image_file  # noqa: E402
from lambda_function.sidecar import SidecarProblem, read_sidecar  # noqa: E402
from train.data import list_split  # noqa: E402
from train.errors import DataError  # noqa: E402
from train.evaluate import compute_metrics  # noqa: E402

MODEL = ROOT / "lambda_function" / "model" / "model.tflite"
CARD_NAME = "MODEL_CARD.md"
EVAL_SPLIT = "test"
LATENCY_RUNS = 30  # single-image predictions timed after warm-up
WARMUP_RUNS = 3
# Credits of the datasets this recipe has been trained on, by folder name.
DATASET_CREDITS = {"clothing-dataset-small": "CC0, Alexey Grigorev and contributors"}
# What the photos of a known dataset look like (for the Limits); other data gets only what its labels say.
DATASET_PHOTOS = {
    "clothing-dataset-small": "product-style photos of a single garment, mostly on plain backgrounds"
}
# What a known dataset's model classifies (the card's title); other data is named by its folder.
DATASET_SUBJECT = {"clothing-dataset-small": "clothing"}
# The classes named as the weakest in the Limits (lowest F1 on the test split).
WEAKEST_SHOWN = 2


def measure(model_path: Path, data_dir: Path) -> dict:
    """Accuracy, per-class metrics and single-image latency of ``model_path`` on the test split."""
    classifier = Classifier.from_path(model_path)
    paths, targets = list_split(
        data_dir, EVAL_SPLIT, list(classifier.labels), subset=True, reference="the model's labels"
    )
    logits = []
    for path in paths:
        probs = classifier.predict(load_image_file(path, classifier.input_size, classifier.resize))
        logits.append(np.log(np.clip(probs, 1e-12, None)))  # softmax(log p) == p
    metrics = compute_metrics(np.array(logits), targets, list(classifier.labels))
    pixels = load_image_file(paths[0], classifier.input_size, classifier.resize)
    metrics["latency_p50_ms"] = latency_p50_ms(lambda: classifier.predict(pixels), LATENCY_RUNS, WARMUP_RUNS)
    # Other work on the machine moves this figure more than anything in the model: say how busy it was.
    metrics["load_average"] = os.getloadavg()[0]
    metrics["cpus"] = os.cpu_count()
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


def architecture_text(meta: dict) -> str:
    """The model's layers, from the training facts in the sidecar (absent for models converted without
    the training run's config.json next to them)."""
    training = meta.get("training") or {}
    inp = meta["input"]
    size = f"input {inp['height']}x{inp['width']} RGB pixels 0-255 (scaling inside the model)"
    if not training.get("pooled_blocks"):
        return f"not recorded in the sidecar (converted without the training run's config.json); {size}"
    blocks = block_range(training["pooled_blocks"])
    standardized = ", standardized," if training.get("standardize") else ""
    hidden = (
        f" + Dense({training['dense_units']}, relu) + Dropout({training.get('dropout')})"
        if training.get("dense_units")
        else f" + Dropout({training.get('dropout')})"
    )
    features = f" ({training['features']} features)" if training.get("features") else ""
    return (
        f"ImageNet Xception base, frozen; the global average of blocks {blocks}'s outputs{features}"
        f"{standardized}\n  {hidden.lstrip()} + Dense({len(meta['labels'])}) logits;\n  {size}"
    )


def block_range(text: str) -> str:
    """ "11,12,13,14" -> "11-14"; a list with gaps stays as it is."""
    blocks = [int(part) for part in str(text).split(",") if part.strip()]
    contiguous = len(blocks) > 1 and blocks == list(range(blocks[0], blocks[-1] + 1))
    return f"{blocks[0]}-{blocks[-1]}" if contiguous else ", ".join(map(str, blocks))


def data_text(meta: dict) -> str:
    training = meta.get("training") or {}
    images = training.get("images") or {}
    if not images:
        return "not recorded in the sidecar (converted without the training run's config.json)."
    name = training.get("dataset", "the training data")
    credit = DATASET_CREDITS.get(name)
    counts = " / ".join(
        f"{images[split]} {split}" for split in ("train", "validation", "test") if split in images
    )
    views = training.get("train_views", 1)
    view_text = "" if views == 1 else f" ({views} views per training image)"
    return (
        f"{name}{f' ({credit})' if credit else ''}:\n  {counts} images{view_text}.\n"
        "  Hyper-parameters were chosen on the validation split (the pooled blocks by 5-fold\n"
        "  cross-validation on train + validation); the test split is used for reporting only."
    )


def limits_text(meta: dict, metrics: dict) -> str:
    """What the model cannot do, from its labels, its data and its weakest classes: nothing about the
    classes is hard-coded, so a model trained on other folders gets a card about its own classes."""
    labels = meta["labels"]
    dataset = (meta.get("training") or {}).get("dataset")
    photos = DATASET_PHOTOS.get(dataset) or (f"the photos of {dataset}" if dataset else "its training photos")
    ranked = sorted(metrics["per_class"].items(), key=lambda item: item[1]["f1"])[:WEAKEST_SHOWN]
    weakest = " and ".join(f"{name} (F1 {m['f1']:.2f})" for name, m in ranked)
    return (
        f"Trained on {photos}. Its weakest classes on the {EVAL_SPLIT} split are {weakest}. A photo of\n"
        f"anything outside the {len(labels)} classes, or of several of them at once, still gets one of the\n"
        f'{len(labels)} labels, often with a confident-looking score: there is no "other" class.'
    )


def render(meta: dict, model_bytes: int, metrics: dict, command: str, date: str) -> str:
    """The card's Markdown: facts from ``meta`` (the sidecar), figures from ``metrics``."""
    rows = "\n".join(
        f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        for name, m in metrics["per_class"].items()
    )
    dataset = (meta.get("training") or {}).get("dataset")
    subject = DATASET_SUBJECT.get(dataset) or dataset or "image"
    return f"""# Model card: {subject} classifier ({meta["variant"]} TFLite)

<!-- Generated by `make model-card` (bench/model_card.py) from model.json; do not edit by hand. -->

- **Task**: classify a photo into one of {len(meta["labels"])} classes: {", ".join(meta["labels"])}.
- **Architecture**: {architecture_text(meta)};
  the runtime applies the softmax in float.
- **Data**: {data_text(meta)}
- **Made by**: `make train` then `make convert` (README, "The workflow"); source `{meta["source"]["model"]}`
  sha256 `{str(meta["source"]["sha256"])[:16]}…`.
- **Quantization**: {quantization_text(meta.get("quantization") or {})}.
- **File**: `model.tflite`, {model_bytes / 1e6:.1f} MB, sha256 `{meta["sha256"]}`.

## Measured on the {EVAL_SPLIT} split ({metrics["num_images"]} images), {date}

Test accuracy **{100 * metrics["accuracy"]:.2f}%**, macro F1 {metrics["macro_avg"]["f1"]:.3f}.
Single-image latency p50 {metrics["latency_p50_ms"]:.0f} ms: `Classifier.predict` on pixels already decoded,
`NUM_THREADS` = CPU count, median of {LATENCY_RUNS} after classifying the split (ai-edge-litert,
{metrics["cpus"]} CPUs, load average {metrics["load_average"]:.1f} while timing); `make convert`'s report and
`make bench-serve` time it differently (docs/benchmarks.md).
Figures from `{command}`.

| class | precision | recall | F1 | test images |
|---|---:|---:|---:|---:|
{rows}

## Limits

{limits_text(meta, metrics)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="DIR/test/<class>/*.jpg")
    parser.add_argument("--model", type=Path, default=MODEL)
    args = parser.parse_args(argv)
    try:
        meta = read_sidecar(args.model)
        metrics = measure(args.model, args.data_dir)
    except SidecarProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ServingError, DataError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    # The data folder by name only: where it sits on this machine means nothing to a reader.
    command = f"make model-card DATA_DIR=.../{args.data_dir.resolve().name}"
    card = args.model.parent / CARD_NAME
    date = f"{datetime.now(UTC):%Y-%m-%d}"
    card.write_text(render(meta, args.model.stat().st_size, metrics, command, date), encoding="utf-8")
    print(f"wrote {card}: test accuracy {100 * metrics['accuracy']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

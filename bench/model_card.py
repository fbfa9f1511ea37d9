"""``make model-card``: write ``lambda_function/model/MODEL_CARD.md`` for the bundled model.

Every fact comes from the model's sidecar ``model.json`` (labels, input, quantization, sha256, the
training facts ``convert`` copied from the training run's ``config.json``, and its ``calibration``
record: the map inside the model, the held-out figures of training time (validation and the extra
photos' contributor-grouped CV) and the recommended "not sure" threshold); the test figures are measured
here, by running the file through the serving code (``lambda_function.classifier`` + ``preprocess``)
on the test split, so they are what the Lambda serves. It also draws a risk-coverage PNG (Pillow).
Needs the runtime requirements only (numpy, Pillow, ai-edge-litert): no TensorFlow, no tqdm.

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

from bench.risk_plot import draw as draw_risk_coverage  # noqa: E402  (Pillow)
from convert.report import latency_p50_ms  # noqa: E402  (numpy only at import)
from lambda_function.classifier import Classifier  # noqa: E402
from lambda_function.errors import ServingError  # noqa: E402
from lambda_function.preprocess import load_image_file  # noqa: E402
from lambda_function.sidecar import SidecarProblem, read_sidecar  # noqa: E402
from train.calibration import at_threshold, risk_coverage, summary  # noqa: E402  (numpy only)
from train.data import list_split  # noqa: E402
from train.errors import DataError  # noqa: E402
from train.evaluate import compute_metrics  # noqa: E402

MODEL = ROOT / "lambda_function" / "model" / "model.tflite"
CARD_NAME = "MODEL_CARD.md"
# The bundled model's chart lives with the docs (lambda_function/model/ ships to Lambda); another
# model's goes next to its card.
BUNDLED_PLOT = ROOT / "docs" / "img" / "model_risk_coverage.png"
PLOT_NAME = "risk_coverage.png"
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
# What a known dataset's model is known to get wrong (measured: docs/lab/calibration.md, issue 19's
# look at the misses); appended to the Limits of a model trained on it.
DATASET_LIMITS = {
    "clothing-dataset-small": """What it cannot do (from a look at its misses on other contributors' photos):

- **Kids' one-piece garments** (snowsuits, overalls, rompers): there is no such class; they get one of the
  ten, often with a high score, as do people in full outfits.
- **Capri and knee-length trousers** sit between pants and shorts, and **hoodies and cardigans** between
  outwear and longsleeve: expect either answer, with a middling score.
- Shirt vs longsleeve vs t-shirt, and dress vs skirt or blouse, are its weakest distinctions.
- Four labels of the extra photos look wrong (shorts filed as pants, a strapped skirt, a zip jacket filed as
  dress, a knit top filed as outwear); they are kept as published, so its figures there are a little low.
"""
}
# The classes named as the weakest in the Limits (lowest F1 on the test split).
WEAKEST_SHOWN = 2


def measure(model_path: Path, data_dir: Path) -> dict:
    """Accuracy, per-class metrics and single-image latency of ``model_path`` on the test split."""
    classifier = Classifier.from_path(model_path)
    paths, targets = list_split(
        data_dir, EVAL_SPLIT, list(classifier.labels), subset=True, reference="the model's labels"
    )
    probs = np.array(
        [classifier.predict(load_image_file(p, classifier.input_size, classifier.resize)) for p in paths]
    )
    logits = np.log(np.clip(probs, 1e-12, None))  # softmax(log p) == p
    metrics = compute_metrics(logits, targets, list(classifier.labels))
    metrics["scores"] = summary(probs, targets)
    metrics["probs"], metrics["targets"] = probs, np.asarray(targets)
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
    tuned = training.get("tune_block14_epochs") or 0
    frozen = (
        f"frozen but for block 14 (fine-tuned {tuned} epochs on cached block 13 maps)" if tuned else "frozen"
    )
    heads = int(training.get("heads") or 1)
    head = f"{hidden.lstrip()} + Dense({len(meta['labels'])}) logits"
    if heads > 1:
        head = f"{heads} such heads (each {head}), their logits averaged"
    method = (meta.get("calibration") or {}).get("method")
    if method and method != "none":
        head += (
            f", then {method} {'calibration' if method == 'top-label' else 'scaling'} (a layer of the model)"
        )
    return (
        f"ImageNet Xception base, {frozen}; the global average of blocks {blocks}'s outputs{features}"
        f"{standardized}\n  {head};\n  {size}"
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
    extra = ""
    if images.get("extra"):
        folder = Path(str(training.get("extra_dir") or "extra")).name
        weight = training.get("extra_weight", 1)
        extra = (
            f"\n  + {images['extra']} photos of {folder} (other contributors, many of them kids' clothes)"
            f" in training, loss weight {weight:g}"
        )
    return (
        f"{name}{f' ({credit})' if credit else ''}:\n  {counts} images{view_text}.{extra}\n"
        "  Hyper-parameters were chosen on the validation split and by contributor-grouped cross-validation\n"
        "  on the extra photos; the test split is used for reporting only."
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
        + (f"\n\n{DATASET_LIMITS[dataset]}" if dataset in DATASET_LIMITS else "")
    )


def calibration_text(meta: dict) -> str:
    """One sentence on the calibration layer, from the sidecar (absent: scores are the raw softmax)."""
    record = meta.get("calibration")
    if not record or record.get("method") in (None, "none"):
        return "none recorded: the scores are the softmax of the model's raw logits."
    fitted = record.get("fitted_on") or {}
    fitted_text = " + ".join(
        f"{count} {what}" for what, count in (
            ("validation photos", fitted.get("validation")),
            ("extra photos (contributor-grouped folds)", fitted.get("extra_grouped_cv")),
        ) if count
    )  # fmt: skip
    if record["method"] == "top-label":
        what = (
            f"top-label Platt scaling: P(top class) = sigmoid({record['slope']:.3f} x its softmax log-odds "
            f"{record['offset']:+.3f}),\n  the other classes keep their shares of the rest and no answer "
            "changes"
        )
    else:
        value = f" T = {record['temperature']:.2f}" if record.get("temperature") else ""
        what = f"{record['method']} scaling{value}"
    return (
        f"{what}, fitted by log-loss on {fitted_text or 'held-out photos'};\n"
        "  a layer inside the model, so the Lambda, the CLI, the on-device file and the browser page all\n"
        "  give the same calibrated scores"
    )


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def score_row(name: str, figures: dict | None) -> str:
    if not figures:
        return ""
    cov = figures.get("coverage_accuracy") or {}
    return (
        f"| {name} | {figures['images']} | {percent(figures['top1'])} | {percent(figures['top3'])} | "
        f"{figures['ece']:.3f} | {figures['brier']:.3f} | {figures['mean_top1_score']:.3f} | "
        f"{percent(cov.get('90%'))} | {percent(cov.get('80%'))} | {percent(cov.get('70%'))} |\n"
    )


def scores_section(meta: dict, metrics: dict) -> str:
    """What a score is worth: test (measured here) and the held-out figures of training time."""
    record = meta.get("calibration") or {}
    held = record.get("held_out") or {}
    extra = held.get("extra_grouped_cv") or {}
    rows = score_row(f"test split (measured here, {EVAL_SPLIT})", metrics.get("scores"))
    rows += score_row("validation (training time, nested calibration)", held.get("validation"))
    rows += score_row(
        f"extra photos, {extra.get('folds', '')}-fold grouped CV (training time)", extra.get("calibrated")
    )
    rows += score_row("&nbsp;&nbsp;kids' clothes", extra.get("kids"))
    rows += score_row("&nbsp;&nbsp;adults' clothes", extra.get("adults"))
    before = (extra.get("uncalibrated") or {}).get("ece")
    before_text = f" Without the calibration layer the extra photos' ECE was {before:.3f}." if before else ""
    one_map = ((extra.get("uncalibrated") or {}).get("coverage_accuracy") or {}).get("70%")
    if record.get("method") == "top-label" and one_map is not None:
        # The map is increasing in the T = 1 top score, so the shipped model (one map) ranks the photos
        # as the uncalibrated logits do; only the nested figures, a map per fold, reorder across folds.
        before_text += (
            f"\nThe top-label map keeps the order of the photos by score, so the model, one map for all,"
            f" is right on {percent(one_map)} of the 70% most confident extra photos (the nested figure"
            " above gives each fold its own map)."
        )
    return (
        "| photos | n | top-1 | top-3 | ECE | Brier | mean top-1 score | top-1, 90% most confident "
        "| 80% | 70% |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n" + rows + "\n"
        "ECE: expected calibration error, 15 equal-width bins of the top-1 score (0: a score of 0.8 is\n"
        'right 80% of the time). Brier: mean squared error of the probabilities (0 best, 2 worst). "90%\n'
        'most confident": top-1 accuracy on the 90% of photos with the highest top-1 score (the others\n'
        "would go to a person). The extra photos (clothing-dataset-extra: other contributors, 124 of 199\n"
        "kids' clothes) are scored out of fold: each by heads trained without its contributor's photos, and\n"
        f"calibrated by a map fitted without its fold.{before_text}\n"
    )


def threshold_section(meta: dict, metrics: dict) -> str:
    threshold = (meta.get("calibration") or {}).get("threshold") or {}
    value = threshold.get("recommended")
    if value is None:
        return "No threshold is recommended for this model (its sidecar records none).\n"
    lines = [
        f"**Recommended threshold: {value:.2f}** (off by default). Answer only when the top-1 score is at\n"
        f'least {value:.2f}, and say "not sure" otherwise: the lowest threshold on a 0.05 grid at which the\n'
        f"answered held-out photos (validation + extra photos, grouped CV) reach "
        f"{percent(threshold.get('target_accuracy'))} accuracy. At it:\n",
    ]
    for name, key in (("validation", "validation"), ("extra photos, grouped CV", "extra_grouped_cv")):
        row = threshold.get(key)
        if row and row.get("accuracy") is not None:
            lines.append(
                f"- {name}: {percent(row['answered'])} answered, {percent(row['accuracy'])} of them right;\n"
            )
    if metrics.get("probs") is not None:
        row = at_threshold(metrics["probs"], metrics["targets"], value)
        lines.append(
            f"- test split (measured here; never used to choose it): {percent(row['answered'])} answered, "
            f"{percent(row['accuracy'])} of them right.\n"
        )
    return "".join(lines)


def curves(meta: dict, metrics: dict) -> dict[str, list[tuple[float, float]]]:
    """Risk-coverage points: the test split as measured here, the held-out ones from the sidecar."""
    coverage, accuracy = risk_coverage(metrics["probs"], metrics["targets"])
    out = {f"test split ({len(coverage)})": list(zip(coverage.tolist(), accuracy.tolist(), strict=True))}
    stored = (meta.get("calibration") or {}).get("risk_coverage") or {}
    names = {"validation": "validation (nested)", "extra_grouped_cv": "extra photos, grouped CV"}
    for key, name in names.items():
        if stored.get(key):
            out[name] = [tuple(point) for point in stored[key]]
    return out


def render(
    meta: dict, model_bytes: int, metrics: dict, command: str, date: str, plot: str | None = None
) -> str:
    """The card's Markdown: facts from ``meta`` (the sidecar), figures from ``metrics``; ``plot`` is the
    risk-coverage PNG's path relative to the card."""
    plot_text = (
        f"\n![risk-coverage: accuracy of the answers against the share answered]({plot})\n" if plot else ""
    )
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
- **Calibration**: {calibration_text(meta)}.
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

## What a score is worth

{scores_section(meta, metrics)}{plot_text}
## A "not sure" answer

{threshold_section(meta, metrics)}
## Limits

{limits_text(meta, metrics)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="DIR/test/<class>/*.jpg")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"risk-coverage PNG (default: docs/img/{BUNDLED_PLOT.name} for the bundled model, "
        f"else {PLOT_NAME} next to the card)",
    )
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
    bundled = args.model.resolve() == MODEL.resolve()
    plot = args.plot or (BUNDLED_PLOT if bundled else args.model.parent / PLOT_NAME)
    draw_risk_coverage(curves(meta, metrics), plot, f"Risk-coverage, model {meta['sha256'][:12]}, {date}")
    link = Path(os.path.relpath(plot.resolve(), card.parent.resolve())).as_posix()
    text = render(meta, args.model.stat().st_size, metrics, command, date, link)
    card.write_text(text, encoding="utf-8")
    print(f"wrote {card}: test accuracy {100 * metrics['accuracy']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

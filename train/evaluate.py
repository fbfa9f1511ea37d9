"""Test-split metrics, the report files, and ``python -m train.evaluate`` for a saved model.

The metric functions are pure numpy and matplotlib is imported only to draw, so this module loads
without TensorFlow; the CLI imports Keras only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lambda_function.classifier import softmax  # the runtime's softmax, so scores match serving
from lambda_function.jsonfile import JSONFileError, labels_problem, read_json

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
PER_CLASS_PNG = "per_class_metrics.png"
RISK_COVERAGE_PNG = "risk_coverage.png"
DEFAULT_SPLIT = "test"
PREDICT_BATCH = 16


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, predicted]``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # sklearn's zero_division=0 convention: a class never predicted has precision 0, not NaN.
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class_metrics(cm: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, and their macro and weighted averages."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = cm.sum()
    weights = support / total if total else np.zeros_like(support)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class": per_class,
        "macro_avg": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "weighted_avg": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
        },
    }


def compute_metrics(logits: np.ndarray, y_true: np.ndarray, class_names: list[str]) -> dict:
    """Everything for metrics.json except the file-dependent misclassified list."""
    probs = softmax(logits)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    report = per_class_metrics(cm, class_names)
    n = len(y_true)
    picked = probs[np.arange(n), np.asarray(y_true, dtype=np.int64)]
    report["loss"] = float(-np.log(np.clip(picked, 1e-12, None)).mean()) if n else 0.0
    report["num_images"] = int(n)
    report["labels"] = list(class_names)
    report["confusion_matrix"] = cm.tolist()
    return report


def misclassified(paths: list, logits: np.ndarray, y_true: np.ndarray, class_names: list[str]) -> list[dict]:
    """Each wrong prediction: file, true class, predicted class and its probability, most confident first."""
    probs = softmax(logits)
    y_pred = probs.argmax(axis=1)
    rows = [
        {
            "file": str(paths[i]),
            "true": class_names[int(y_true[i])],
            "predicted": class_names[int(y_pred[i])],
            "score": round(float(probs[i, y_pred[i]]), 4),
            "true_score": round(float(probs[i, int(y_true[i])]), 4),
        }
        for i in np.flatnonzero(y_pred != np.asarray(y_true))
    ]
    return sorted(rows, key=lambda r: -r["score"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    cm = np.asarray(cm)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_class(report: dict, path: Path, title: str) -> None:
    plt = _pyplot()
    names = list(report["per_class"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 4))
    for k, metric in enumerate(("precision", "recall", "f1")):
        values = [report["per_class"][n][metric] for n in names]
        ax.bar(x + (k - 1) * 0.27, values, width=0.27, label=metric)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curves(history: dict, path: Path, best_epoch: int | None = None) -> None:
    """Accuracy and loss per epoch, train vs validation; a dotted line at the kept epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_risk_coverage(curves: dict, path: Path, threshold: float | None = None) -> None:
    """Accuracy of the answers against the share of photos answered, most confident first, one line per
    ``{name: (probabilities, labels)}``; a dot where the top-1 score crosses ``threshold``."""
    from train.calibration import risk_coverage

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, (probs, labels) in curves.items():
        coverage, accuracy = risk_coverage(probs, labels)
        line = ax.plot(coverage, accuracy, label=f"{name} ({len(labels)})")[0]
        if threshold is not None:
            answered = int((np.asarray(probs).max(axis=1) >= threshold).sum())
            if answered:
                ax.plot(coverage[answered - 1], accuracy[answered - 1], "o", color=line.get_color())
    for share in (0.7, 0.8, 0.9):
        ax.axvline(share, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("share of photos answered (most confident first)")
    ax.set_ylabel("accuracy of the answered photos")
    ax.set_ylim(0.6, 1.005)
    title = "Risk-coverage"
    if threshold is not None:
        title += f" (dots: top-1 score >= {threshold:.2f})"
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    output_dir: str | Path,
    logits: np.ndarray,
    y_true: np.ndarray,
    class_names: list[str],
    paths: list,
    split: str = DEFAULT_SPLIT,
    extra: dict | None = None,
) -> dict:
    """Write metrics.json (+ misclassified list), the confusion-matrix and per-class PNGs; return the dict."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"split": split, **compute_metrics(logits, y_true, class_names)}
    report["misclassified"] = misclassified(paths, logits, y_true, class_names)
    if extra:
        report.update(extra)
    (out / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    accuracy = report["accuracy"]
    title = f"{split}: accuracy {accuracy:.1%} ({report['num_images']} images)"
    groups = [
        f"{name} {g['accuracy']:.1%} ({g['num_images']})"
        for name, g in report.get("groups", {}).items()
        if g["accuracy"] is not None
    ]
    if groups:  # kids vs adults, where the folder says which photo is which
        title += "\n" + ", ".join(groups)
    plot_confusion_matrix(np.asarray(report["confusion_matrix"]), class_names, out / CONFUSION_PNG, title)
    plot_per_class(report, out / PER_CLASS_PNG, f"{split}: per-class precision / recall / F1")
    return report


def group_accuracy(paths: list, logits: np.ndarray, y_true: np.ndarray, table: dict) -> dict:
    """Accuracy of kids' and adults' photos apart, from an images.csv table keyed by file stem."""
    correct = softmax(logits).argmax(axis=1) == np.asarray(y_true)
    kids = np.asarray([table.get(Path(p).stem, {}).get("kids") == "True" for p in paths], dtype=bool)
    known = np.asarray([Path(p).stem in table for p in paths], dtype=bool)
    out = {}
    for name, rows in (("kids", kids & known), ("adults", ~kids & known)):
        out[name] = {
            "accuracy": float(correct[rows].mean()) if rows.any() else None,
            "num_images": int(rows.sum()),
        }
    return out


def evaluate_saved_model(
    model_path: str | Path,
    data_dir: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    output_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
) -> dict:
    """Run the saved full model on every image of ``split`` (or of ``images_dir``, a LABEL/IMAGE folder)
    and write the report (slow but honest). Photos are made square the way the model was trained
    (``resize`` in the config.json next to it; squash without one)."""
    import keras
    from tqdm import tqdm

    from train.calibration import summary
    from train.config import trained_resize
    from train.data import discover, discover_folder, load_split, read_image_table
    from train.errors import DataError, RunConfigError
    from train.model import TopLabelCalibration  # noqa: F401 - registers the layer for load_model

    model_path = Path(model_path)
    labels_path = model_path.with_name("labels.json")
    if not model_path.is_file():
        raise DataError(f"Model file not found: {model_path}")
    if not labels_path.is_file():
        raise DataError(f"labels.json not found next to the model: {labels_path}")
    try:
        labels = read_json(labels_path, "Labels file")
    except JSONFileError as exc:
        raise DataError(str(exc)) from None
    problem = labels_problem(labels)
    if problem:
        raise DataError(f"{labels_path}: {problem}.")
    try:
        resize = trained_resize(model_path)
    except RunConfigError as exc:
        raise DataError(str(exc)) from None
    table: dict = {}
    if images_dir is not None:
        split = Path(images_dir).name
        data = discover_folder(images_dir, labels, split)
        table = read_image_table(images_dir)
    else:
        if data_dir is None:
            raise DataError("Pass --data-dir (a dataset with splits) or --images-dir (a LABEL/IMAGE folder)")
        dataset = discover(data_dir)
        if dataset.class_names != labels:
            found = dataset.class_names
            raise DataError(f"The data's classes {found} differ from the model's labels {labels}")
        if split not in dataset.splits:
            raise DataError(f"Unknown split {split!r}; choose from {list(dataset.splits)}")
        data = dataset.splits[split]
    model = keras.saving.load_model(model_path)
    height, width = model.input_shape[1:3]
    images, kept, skipped = load_split(data.paths, (height, width), desc=f"load {split}", resize=resize)
    logits = np.empty((len(images), len(labels)), dtype=np.float32)
    for start in tqdm(range(0, len(images), PREDICT_BATCH), desc=f"predict {split}", unit="batch"):
        chunk = images[start : start + PREDICT_BATCH].astype(np.float32)
        logits[start : start + len(chunk)] = np.asarray(model(chunk, training=False))
    paths = [data.paths[i] for i in kept]
    extra = {"model": str(model_path), "resize": resize, "skipped_images": [s.__dict__ for s in skipped]}
    # A score is a promise: calibration and accuracy on the most confident photos beside top-1.
    extra["calibration"] = summary(softmax(logits), data.labels[kept])
    if table:
        extra["groups"] = group_accuracy(paths, logits, data.labels[kept], table)
    # Its own folder by default, so the training run's metrics.json is never overwritten.
    return write_report(
        output_dir or model_path.parent / f"evaluation-{split}",
        logits,
        data.labels[kept],
        labels,
        paths,
        split,
        extra,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a saved model.keras (labels.json next to it) on a split of a dataset, "
        "or on any folder of LABEL/IMAGE photos (with images.csv: kids' and adults' photos apart too).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", type=Path, help="path of the saved full model (.keras)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="dataset root with train/validation/test")
    where.add_argument(
        "--images-dir", type=Path, help="a LABEL/IMAGE folder, e.g. ../shared/data/clothing-dataset-extra"
    )
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="which split of --data-dir to evaluate")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where to write metrics.json and PNGs (default: MODEL_DIR/evaluation-SPLIT or -FOLDER)",
    )
    args = parser.parse_args(argv)
    from train.errors import TrainError

    try:
        report = evaluate_saved_model(args.model, args.data_dir, args.split, args.output_dir, args.images_dir)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{report['split']} accuracy {report['accuracy']:.4f} on {report['num_images']} images")
    scores = report["calibration"]
    coverage = ", ".join(f"{c} {a:.4f}" for c, a in scores["coverage_accuracy"].items())
    print(f"  top-3 {scores['top3']:.4f}, ECE {scores['ece']:.3f}, most confident: {coverage}")
    for name, group in report.get("groups", {}).items():
        if group["accuracy"] is not None:
            print(f"  {name}: accuracy {group['accuracy']:.4f} on {group['num_images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())

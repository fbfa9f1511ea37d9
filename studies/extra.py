"""``python -m studies.extra``: how well do heads generalise to other contributors' photos?

For each resize mode, the frozen base's features of train (optionally ``--limit-per-class`` images per
class), validation and the extra photos (image and mirror) are computed once and cached like training's.
Then, for a head trained without and with the extra photos:

- grouped CV on the extra photos: the contributors (``sender_id`` in images.csv) are dealt into folds;
  each fold's photos are scored by a head trained on train + validation (+ the other folds' extra
  photos), so no contributor is ever on both sides; also with flip test-time augmentation (the mean of
  the probabilities of the photo and its mirror), and split into kids' and adults' clothes;
- validation accuracy: a head trained on train (+ all extra photos), scored on validation.

The test split is never read. Every head trains a fixed number of epochs: no fold picks its own epoch.

    python -m studies.extra --data-dir DIR --extra-dir EXTRA --weights PATH [--resize squash,letterbox]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from lambda_function.preprocess import RESIZE_MODES
from train.config import FEATURE_BACKENDS, TrainConfig
from train.folds import contributors_and_kids, grouped_folds

FOLDS = 5
# train's head epochs, fixed as in studies.choose_blocks: no fold picks its epoch on the data it is scored on
EPOCHS = TrainConfig.epochs
OUTPUT_DIR = Path("artifacts/study_extra")
RESULTS_FILE = "study_extra.json"
PLOT_FILE = "study_extra.png"


def fit_predict(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    epochs: int,
    scored,
    sample_weight: np.ndarray | None = None,
):
    """Train the configured head for ``epochs`` on (x, y) (rows weighted by ``sample_weight``, if given);
    return its probabilities for each of ``scored``."""
    import keras

    from lambda_function.classifier import softmax
    from train.trainer import compiled_head, set_seeds

    set_seeds(config.seed)
    head = compiled_head(config, x, num_classes)
    targets = keras.utils.to_categorical(y, num_classes)
    head.fit(
        x,
        targets,
        sample_weight=sample_weight,
        batch_size=config.batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
    )
    return [softmax(np.asarray(head.predict(s, verbose=0))) for s in scored]


def run_record(module: str, argv: list[str] | None) -> dict:
    """How a study was run: its command line and UTC start time (the head of its results JSON)."""
    args = argv if argv is not None else sys.argv[1:]
    return {
        "command": f"python -m {module} " + " ".join(args),
        "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def mean_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return float(np.mean(values)) if values else None


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else float("nan")


def first_per_class(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first ``count`` rows of each class, in order: with ``discover``'s sorted, class-grouped
    paths, the features of ``--limit-per-class count``, taken from a run with a larger limit."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        rank[rows] = np.arange(len(rows))
    return np.flatnonzero(rank < count)


def take_first_per_class(split, count: int):
    """The same SplitFeatures, cut to the first ``count`` rows of each class (see first_per_class)."""
    rows = first_per_class(split.labels, count)
    return type(split)(split.features[rows], split.labels[rows], [split.paths[i] for i in rows])


def study_mode(
    config: TrainConfig,
    extra_dir: Path,
    extractor,
    folds: int,
    epochs: int,
    subset_per_class: int | None = None,
    tta: bool = True,
    seeds: tuple[int, ...] = (42,),
) -> dict:
    """Features for one resize mode, then the figures without and with the extra photos."""
    from train.data import discover, discover_folder
    from train.trainer import EXTRA_SPLIT, FeatureStore

    started = time.perf_counter()
    dataset = discover(config.data_dir, config.limit_per_class)
    dataset.splits[EXTRA_SPLIT] = discover_folder(extra_dir, dataset.class_names, EXTRA_SPLIT)
    store = FeatureStore(config, dataset, extractor)
    # Extra photos first: they are the figure that matters, and the cheapest to compute.
    extra0, kept, _ = store.get(EXTRA_SPLIT, 0)
    extra1 = extra0  # without TTA the "mirror" is the photo itself, so both figures are the plain one
    if tta:
        extra1, kept1, _ = store.get(EXTRA_SPLIT, 1)
        if not np.array_equal(kept, kept1):
            raise RuntimeError("cached views of the extra photos disagree; delete the cache")
    val = store.split_features("validation", 1)
    train = store.split_features("train", 1)
    features_s = time.perf_counter() - started
    if subset_per_class is not None:  # exactly what --limit-per-class N gives, from a larger cached run
        train = take_first_per_class(train, subset_per_class)
        val = take_first_per_class(val, subset_per_class)

    extra = dataset.splits[EXTRA_SPLIT]
    extra_labels = extra.labels[kept]
    groups, kids = contributors_and_kids(extra_dir, extra.paths, kept)
    num_classes = len(dataset.class_names)
    base_x = np.concatenate([train.features, val.features])
    base_y = np.concatenate([train.labels, val.labels])

    result = {"resize": config.resize, "features_s": round(features_s, 1), "heads": {}}
    for with_extra in (False, True):
        head_started = time.perf_counter()
        runs = []
        for seed in seeds:  # heads on a few hundred rows vary with their seed: report the mean
            seeded = dataclasses.replace(config, seed=seed)
            plain = np.zeros((len(kept), num_classes))
            flipped = np.zeros_like(plain)
            for held in grouped_folds(groups, folds):
                x, y = base_x, base_y
                if with_extra:  # the other folds' photos, once each (as train's default --train-views 1)
                    others = np.setdiff1d(np.arange(len(kept)), held)
                    x, y = np.concatenate([x, extra0[others]]), np.concatenate([y, extra_labels[others]])
                p0, p1 = fit_predict(seeded, x, y, num_classes, epochs, [extra0[held], extra1[held]])
                plain[held], flipped[held] = p0, (p0 + p1) / 2
            x, y = train.features, train.labels
            if with_extra:
                x, y = np.concatenate([x, extra0]), np.concatenate([y, extra_labels])
            (val_probs,) = fit_predict(seeded, x, y, num_classes, epochs, [val.features])
            runs.append(
                {
                    "seed": seed,
                    "extra_grouped_cv": accuracy(plain, extra_labels),
                    "extra_grouped_cv_tta_flip": accuracy(flipped, extra_labels) if tta else None,
                    "extra_kids": accuracy(plain[kids], extra_labels[kids]),
                    "extra_adults": accuracy(plain[~kids], extra_labels[~kids]),
                    "validation": accuracy(val_probs, val.labels),
                }
            )
        name = "with_extra" if with_extra else "without_extra"
        r = {k: mean_of(runs, k) for k in runs[0] if k != "seed"}
        r.update(seeds=runs, head_s=round(time.perf_counter() - head_started, 1))
        result["heads"][name] = r
        flip = f"flip TTA {r['extra_grouped_cv_tta_flip']:.4f}; " if tta else ""
        print(
            f"[{config.resize}, {name}] extra grouped-CV {r['extra_grouped_cv']:.4f} ({flip}"
            f"kids {r['extra_kids']:.4f}, adults {r['extra_adults']:.4f}), validation {r['validation']:.4f}"
            f" (mean of {len(seeds)} seeds)",
            flush=True,
        )
    result.update(
        extra_images=len(kept),
        extra_kids=int(kids.sum()),
        contributors=len(set(groups)),
        train_images=len(train.labels),
        validation_images=len(val.labels),
    )
    return result


def plot(results: list[dict], path: Path) -> None:
    from train.evaluate import _pyplot

    plt = _pyplot()
    labels, cv, val = [], [], []
    for r in results:
        for name, h in r["heads"].items():
            labels.append(f"{r['resize']}\n{'+ extra' if name == 'with_extra' else 'no extra'}")
            cv.append(h["extra_grouped_cv"])
            val.append(h["validation"])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4))
    ax.bar(x - 0.2, cv, width=0.4, label="extra photos, grouped CV")
    ax.bar(x + 0.2, val, width=0.4, label="validation")
    for xi, (c, v) in enumerate(zip(cv, val, strict=True)):
        ax.text(xi - 0.2, c + 0.005, f"{c:.1%}", ha="center", fontsize=8)
        ax.text(xi + 0.2, v + 0.005, f"{v:.1%}", ha="center", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Frozen-feature head: resize mode and extra photos")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.extra", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds train/ and validation/")
    parser.add_argument("--extra-dir", type=Path, required=True, help="LABEL/IMAGE folder with images.csv")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a .weights.h5 path or 'none'")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="results JSON, PNG and cache")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default OUTPUT/cache)")
    parser.add_argument("--resize", default=",".join(RESIZE_MODES), help="comma-separated resize modes")
    parser.add_argument("--folds", type=int, default=FOLDS, help="contributor-grouped folds")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="head epochs per fit")
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    parser.add_argument(
        "--feature-backend",
        choices=FEATURE_BACKENDS,
        default=TrainConfig.feature_backend,
        help="'litert' (fastest on CPU) or 'keras' (use it on a GPU)",
    )
    parser.add_argument("--limit-per-class", type=int, default=None, help="train images per class")
    parser.add_argument(
        "--subset-per-class",
        type=int,
        default=None,
        help="heads see only the first N train and validation images per class, as --limit-per-class N "
        "would give, but taken from features cached with a larger limit",
    )
    parser.add_argument("--seeds", default="42", help="comma-separated head seeds; figures are their mean")
    parser.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, default=True, help="also score flip TTA"
    )
    args = parser.parse_args(argv)
    try:
        modes = [m.strip() for m in args.resize.split(",") if m.strip()]
        seeds = tuple(int(part) for part in args.seeds.split(",") if part.strip())
        if not seeds:
            raise ValueError("name at least one seed")
        configs = [
            TrainConfig(
                data_dir=args.data_dir,
                output_dir=args.output_dir,
                weights=args.weights,
                image_size=args.image_size,
                resize=mode,
                feature_backend=args.feature_backend,
                limit_per_class=args.limit_per_class,
                cache_dir=args.cache_dir,
            )
            for mode in modes
        ]
        if not configs:
            raise ValueError("name at least one resize mode")
        if args.folds < 2:
            raise ValueError(f"folds must be at least 2, got {args.folds}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from train.data import DataError
    from train.features import WeightsError, build_extractor

    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **run_record("studies.extra", argv),
        "folds": args.folds,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "limit_per_class": args.limit_per_class,
        "subset_per_class": args.subset_per_class,
        "seeds": list(seeds),
        "results": [],
    }
    try:
        extractor = build_extractor(args.image_size, args.weights, configs[0].blocks)
        for config in configs:
            record["results"].append(
                study_mode(
                    config,
                    args.extra_dir,
                    extractor,
                    args.folds,
                    args.epochs,
                    subset_per_class=args.subset_per_class,
                    tta=args.tta,
                    seeds=seeds,
                )
            )
            # Written after every mode: a long run that is stopped still leaves its finished figures.
            (args.output_dir / RESULTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
            plot(record["results"], args.output_dir / PLOT_FILE)
    except (DataError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"written {args.output_dir / RESULTS_FILE} and {PLOT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m studies.choose_blocks``: which Xception blocks to pool, by k-fold CV on train + validation.

The test split is never read. Every candidate block is pooled in one extraction pass (cached like the
training features, so a later run is quick); each candidate set is a suffix of the blocks (14; 13-14;
12-14; ...), and the default head (standardize -> Dense(100) -> Dropout -> Dense(classes)) is trained
for a fixed number of epochs on k-1 folds and scored on the held-out fold.

    python -m studies.choose_blocks --data-dir DIR --weights PATH [--candidates 8-14] [--folds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from train.config import LAST_BLOCK, TrainConfig

FOLDS = 5
# train's head epochs, fixed: no fold may pick its own best epoch on the data it is scored on
EPOCHS = TrainConfig.epochs
CANDIDATES = "8,9,10,11,12,13,14"
OUTPUT_DIR = Path("artifacts/choose_blocks")
RESULTS_FILE = "choose_blocks.json"


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out index arrays: each class spread evenly over the folds, shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for i, index in enumerate(members):
            parts[i % folds].append(int(index))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def block_columns(widths: dict[int, int], blocks: tuple[int, ...]) -> np.ndarray:
    """Column indices of ``blocks`` inside features concatenated in ``widths``' (block) order."""
    starts, offset = {}, 0
    for block, width in sorted(widths.items()):
        starts[block] = offset
        offset += width
    return np.concatenate([np.arange(starts[b], starts[b] + widths[b]) for b in blocks])


def cross_validate(
    features: np.ndarray, labels: np.ndarray, num_classes: int, config: TrainConfig, folds: int, epochs: int
) -> list[float]:
    import keras

    from train.trainer import compiled_head, set_seeds

    scores = []
    for held_out in stratified_folds(labels, folds, config.seed):
        fit = np.setdiff1d(np.arange(len(labels)), held_out)
        set_seeds(config.seed)
        head = compiled_head(config, features[fit], num_classes)
        targets = keras.utils.to_categorical(labels[fit], num_classes)
        head.fit(features[fit], targets, batch_size=config.batch_size, epochs=epochs, verbose=0)
        predicted = np.asarray(head.predict(features[held_out], verbose=0)).argmax(-1)
        scores.append(float(np.mean(predicted == labels[held_out])))
    return scores


def choose(config: TrainConfig, folds: int = FOLDS, epochs: int = EPOCHS) -> list[dict]:
    """One row per candidate set: blocks, feature count, per-fold and mean CV accuracy."""
    from train.data import discover
    from train.features import build_extractor
    from train.trainer import FeatureStore

    dataset = discover(config.data_dir, config.limit_per_class)
    candidates = config.blocks
    extractor = build_extractor(config.image_size, config.weights, candidates)
    widths = {b: int(extractor.get_layer(f"pool_block{b}").output.shape[-1]) for b in candidates}
    store = FeatureStore(config, dataset, extractor)
    train, val = store.split_features("train", 1), store.split_features("validation", 1)
    features = np.concatenate([train.features, val.features])
    labels = np.concatenate([train.labels, val.labels])
    rows = []
    for first in sorted(candidates, reverse=True):
        blocks = tuple(b for b in candidates if b >= first)
        columns = block_columns(widths, blocks)
        scores = cross_validate(features[:, columns], labels, len(dataset.class_names), config, folds, epochs)
        row = {
            "blocks": list(blocks),
            "features": int(len(columns)),
            "folds": scores,
            "mean": float(np.mean(scores)),
            "stderr": float(np.std(scores) / np.sqrt(len(scores))),
        }
        name = f"{first}-{LAST_BLOCK}" if first < LAST_BLOCK else str(LAST_BLOCK)
        print(
            f"blocks {name}: {row['features']} features, CV accuracy {row['mean']:.4f} ± {row['stderr']:.4f}"
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m studies.choose_blocks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="holds train/ and validation/")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a .weights.h5 path or 'none'")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="results JSON and cache")
    parser.add_argument("--candidates", default=CANDIDATES, help="blocks that may be pooled (2-14)")
    parser.add_argument("--folds", type=int, default=FOLDS, help="number of CV folds")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="head epochs per fold")
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    parser.add_argument("--limit-per-class", type=int, default=None, help="quick runs")
    parser.add_argument(
        "--max-unreadable-fraction",
        type=float,
        default=TrainConfig.max_unreadable_fraction,
        help="stop above this unreadable share of a split",
    )
    args = parser.parse_args(argv)
    try:
        config = TrainConfig(
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            weights=args.weights,
            image_size=args.image_size,
            pooled_blocks=args.candidates,
            train_views=1,
            limit_per_class=args.limit_per_class,
            max_unreadable_fraction=args.max_unreadable_fraction,
        )
        if args.folds < 2:
            raise ValueError(f"folds must be at least 2, got {args.folds}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from train.errors import TrainError

    try:
        rows = choose(config, args.folds, args.epochs)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {"folds": args.folds, "epochs": args.epochs, "candidates": config.pooled_blocks, "rows": rows}
    (args.output_dir / RESULTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    best = max(rows, key=lambda r: r["mean"])
    print(f"best: blocks {best['blocks']} ({best['mean']:.4f}); written {args.output_dir / RESULTS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m studies.block14``: the accuracy levers a CPU can afford, on photos the heads never saw.

Blocks 1-13 of the frozen base are a fixed function of the photo (BatchNorm in inference mode), so one
forward pass per photo caches the pooled outputs of blocks 11 and 12 and the whole output map of block
13, the input of block 14. From that cache, without running the base again:

- heads on any of blocks 11-14 (block 13 pooled from its map, block 14 run on it), over several seeds,
  optionally with one "photo" view of train (``train.augment.random_photo``) in the training rows;
- optionally, contributor-grouped CV on the extra photos with the other folds' photos in training at
  several sample weights;
- block 14 itself fine-tuned (its BatchNorm frozen) after the head, scored epoch by epoch: fine-tuning
  on 2 CPU cores, since block 14 costs about a sixth of a forward pass.

Heads train on train only, for a fixed number of epochs, so every extra photo is held out and scored
(grouped CV aside); validation is scored too; the test split is never read. Docs: docs/lab/accuracy-levers.md.

    python -m studies.block14 --data-dir DIR --extra-dir EXTRA --weights PATH [--photo-view]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from lambda_function.preprocess import RESIZE_MODES
from train.block14 import MAP_BLOCK, Maps
from train.config import FEATURE_BACKENDS, TrainConfig, parse_blocks

POOLED_BLOCKS = (11, 12)  # pooled at extraction (train.block14: the blocks before the cached map)
HEAD_EPOCHS = TrainConfig.epochs  # as studies.extra: fixed, no head picks its epoch on what it is scored on
FOLDS = 5
OUTPUT_DIR = Path("artifacts/study_block14")
RESULTS_FILE = "study_block14.json"
PLOT_FILE = "study_block14.png"
PHOTO_VIEW = 2  # the first random view index: views 0 and 1 are the photo and its mirror


def columns(blocks: tuple[int, ...], widths: dict[int, int]) -> np.ndarray:
    """Column indices of ``blocks`` in the [11, 12, 13, 14] feature layout."""
    starts, at = {}, 0
    for block in (*POOLED_BLOCKS, MAP_BLOCK, MAP_BLOCK + 1):
        starts[block], at = at, at + widths[block]
    return np.concatenate([np.arange(starts[b], starts[b] + widths[b]) for b in blocks])


def block_widths(tail, maps: Maps) -> dict[int, int]:
    """The width of each of blocks 11-14 in ``tail``'s output (the [11, 12, 13, 14] layout of ``columns``)."""
    # Blocks 11 and 12 (Xception's middle flow) have the same width; block 14's is what the tail adds.
    half, channels = maps.pooled.shape[1] // 2, maps.maps.shape[-1]
    return {11: half, 12: half, 13: channels, 14: int(tail.output.shape[-1]) - 2 * half - channels}


def hit_rates(probs: np.ndarray, labels: np.ndarray, kids: np.ndarray) -> dict:
    hits = probs.argmax(axis=1) == labels
    return {
        "extra": float(hits.mean()),
        "kids": float(hits[kids].mean()) if kids.any() else None,
        "adults": float(hits[~kids].mean()) if (~kids).any() else None,
    }


def summarise(runs: list[dict]) -> dict:
    """The mean over seeds of every figure in ``runs``, the extra photos' range, and the runs themselves."""
    from studies.extra import mean_of

    extra = [r["extra"] for r in runs]
    means = {key: mean_of(runs, key) for key in runs[0] if key != "seed"}
    return {**means, "extra_range": [min(extra), max(extra)], "seeds": runs}


def head_sweep(config, sets, seeds, train_x, train_y, val, extra, kids, epochs, num_classes) -> list[dict]:
    from studies.extra import accuracy, fit_predict

    rows = []
    for name, cols in sets:
        runs = []
        for seed in seeds:
            seeded = dataclasses.replace(config, seed=seed)
            val_p, extra_p = fit_predict(
                seeded, train_x[:, cols], train_y, num_classes, epochs, [val[0][:, cols], extra[0][:, cols]]
            )
            runs.append(
                {"seed": seed, **hit_rates(extra_p, extra[1], kids), "validation": accuracy(val_p, val[1])}
            )
        rows.append({"heads": name, **summarise(runs)})
        r = rows[-1]
        print(
            f"[{name}] extra {r['extra']:.4f} (range {r['extra_range'][0]:.4f}-{r['extra_range'][1]:.4f}), "
            f"validation {r['validation']:.4f}, {len(seeds)} seeds",
            flush=True,
        )
    return rows


def weighted_extra_cv(
    config, folds, cols, weights, seeds, train_x, train_y, extra, kids, groups, epochs, num_classes
):
    """Grouped CV on the extra photos with the other folds' photos in training at each sample weight."""
    from studies.extra import fit_predict
    from train.folds import grouped_folds

    rows = []
    for weight in weights:
        runs = []
        for seed in seeds:
            seeded = dataclasses.replace(config, seed=seed)
            probs = np.zeros((len(extra[1]), num_classes))
            # Weight 0 trains every fold's head on train alone: one head scores all the photos.
            for held in grouped_folds(groups, folds) if weight > 0 else [np.arange(len(extra[1]))]:
                others = np.setdiff1d(np.arange(len(extra[1])), held)
                x, y, w = train_x[:, cols], train_y, None
                if weight > 0:
                    x = np.concatenate([x, extra[0][others][:, cols]])
                    y = np.concatenate([y, extra[1][others]])
                    w = np.concatenate([np.ones(len(train_y)), np.full(len(others), weight)])
                (probs[held],) = fit_predict(seeded, x, y, num_classes, epochs, [extra[0][held][:, cols]], w)
            runs.append({"seed": seed, **hit_rates(probs, extra[1], kids)})
        rows.append({"extra_weight": weight, **summarise(runs)})
        print(f"[grouped CV, extra photos at weight {weight}] extra {rows[-1]['extra']:.4f}", flush=True)
    return rows


def fine_tune_block14(
    config, tail, layers14, train, frozen, val, extra, kids, epochs, learning_rate, head_epochs, num_classes
):
    """Head on ``frozen`` (train's features before block 14 moves), then block 14 trained with it
    (train.block14.tune_block14); validation and extra photos scored every epoch."""
    import keras

    from lambda_function.classifier import softmax
    from studies.extra import accuracy
    from train.block14 import tune_block14
    from train.trainer import compiled_head, set_seeds

    set_seeds(config.seed)
    head = compiled_head(config, frozen, num_classes)
    head.fit(frozen, keras.utils.to_categorical(train.labels, num_classes), batch_size=config.batch_size,
             epochs=head_epochs, shuffle=True, verbose=0)  # fmt: skip

    def score(epoch: int, model) -> dict:
        val_p = softmax(np.asarray(model.predict(val.inputs(slice(None)), verbose=0)))
        extra_p = softmax(np.asarray(model.predict(extra.inputs(slice(None)), verbose=0)))
        row = {**hit_rates(extra_p, extra.labels, kids), "validation": accuracy(val_p, val.labels)}
        print(f"[fine-tune block 14] epoch {epoch}: {json.dumps(row)}", flush=True)
        return row

    before = score(0, keras.Model(tail.inputs, head(tail.output)))
    tuned = tune_block14(
        tail, layers14, head, train, epochs, learning_rate, config.batch_size, config.seed, on_epoch=score
    )
    tuned["epochs"] = [{"epoch": 0, "train_loss": None, **before}, *tuned["epochs"]]
    return tuned


def load_cache(config: TrainConfig, extra_dir: Path, base, photo_view: bool):
    """The cached splits (train, its photo view or None, validation, extra) and the extra photos' table:
    the training cache of block 13 maps (train.trainer.map_store)."""
    from train.data import discover, discover_folder
    from train.folds import contributors_and_kids
    from train.trainer import EXTRA_SPLIT, map_store

    dataset = discover(config.data_dir, config.limit_per_class)
    dataset.splits[EXTRA_SPLIT] = discover_folder(extra_dir, dataset.class_names, EXTRA_SPLIT)
    store, map_shape = map_store(config, dataset, base)
    extra, extra_paths = store.split_maps(EXTRA_SPLIT, 1, map_shape)  # first: the cheapest to compute
    val, _ = store.split_maps("validation", 1, map_shape)
    train, _ = store.split_maps("train", 1, map_shape, np.float16)
    photo = None
    if photo_view:  # view PHOTO_VIEW alone: views 0 and 1 (the photo and its mirror) are not both wanted
        flat, kept, _ = store.get("train", PHOTO_VIEW)
        width = store.dim - int(np.prod(map_shape))
        photo = Maps(flat[:, :width].copy(), flat[:, width:].reshape((-1, *map_shape)).astype(np.float16),
                     dataset.splits["train"].labels[kept])  # fmt: skip
    groups, kids = contributors_and_kids(extra_dir, extra_paths, np.arange(len(extra_paths)))
    return train, photo, val, extra, groups, kids, len(dataset.class_names)


def plot(record: dict, path: Path) -> None:
    from train.evaluate import _pyplot

    plt = _pyplot()
    heads, tuned = record["heads"], record.get("fine_tune")
    fig, axes = plt.subplots(1, 2 if tuned else 1, figsize=(12 if tuned else 7, 4), squeeze=False)
    ax = axes[0][0]
    x = np.arange(len(heads))
    extra = np.array([h["extra"] for h in heads])
    low, high = (np.array([h["extra_range"][i] for h in heads]) for i in (0, 1))
    ax.bar(x - 0.2, extra, width=0.4, yerr=[extra - low, high - extra], capsize=3,
           label="extra photos (mean, range over seeds)")  # fmt: skip
    ax.bar(x + 0.2, [h["validation"] for h in heads], width=0.4, label="validation")
    ax.set_xticks(x, [h["heads"].replace(" + ", "\n+ ") for h in heads], fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Frozen-feature heads (train split only)")
    ax.legend(loc="lower right", fontsize=8)
    if tuned:
        ax = axes[0][1]
        epochs = [row["epoch"] for row in tuned["epochs"]]
        for key, label in (("extra", "extra photos"), ("validation", "validation")):
            ax.plot(epochs, [row[key] for row in tuned["epochs"]], marker="o", label=label)
        ax.set_xlabel("fine-tuning epoch (0 = head only)")
        ax.set_ylim(0.5, 1.0)
        ax.set_title("Block 14 fine-tuned on cached block 13 maps")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_sets(text: str) -> list[tuple[int, ...]]:
    sets = [parse_blocks(part, "heads") for part in text.split(";") if part.strip()]
    if not sets or any(b < POOLED_BLOCKS[0] for blocks in sets for b in blocks):
        raise ValueError(f"heads must be ';'-separated sets of blocks 11-14, got {text!r}")
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.block14", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds train/ and validation/")
    parser.add_argument("--extra-dir", type=Path, required=True, help="LABEL/IMAGE folder with images.csv")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a .weights.h5 path or 'none'")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="results JSON, PNG and cache")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default OUTPUT/cache)")
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    parser.add_argument("--resize", choices=RESIZE_MODES, default=TrainConfig.resize)
    parser.add_argument("--feature-backend", choices=FEATURE_BACKENDS, default=TrainConfig.feature_backend)
    parser.add_argument("--limit-per-class", type=int, default=None, help="train images per class")
    parser.add_argument("--heads", default="11,12,13,14;13,14", help="';'-separated block sets (11-14)")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated head seeds")
    parser.add_argument("--epochs", type=int, default=HEAD_EPOCHS, help="head epochs per fit")
    parser.add_argument("--photo-view", action="store_true", help="also heads with one photo view of train")
    parser.add_argument(
        "--extra-weights", default="", help="grouped CV with the other folds' extra photos at these weights"
    )
    parser.add_argument(
        "--folds", type=int, default=FOLDS, help="contributor-grouped folds (--extra-weights)"
    )
    parser.add_argument("--fine-tune-epochs", type=int, default=5, help="block 14 epochs (0: skip)")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=3e-5)
    parser.add_argument(
        "--fine-tune-seed", type=int, default=42, help="seed of the head fine-tuned with block 14"
    )
    args = parser.parse_args(argv)
    try:
        sets = parse_sets(args.heads)
        seeds = tuple(int(part) for part in args.seeds.split(",") if part.strip())
        weights = [float(part) for part in args.extra_weights.split(",") if part.strip()]
        if not seeds:
            raise ValueError("name at least one seed")
        if weights and args.folds < 2:
            raise ValueError(f"folds must be at least 2, got {args.folds}")
        config = TrainConfig(
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            weights=args.weights,
            image_size=args.image_size,
            resize=args.resize,
            view_style="photo",
            feature_backend=args.feature_backend,
            limit_per_class=args.limit_per_class,
            cache_dir=args.cache_dir or args.output_dir / "cache",  # maps go to its block13-maps/
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from studies.extra import run_record
    from train.block14 import block_layers, build_tail
    from train.config import LAST_BLOCK
    from train.data import DataError
    from train.features import WeightsError, xception_base

    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **run_record("studies.block14", argv),
        "image_size": args.image_size,
        "resize": args.resize,
        "seeds": list(seeds),
        "head_epochs": args.epochs,
    }
    try:
        base = xception_base(args.image_size, args.weights)
        train, photo, val, extra, groups, kids, num_classes = load_cache(
            config, args.extra_dir, base, args.photo_view
        )
    except (DataError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    layers14 = block_layers(base, LAST_BLOCK)
    tail = build_tail(layers14, train.maps.shape[1:], train.pooled.shape[1], config.blocks)
    widths = block_widths(tail, train)
    features = {
        name: s.features(tail) for name, s in (("train", train), ("validation", val), ("extra", extra))
    }
    val_xy, extra_xy = (features["validation"], val.labels), (features["extra"], extra.labels)
    candidates = [(",".join(map(str, b)), columns(b, widths)) for b in sets]
    record["heads"] = head_sweep(
        config, candidates, seeds, features["train"], train.labels, val_xy, extra_xy, kids, args.epochs,
        num_classes,
    )  # fmt: skip
    if photo is not None:
        both_x = np.concatenate([features["train"], photo.features(tail)])
        both_y = np.concatenate([train.labels, photo.labels])
        record["heads"] += head_sweep(
            config, [(f"{n} + photo view", c) for n, c in candidates], seeds, both_x, both_y, val_xy,
            extra_xy, kids, args.epochs, num_classes,
        )  # fmt: skip
    if weights:
        record["weighted_extra_cv"] = weighted_extra_cv(
            config, args.folds, candidates[0][1], weights, seeds, features["train"], train.labels,
            extra_xy, kids, groups, args.epochs, num_classes,
        )  # fmt: skip
    if args.fine_tune_epochs > 0:
        seeded = dataclasses.replace(config, seed=args.fine_tune_seed)
        record["fine_tune"] = fine_tune_block14(
            seeded, tail, layers14, train, features["train"], val, extra, kids, args.fine_tune_epochs,
            args.fine_tune_learning_rate, args.epochs, num_classes,
        )  # fmt: skip
        record["fine_tune"]["seed"] = args.fine_tune_seed
    (args.output_dir / RESULTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    plot(record, args.output_dir / PLOT_FILE)
    print(f"written {args.output_dir / RESULTS_FILE} and {PLOT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

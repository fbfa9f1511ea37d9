"""``python -m studies.calibration``: which CPU recipe gives scores that mean what they say (issue 19)?

From the training cache of block-13 maps (train/block14.py; one LiteRT pass per photo), for each seed:

- ``1 head``: the recipe's head on the frozen features (blocks 11-14), train split only;
- ``K heads``: an ensemble of K heads (seeds SEED, SEED+1000, ...) on the same features;
- ``tuned head``: block 14 fine-tuned with the first head for a few epochs (ImageNet block 14 restored
  before every seed), the head it was tuned with;
- ``tuned + K heads``: K new heads on the tuned block 14's features;
- ``... + extra xW``: the same heads with the other folds' extra photos in training at loss weight W, in
  contributor-grouped folds (every extra photo scored by heads that never saw its contributor); on the
  frozen block 14 at the first weight only when block 14 is tuned too, at every weight otherwise;
- ``... + label smoothing``: the heads trained with label smoothing.

Two variants of the heads' input, on the frozen block 14 only: ``--pool14 avg+max`` (block 14's map pooled by
average and max, 2 x 2048 features) or ``avg+rows`` (by average and by its top and bottom halves, 3 x 2048),
and ``--head-blocks`` (each head on its own set of pooled blocks, the sets dealt to the heads in turn, a fit
per head: an ensemble diverse by input, not only by seed). ``--mixup A`` trains every head on mixed rows.
``--resize crop|letterbox`` makes the photos square another way (features extracted again, cached apart).
``--signed-sqrt`` feeds the heads sign(x) sqrt(|x|) of every feature (power normalization) and ``--block-l2``
each pooled block divided by its length on that photo, both before the heads' standardization.
``--drop-suspects BELOW`` trains every head without the train photos whose own label scores under BELOW
out of fold (studies/label_noise.py; wrong labels or photos between two classes) and draws the worst in
``suspects.png``.

Every set of logits is then calibrated with each method (none, temperature, vector, matrix) fitted on
the held-out pool, validation + the extra photos, nested: each extra fold and each fifth of validation
is calibrated by a map fitted on all the other rows. Reported per configuration and method: top-1,
top-3, ECE (15 bins), Brier, accuracy on the 90/80/70% most confident, on the extra photos (kids /
adults) and validation; mean and range over seeds. The test split is never read. Heads train a fixed
number of epochs, so no choice is made on what is scored. Docs: docs/lab/calibration.md; the run
behind the defaults is in studies/study_calibration.json (rounded).

    python -m studies.calibration --data-dir DIR --extra-dir EXTRA --weights PATH --cache-dir CACHE
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from lambda_function.preprocess import RESIZE_MODES
from train.calibration import METHODS, cross_calibrated, summary
from train.config import TrainConfig, parse_blocks

OUTPUT_DIR = Path("artifacts/study_calibration")
RESULTS_FILE = "study_calibration.json"
LOGITS_FILE = "study_calibration_logits.json"
PLOT_FILE = "study_calibration.png"
SUSPECTS_PLOT = "suspects.png"


def parse_method(text: str) -> tuple[str, float | None]:
    """ "temperature" -> (temperature, None: every photo weighs the same); "temperature@0.5" -> the extra
    photos hold half the calibration fit's weight."""
    method, _, share = text.partition("@")
    if method not in METHODS:
        raise ValueError(f"calibration methods are {METHODS} (optionally @SHARE of the extra photos)")
    return method, float(share) if share else None


def score(name, seed, val_logits, extra_logits, val_y, extra_y, kids, extra_folds, methods) -> list[dict]:
    """Every calibration method's figures for one configuration's held-out logits (nested, as trained)."""
    from train.heldout import HeldOut

    held = HeldOut(val_logits, val_y, extra_logits, extra_y, kids, extra_folds)
    logits, labels, chunks = held.pool()
    rows = []
    for text in methods:
        method, share = parse_method(text)
        probs = cross_calibrated(method, logits, labels, chunks, held.weights(share))
        val_p, extra_p = probs[: len(val_y)], probs[len(val_y) :]
        rows.append(
            {
                "config": name,
                "seed": seed,
                "calibration": text,
                "extra": summary(extra_p, extra_y),
                "extra_kids": summary(extra_p[kids], extra_y[kids])["top1"],
                "extra_adults": summary(extra_p[~kids], extra_y[~kids])["top1"],
                "validation": summary(val_p, val_y),
            }
        )
    r = rows[min(1, len(rows) - 1)]
    print(
        f"[seed {seed}] {name}: extra top-1 {r['extra']['top1']:.4f}, ECE ({r['calibration']}) "
        f"{r['extra']['ece']:.3f}, 70% most confident {r['extra']['coverage_accuracy']['70%']:.4f}; "
        f"validation {r['validation']['top1']:.4f}",
        flush=True,
    )
    return rows


def with_pool14(tail, kind: str):
    """The recipe's tail (train.block14.build_tail) with block 14's map pooled once more, after the rest:
    ``avg+max`` by its maximum (a garment's most telling patch); ``avg+rows`` by its top and bottom halves
    (overlapping by the middle row), which keeps where the garment's mass sits that a whole-photo average
    loses (a dress runs the photo's length, a top does not) and stays the same under a left-right flip."""
    import keras
    from keras import layers

    block14_map = tail.get_layer("pool_block14").input
    if kind == "avg+max":
        extra = layers.GlobalMaxPooling2D(name="max_block14")(block14_map)
    elif kind == "avg+rows":
        height, width = block14_map.shape[1], block14_map.shape[2]
        half = height // 2 + 1
        halves = layers.AveragePooling2D((half, width), strides=(height - half, 1), name="rows_block14")(
            block14_map
        )
        extra = layers.Flatten(name="rows_block14_flat")(halves)
    else:
        raise ValueError(f"unknown block 14 pooling {kind!r}")
    features = layers.Concatenate(name=f"features_{kind.replace('+', '_')}")([tail.output, extra])
    return keras.Model(tail.inputs, features, name=f"block14_tail_{kind.replace('+', '_')}")


def block_l2(features: np.ndarray, widths: dict[int, int]) -> np.ndarray:
    """Each block's columns (``widths``, the [11, 12, 13, 14] layout) divided by their L2 norm on that
    photo: a dim, flat or low-contrast photo lowers every activation of a block together, and this keeps
    the pattern across channels and drops the overall level. C order and the input's dtype."""
    from studies.block14 import columns

    total = sum(widths.values())
    if total != features.shape[1]:
        raise ValueError(f"block widths add up to {total}, the features have {features.shape[1]} columns")
    out = np.empty_like(features)
    for block in widths:
        cols = columns((block,), widths)
        part = features[:, cols].astype(np.float64)
        out[:, cols] = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out)


def grouped_cv(config, x, y, extra_x, extra_y, val_x, extra_folds, weight, num_classes):
    """Out-of-fold extra logits (train.trainer.grouped_cv_logits, the other folds' extra photos at
    ``weight``) and the first fold's heads' validation logits."""
    from train.trainer import grouped_cv_logits

    weighted = dataclasses.replace(config, extra_weight=weight)
    oof, first = grouped_cv_logits(weighted, x, y, extra_x, extra_y, extra_folds, num_classes)
    return np.asarray(first.model().predict(val_x, verbose=0)), oof


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and range over seeds of the headline figures, per (configuration, calibration)."""
    out = []
    keys = sorted(
        {(r["config"], r["calibration"]) for r in rows}, key=lambda k: [r["config"] for r in rows].index(k[0])
    )
    for config, method in keys:
        runs = [r for r in rows if r["config"] == config and r["calibration"] == method]

        def stat(get, runs=runs):
            values = np.array([get(r) for r in runs], dtype=np.float64)
            return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}

        out.append(
            {
                "config": config,
                "calibration": method,
                "seeds": len(runs),
                "extra_top1": stat(lambda r: r["extra"]["top1"]),
                "extra_top3": stat(lambda r: r["extra"]["top3"]),
                "extra_ece": stat(lambda r: r["extra"]["ece"]),
                "extra_brier": stat(lambda r: r["extra"]["brier"]),
                "extra_cov90": stat(lambda r: r["extra"]["coverage_accuracy"]["90%"]),
                "extra_cov80": stat(lambda r: r["extra"]["coverage_accuracy"]["80%"]),
                "extra_cov70": stat(lambda r: r["extra"]["coverage_accuracy"]["70%"]),
                "extra_kids": stat(lambda r: r["extra_kids"]),
                "extra_adults": stat(lambda r: r["extra_adults"]),
                "val_top1": stat(lambda r: r["validation"]["top1"]),
                "val_ece": stat(lambda r: r["validation"]["ece"]),
                "val_cov70": stat(lambda r: r["validation"]["coverage_accuracy"]["70%"]),
            }
        )
    return out


def plot(table: list[dict], path: Path, method: str) -> None:
    from train.evaluate import _pyplot

    plt = _pyplot()
    rows = [r for r in table if r["calibration"] == method]
    names = [r["config"] for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    ax = axes[0]
    for k, (key, label) in enumerate(
        (
            ("extra_top1", "top-1"),
            ("extra_cov70", "top-1, 70% most confident"),
            ("val_top1", "validation top-1"),
        )
    ):
        mean = np.array([r[key]["mean"] for r in rows])
        low = mean - np.array([r[key]["min"] for r in rows])
        high = np.array([r[key]["max"] for r in rows]) - mean
        ax.bar(x + (k - 1) * 0.27, mean, width=0.27, yerr=[low, high], capsize=2, label=label)
    ax.axhline(0.83, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.92, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, [n.replace(" + ", "\n+ ") for n in names], fontsize=7)
    ax.set_ylim(0.6, 1.0)
    ax.set_title(f"extra photos, grouped CV (mean, range over seeds); {method} calibration")
    ax.legend(loc="lower left", fontsize=7)
    ax = axes[1]
    for method_name in dict.fromkeys(r["calibration"] for r in table):
        sub = [r for r in table if r["calibration"] == method_name]
        if sub:
            ax.plot([r["extra_ece"]["mean"] for r in sub], marker="o", label=method_name)
    ax.axhline(0.06, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(x, [n.replace(" + ", "\n+ ") for n in names], fontsize=7)
    ax.set_title("ECE on the extra photos (15 bins, nested calibration)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds train/ and validation/")
    parser.add_argument("--extra-dir", type=Path, required=True, help="LABEL/IMAGE folder with images.csv")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a .weights.h5 path or 'none'")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="results JSON and PNG")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="training feature cache (default OUTPUT/cache)"
    )
    parser.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    parser.add_argument(
        "--resize", choices=RESIZE_MODES, default=TrainConfig.resize, help="how photos are made square"
    )
    parser.add_argument("--seeds", default="42,43,44,45,46", help="comma-separated seeds")
    parser.add_argument("--heads", type=int, default=5, help="heads in the ensemble")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="head epochs per fit")
    parser.add_argument("--tune-epochs", type=int, default=2, help="block 14 fine-tuning epochs (0: skip)")
    parser.add_argument("--tune-learning-rate", type=float, default=TrainConfig.tune_block14_learning_rate)
    parser.add_argument("--extra-weights", default="1,3", help="loss weights of the extra photos in training")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="0: skip that configuration")
    parser.add_argument("--folds", type=int, default=TrainConfig.folds, help="contributor-grouped folds")
    parser.add_argument("--dropout", type=float, default=TrainConfig.dropout, help="the heads' dropout")
    parser.add_argument(
        "--weight-decay", type=float, default=TrainConfig.weight_decay, help="AdamW weight decay (0: Adam)"
    )
    parser.add_argument("--mixup", type=float, default=TrainConfig.mixup, help="heads' mixup alpha (0: off)")
    parser.add_argument(
        "--dense-units", type=int, default=TrainConfig.dense_units, help="the heads' hidden units (0: linear)"
    )
    parser.add_argument(
        "--pool14",
        choices=("avg", "avg+max", "avg+rows"),
        default="avg",
        help="block 14's pooling (avg: the recipe)",
    )
    parser.add_argument(
        "--signed-sqrt", action="store_true", help="heads on sign(x) sqrt(|x|) of the features"
    )
    parser.add_argument(
        "--block-l2", action="store_true", help="heads on each pooled block divided by its L2 norm"
    )
    parser.add_argument(
        "--drop-suspects",
        type=float,
        default=0.0,
        metavar="BELOW",
        help="leave out train photos whose own label scores under BELOW out of fold (0: keep all)",
    )
    parser.add_argument(
        "--head-blocks",
        default="",
        help="';'-separated block sets dealt to the heads in turn, e.g. '11,12,13,14;12,13,14;13,14'",
    )
    parser.add_argument(
        "--methods",
        default="none,temperature,temperature@0.5,temperature@1,vector,matrix",
        help="calibration methods to compare; METHOD@SHARE: the extra photos hold SHARE of the fit's weight",
    )
    args = parser.parse_args(argv)
    try:
        seeds = tuple(int(part) for part in args.seeds.split(",") if part.strip())
        weights = [float(part) for part in args.extra_weights.split(",") if part.strip()]
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for method in methods:
            parse_method(method)
        if not seeds or not methods:
            raise ValueError("name at least one seed and one method")
        head_blocks = [
            parse_blocks(text, "--head-blocks") for text in args.head_blocks.split(";") if text.strip()
        ]
        if not 0 <= args.drop_suspects < 1:
            raise ValueError(f"--drop-suspects is a probability in [0, 1), got {args.drop_suspects:g}")
        if args.block_l2 and args.pool14 != "avg":
            raise ValueError("--block-l2 knows the blocks of --pool14 avg only")
        frozen_only = head_blocks or args.pool14 != "avg" or args.signed_sqrt or args.block_l2
        if frozen_only and args.tune_epochs > 0:
            raise ValueError(
                "--pool14, --head-blocks, --signed-sqrt and --block-l2 are studied on the frozen block 14: "
                "add --tune-epochs 0"
            )
        config = TrainConfig(
            data_dir=args.data_dir,
            output_dir=args.output_dir,
            weights=args.weights,
            image_size=args.image_size,
            resize=args.resize,
            epochs=args.epochs,
            keep_best=False,
            heads=args.heads,
            cache_dir=args.cache_dir,
            folds=args.folds,
            dropout=args.dropout,
            dense_units=args.dense_units,
            weight_decay=args.weight_decay,
            mixup=args.mixup,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from studies.block14 import block_widths, columns
    from studies.extra import run_record
    from train.block14 import LAST_BLOCK, block_layers, build_tail
    from train.data import DataError, discover, discover_folder
    from train.features import WeightsError, xception_base
    from train.folds import contributors_and_kids, grouped_folds
    from train.model import signed_sqrt_of
    from train.trainer import EXTRA_SPLIT, fit_heads, head_seeds, map_store, tune_block14_on_train

    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {**run_record("studies.calibration", argv), "seeds": list(seeds), "heads": args.heads,
              "head_epochs": args.epochs, "tune_epochs": args.tune_epochs}  # fmt: skip
    started = time.perf_counter()
    try:
        dataset = discover(config.data_dir)
        dataset.splits[EXTRA_SPLIT] = discover_folder(args.extra_dir, dataset.class_names, EXTRA_SPLIT)
        base = xception_base(config.image_size, config.weights)
        store, map_shape = map_store(config, dataset, base)
        extra, extra_paths = store.split_maps(EXTRA_SPLIT, 1, map_shape)
        val, _ = store.split_maps("validation", 1, map_shape)
        train, train_paths = store.split_maps("train", 1, map_shape, np.float16)
    except (DataError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kept = np.array([dataset.splits[EXTRA_SPLIT].paths.index(p) for p in extra_paths])
    groups, kids = contributors_and_kids(args.extra_dir, dataset.splits[EXTRA_SPLIT].paths, kept)
    extra_folds = grouped_folds(groups, args.folds)
    num_classes = len(dataset.class_names)
    layers14 = block_layers(base, LAST_BLOCK)
    imagenet14 = [layer.get_weights() for layer in layers14]
    tail = build_tail(layers14, map_shape, train.pooled.shape[1], config.blocks)
    if args.pool14 != "avg":
        tail = with_pool14(tail, args.pool14)
    frozen = {name: s.features(tail) for name, s in (("train", train), ("val", val), ("extra", extra))}
    if args.signed_sqrt:
        frozen = {name: signed_sqrt_of(f) for name, f in frozen.items()}
    widths = block_widths(tail, train)
    if args.block_l2:
        frozen = {name: block_l2(f, widths) for name, f in frozen.items()}
    if args.drop_suspects > 0:
        from studies.label_noise import contact_sheet, own_label_scores, suspects

        probs = own_label_scores(config, frozen["train"], train.labels, num_classes)
        dropped = suspects(probs, train.labels, args.drop_suspects)
        names = dataset.class_names
        contact_sheet(train_paths, train.labels, probs, dropped, names, args.output_dir / SUSPECTS_PLOT)
        record["dropped"] = [
            {
                "image": train_paths[r].name,
                "label": names[train.labels[r]],
                "own_score": round(probs[r, train.labels[r]], 5),
            }
            for r in dropped
        ]
        keep = np.setdiff1d(np.arange(len(train)), dropped)
        train, frozen["train"] = train.take(keep), frozen["train"][keep]
        print(f"{len(dropped)} train photos left out (own label under {args.drop_suspects:g} out of fold)")
    rows: list[dict] = []
    tuning: list[dict] = []
    logits: list[dict] = []  # every configuration's held-out logits, for later calibration studies

    # A head recipe other than train's default is named in every row, so two runs' logits can be merged.
    changed = []
    if args.dropout != TrainConfig.dropout:
        changed.append(f"dropout {args.dropout:g}")
    if args.dense_units != TrainConfig.dense_units:
        changed.append(f"{args.dense_units} hidden units" if args.dense_units else "linear")
    if args.weight_decay != TrainConfig.weight_decay:
        changed.append(f"weight decay {args.weight_decay:g}")
    if args.mixup != TrainConfig.mixup:
        changed.append(f"mixup {args.mixup:g}")
    if args.epochs != TrainConfig.epochs:
        changed.append(f"{args.epochs} epochs")
    if args.resize != TrainConfig.resize:
        changed.append(f"{args.resize} resize")
    if args.pool14 != "avg":
        changed.append(f"block 14 {args.pool14}")
    if args.signed_sqrt:
        changed.append("signed sqrt")
    if args.block_l2:
        changed.append("blocks L2-normalized")
    if args.drop_suspects > 0:
        changed.append(f"train suspects under {args.drop_suspects:g} left out")
    if head_blocks:
        changed.append("heads on blocks " + " / ".join(",".join(map(str, b)) for b in head_blocks))
    variant = f" ({', '.join(changed)})" if changed else ""
    head_columns = [columns(blocks, widths) for blocks in head_blocks]

    def by_head_blocks(fit, cfg, features):
        """``fit(cfg, features)``, or with --head-blocks one fit per head on its block set (seeded as that
        head of the ensemble would be), the heads' logits averaged as the model averages them."""
        if not head_columns:
            return fit(cfg, features)
        outs = []
        for i, seed in enumerate(head_seeds(cfg)):
            cols = head_columns[i % len(head_columns)]
            one = dataclasses.replace(cfg, seed=seed, heads=1)
            # C order, as the recipe's features: a column slice is Fortran-ordered, and the layout alone
            # changes the float rounding of training (one head, seed 42: 80.4% -> 78.9% on the extra photos).
            outs.append(fit(one, {name: np.ascontiguousarray(f[:, cols]) for name, f in features.items()}))
        return tuple(np.mean(parts, axis=0) for parts in zip(*outs, strict=True))

    def run_scores(name, seed, val_logits, extra_logits):
        name += variant
        logits.append({"config": name, "seed": seed, "validation": np.round(val_logits, 5).tolist(),
                       "extra": np.round(extra_logits, 5).tolist()})  # fmt: skip
        rows.extend(score(name, seed, val_logits, extra_logits, val.labels, extra.labels, kids, extra_folds,
                          methods))  # fmt: skip

    def heads_logits(cfg, features, seeds_=None):
        heads, _ = fit_heads(cfg, features["train"], train.labels, num_classes, seeds=seeds_)
        model = heads.model()
        return np.asarray(model.predict(features["val"], verbose=0)), np.asarray(
            model.predict(features["extra"], verbose=0)
        )

    def save():  # after every seed and at the end: a long run stopped early keeps what it measured
        record.update(
            rows=rows, tuning=tuning, table=aggregate(rows), elapsed_s=round(time.perf_counter() - started)
        )
        (args.output_dir / RESULTS_FILE).write_text(json.dumps(record, indent=2) + "\n")
        labels = {"validation": val.labels.tolist(), "extra": extra.labels.tolist()}
        folds = [f.tolist() for f in extra_folds]
        saved = {"labels": labels, "kids": kids.tolist(), "extra_folds": folds, "runs": logits}
        (args.output_dir / LOGITS_FILE).write_text(json.dumps(saved))

    k = args.heads
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=seed)
        run_scores("1 head", seed, *by_head_blocks(heads_logits, dataclasses.replace(cfg, heads=1), frozen))
        run_scores(f"{k} heads", seed, *by_head_blocks(heads_logits, cfg, frozen))
        for weight in weights if args.tune_epochs <= 0 else weights[:1]:

            def cv(c, f, w=weight):
                return grouped_cv(c, f["train"], train.labels, f["extra"], extra.labels, f["val"],
                                  extra_folds, w, num_classes)  # fmt: skip

            run_scores(f"{k} heads + extra x{weight:g}", seed, *by_head_blocks(cv, cfg, frozen))
        if args.tune_epochs <= 0:
            save()
            continue
        for layer, w in zip(layers14, imagenet14, strict=True):
            layer.set_weights(w)
        tuned_cfg = dataclasses.replace(
            cfg, tune_block14_epochs=args.tune_epochs, tune_block14_learning_rate=args.tune_learning_rate
        )
        head, tuned = tune_block14_on_train(
            tuned_cfg, tail, layers14, train, {"validation": val, "extra": extra}, num_classes
        )
        tuning.append({"seed": seed, **tuned})
        features = {name: s.features(tail) for name, s in (("train", train), ("val", val), ("extra", extra))}
        run_scores("tuned head", seed, np.asarray(head.predict(features["val"], verbose=0)),
                   np.asarray(head.predict(features["extra"], verbose=0)))  # fmt: skip
        run_scores(f"tuned + {k} heads", seed, *heads_logits(cfg, features))
        for weight in weights:
            run_scores(f"tuned + {k} heads + extra x{weight:g}", seed, *grouped_cv(
                cfg, features["train"], train.labels, features["extra"], extra.labels, features["val"],
                extra_folds, weight, num_classes))  # fmt: skip
        if args.label_smoothing > 0:
            smooth = dataclasses.replace(cfg, label_smoothing=args.label_smoothing)
            name = f"tuned + {k} heads + extra x{weights[0]:g} + smoothing {args.label_smoothing:g}"
            run_scores(name, seed, *grouped_cv(smooth, features["train"], train.labels, features["extra"],
                       extra.labels, features["val"], extra_folds, weights[0], num_classes))  # fmt: skip
        save()
    for layer, w in zip(layers14, imagenet14, strict=True):
        layer.set_weights(w)
    save()
    plot(
        record["table"],
        args.output_dir / PLOT_FILE,
        "temperature" if "temperature" in methods else methods[0],
    )
    for r in record["table"]:
        print(
            f"{r['config']:<48} {r['calibration']:<11} extra {r['extra_top1']['mean']:.4f} "
            f"({r['extra_top1']['min']:.3f}-{r['extra_top1']['max']:.3f}) ECE {r['extra_ece']['mean']:.3f} "
            f"cov70 {r['extra_cov70']['mean']:.4f} val {r['val_top1']['mean']:.4f}"
        )
    print(f"written {args.output_dir / RESULTS_FILE} and {PLOT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

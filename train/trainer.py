"""``train(config)``: data -> cached frozen-base features -> head -> full model -> files and metrics.

Phases: discover the data; decode each split once with the serving preprocessing; run the frozen base
once per (split, view) with a disk cache; fit the small head on the cached features, keeping the epoch
with the best validation accuracy; assemble and save the self-contained full model; evaluate on test.

Reproducibility: python, numpy and Keras/TF are seeded and TF op determinism is on, so two runs with the
same seed and data give the same head; the LiteRT/XNNPACK features can still differ in the last float
bits between machines, so metrics agree "within noise", not bit for bit, across hosts.
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

from lambda_function.preprocess import DEFAULT_RESIZE
from train import evaluate
from train.augment import make_view, view_rng
from train.callbacks import KeepBest
from train.config import CONFIG_FILE, TrainConfig
from train.data import Dataset, Skipped, discover, discover_folder, load_split
from train.errors import AssemblyError, DataError
from train.features import (
    build_extractor,
    cache_key,
    extract,
    features_dim,
    files_fingerprint,
    load_cached,
    save_cached,
    weights_identity,
)
from train.model import build_full_model, build_head

# Largest |full model logits - head(cached features)| accepted as "the same model" (float32 noise).
ASSEMBLY_TOLERANCE = 1e-3
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
HISTORY_FILE = "history.json"
SKIPPED_FILE = "skipped_images.json"
# The split name under which --extra-dir photos join the training data (and its feature cache files).
EXTRA_SPLIT = "extra"


@dataclass
class SplitFeatures:
    features: np.ndarray  # (N, features_dim) float32 for the kept images (all views stacked for train)
    labels: np.ndarray  # (N,) int
    paths: list[Path]  # kept image files (one entry per row of view 0)


def concat_features(first: SplitFeatures, second: SplitFeatures) -> SplitFeatures:
    """Rows of ``first`` then ``second`` (e.g. train then the extra photos), as one training set."""
    return SplitFeatures(
        features=np.concatenate([first.features, second.features]),
        labels=np.concatenate([first.labels, second.labels]),
        paths=first.paths + second.paths,
    )


@dataclass
class TrainResult:
    output_dir: Path
    best_epoch: int
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    cache_hits: int
    cache_misses: int
    assembly_max_abs_diff: float
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


def set_seeds(seed: int) -> None:
    """Seed python, numpy and Keras/TF, and ask TF for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


class FeatureStore:
    """Features per (split, view), read from the disk cache or computed (and then cached)."""

    def __init__(self, config: TrainConfig, dataset: Dataset, extractor: keras.Model):
        self.config = config
        self.dataset = dataset
        self.extractor = extractor
        self.cache_dir = config.resolved_cache_dir
        self.weights_id = weights_identity(config.weights, config.seed)
        self.pixels: dict[str, tuple[np.ndarray, np.ndarray, list[Skipped]]] = {}
        self.hits = 0
        self.misses = 0
        self.skipped: dict[str, list[Skipped]] = {}
        self.dim = features_dim(extractor)
        base_key = cache_key(
            weights=self.weights_id,
            image_size=config.image_size,
            blocks=config.blocks,
            keras=keras.__version__,
        )
        self.tflite_path = self.cache_dir / f"extractor-{base_key}.tflite"

    def load_pixels(self, split: str) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
        """Decoded uint8 pixels of a split (decoded once per run), kept indices, skipped files."""
        if split not in self.pixels:
            size = (self.config.image_size, self.config.image_size)
            self.pixels[split] = load_split(
                self.dataset.splits[split].paths,
                size,
                desc=f"load {split}",
                max_unreadable_fraction=self.config.max_unreadable_fraction,
                resize=self.config.resize,
            )
        return self.pixels[split]

    def _key(self, split: str, view: int) -> str:
        cfg = self.config
        parts = {
            "weights": self.weights_id,
            "image_size": cfg.image_size,
            "blocks": cfg.blocks,
            "backend": cfg.feature_backend,
            "files": files_fingerprint(self.dataset.splits[split].paths),
            "view": view,
        }
        if view >= 2:  # random views also depend on the seed and the augmentation ranges
            parts.update(seed=cfg.seed, shear_deg=cfg.shear_deg, zoom=cfg.zoom)
            if cfg.view_style != "affine":  # only then: affine caches written before styles stay valid
                parts.update(view_style=cfg.view_style)
        if cfg.resize != DEFAULT_RESIZE:  # only then: caches written before resize modes stay valid
            parts.update(resize=cfg.resize)
        return cache_key(**parts)

    def get(self, split: str, view: int) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
        """(features (N, features_dim), kept indices into the split's paths, skipped files) for one view."""
        path = self.cache_dir / f"features-{split}-v{view}-{self._key(split, view)}.npz"
        cached = load_cached(path)
        if cached is not None and cached["features"].shape[1:] == (self.dim,):
            self.hits += 1
            print(f"features {split} view {view}: reused cache {path.name}")
            skipped = [Skipped(**s) for s in json.loads(str(cached["skipped"]))]
            self.skipped[split] = skipped
            return cached["features"], cached["kept"], skipped
        self.misses += 1
        images, kept, skipped = self.load_pixels(split)
        self.skipped[split] = skipped
        if view > 0:
            rng = view_rng(self.config.seed, view)
            images = np.stack(
                [
                    make_view(
                        img,
                        view,
                        rng,
                        shear_deg=self.config.shear_deg,
                        zoom=self.config.zoom,
                        style=self.config.view_style,
                    )
                    for img in tqdm(images, desc=f"augment {split} view {view}", unit="img")
                ]
            )
        features = extract(
            self.extractor,
            images,
            self.config.feature_backend,
            self.config.threads,
            tflite_path=self.tflite_path,
            desc=f"features {split} view {view} ({self.config.feature_backend})",
        )
        skipped_json = json.dumps([s.__dict__ for s in skipped])
        save_cached(path, features=features, kept=kept, skipped=np.asarray(skipped_json))
        print(f"features {split} view {view}: computed and cached as {path.name}")
        return features, kept, skipped

    def split_features(self, split: str, views: int) -> SplitFeatures:
        data = self.dataset.splits[split]
        blocks = []
        kept = None
        for view in range(views):
            features, view_kept, _ = self.get(split, view)
            if kept is not None and not np.array_equal(kept, view_kept):
                raise DataError(f"Cached views of {split} disagree on the readable images; delete the cache")
            kept = view_kept
            blocks.append(features)
        labels = data.labels[kept]
        return SplitFeatures(
            features=np.concatenate(blocks),
            labels=np.tile(labels, views),
            paths=[data.paths[i] for i in kept],
        )


def compiled_head(config: TrainConfig, features: np.ndarray, num_classes: int) -> keras.Model:
    """The configured head, standardized on ``features`` (the rows it will train on), compiled.

    Shared by training and ``studies.choose_blocks`` so cross-validation scores the head that trains.
    """
    head = build_head(
        features.shape[1],
        num_classes,
        config.dense_units,
        config.dropout,
        seed=config.seed,
        standardize_on=features if config.standardize else None,
    )
    if config.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    head.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    return head


def fit_head(
    config: TrainConfig, train: SplitFeatures, val: SplitFeatures, num_classes: int
) -> tuple[keras.Model, dict, KeepBest]:
    head = compiled_head(config, train.features, num_classes)
    keep = KeepBest()
    history = head.fit(
        train.features,
        keras.utils.to_categorical(train.labels, num_classes),
        validation_data=(val.features, keras.utils.to_categorical(val.labels, num_classes)),
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,
        callbacks=[keep],
        verbose=2,  # one line per epoch: readable in a log file
    )
    head.set_weights(keep.best_weights)
    return head, {k: [float(v) for v in vs] for k, vs in history.history.items()}, keep


def versions() -> dict:
    import ai_edge_litert
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "ai_edge_litert": getattr(ai_edge_litert, "__version__", "unknown"),
    }


def check_assembly(
    model: keras.Model, store: FeatureStore, test: SplitFeatures, head_logits: np.ndarray, count: int
) -> float:
    """Max |full model(pixels) - head(cached features)| on the first ``count`` test images."""
    count = min(count, len(test.paths))
    if count == 0:
        return 0.0
    size = (store.config.image_size, store.config.image_size)
    if "test" in store.pixels:
        images = store.pixels["test"][0][:count]
    else:  # features came from the cache: decode just these few images
        images = load_split(test.paths[:count], size, desc="load check images", resize=store.config.resize)[0]
    full = np.asarray(model(images.astype(np.float32), training=False))
    diff = float(np.abs(full - head_logits[:count]).max())
    if diff > ASSEMBLY_TOLERANCE:
        raise AssemblyError(
            f"The saved full model disagrees with head(features) by {diff:.2e} (> {ASSEMBLY_TOLERANCE}); "
            "the cached features do not match this extractor (delete the cache and rerun)."
        )
    return diff


def full_model_logits(model: keras.Model, store: FeatureStore, split: str, rows: int) -> np.ndarray:
    """The full model run on a split's decoded pixels (the ``rows`` images its cached features hold)."""
    images, kept, _ = store.load_pixels(split)
    if len(kept) != rows:
        raise DataError(f"{split}: {len(kept)} readable images now, {rows} in the cache; delete the cache")
    return np.asarray(model.predict(images.astype(np.float32), batch_size=16, verbose=0))


def run_fine_tune(config: TrainConfig, model: keras.Model, store: FeatureStore, dataset: Dataset) -> dict:
    """Fine-tune the exit flow on train (+ extra) pixels, validated on validation; write nothing."""
    from train.finetune import fine_tune

    def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, kept, _ = store.load_pixels(split)
        return images, dataset.splits[split].labels[kept]

    images, labels = pixels("train")
    if EXTRA_SPLIT in dataset.splits:
        more, more_labels = pixels(EXTRA_SPLIT)
        images, labels = np.concatenate([images, more]), np.concatenate([labels, more_labels])
    print(f"fine-tuning blocks {config.fine_tune_blocks} on {len(labels)} images (slow on CPU)")
    return fine_tune(config, model, (images, labels), pixels("validation"), len(dataset.class_names))


def train(config: TrainConfig) -> TrainResult:
    """Run the whole recipe; write every artifact into ``config.output_dir``."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    mark = start

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[name] = round(now - mark, 2)
        mark = now

    set_seeds(config.seed)
    dataset = discover(config.data_dir, config.limit_per_class)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    counts = {name: len(split) for name, split in dataset.splits.items()}
    print(f"data: {len(dataset.class_names)} classes {dataset.class_names}; images {counts}")

    if config.extra_dir is not None:
        dataset.splits[EXTRA_SPLIT] = discover_folder(config.extra_dir, dataset.class_names, EXTRA_SPLIT)
        print(f"extra training photos: {len(dataset.splits[EXTRA_SPLIT])} from {config.extra_dir}")

    extractor = build_extractor(config.image_size, config.weights, config.blocks)
    store = FeatureStore(config, dataset, extractor)
    train_f = store.split_features("train", config.train_views)
    extra_rows = 0
    if EXTRA_SPLIT in dataset.splits:
        extra_f = store.split_features(EXTRA_SPLIT, config.train_views)
        extra_rows = len(extra_f.paths)
        train_f = concat_features(train_f, extra_f)
    val_f = store.split_features("validation", 1)  # serving sees one view, so validate on one
    test_f = store.split_features("test", 1)
    skipped = [s for split in dataset.splits for s in store.skipped.get(split, [])]
    (out / SKIPPED_FILE).write_text(json.dumps([s.__dict__ for s in skipped], indent=2) + "\n")
    if skipped:
        print(f"WARNING: {len(skipped)} unreadable image(s) skipped; see {out / SKIPPED_FILE}")
    print(f"features: {store.hits} reused from cache, {store.misses} computed")
    phase("features_s")

    num_classes = len(dataset.class_names)
    head, history, keep = fit_head(config, train_f, val_f, num_classes)
    phase("head_training_s")

    model = build_full_model(extractor, head)
    fine_tuned = None
    if config.fine_tune:
        fine_tuned = run_fine_tune(config, model, store, dataset)
        # The same (now fine-tuned) layers in a model without the fine-tuning optimizer's state, which
        # the saved file need not carry and Keras would warn about when loading it.
        model = build_full_model(extractor, head)
        phase("fine_tune_s")
    model.save(out / MODEL_FILE)
    (out / LABELS_FILE).write_text(json.dumps(dataset.class_names, indent=2) + "\n")
    history_record = {"best_epoch": keep.best_epoch, **history}
    if fine_tuned is not None:
        history_record["fine_tune"] = fine_tuned
    (out / HISTORY_FILE).write_text(json.dumps(history_record, indent=2) + "\n")
    config_record = {
        "config": config.to_dict(),
        "versions": versions(),
        "data": {**dataset.summary(), "skipped": len(skipped), "train_rows": len(train_f.labels)},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config_record, indent=2) + "\n")
    evaluate.plot_training_curves(history, out / evaluate.CURVES_PNG, keep.best_epoch)
    phase("save_s")

    if fine_tuned is None:
        test_logits = np.asarray(head(test_f.features, training=False))
        assembly_diff = check_assembly(model, store, test_f, test_logits, config.check_images)
    else:  # the base changed: the cached features no longer describe this model, so run it on pixels
        test_logits = full_model_logits(model, store, "test", len(test_f.labels))
        assembly_diff = 0.0
    val_accuracy, val_loss = keep.best
    extra = {
        "best_epoch": keep.best_epoch,
        "validation": {"accuracy": val_accuracy, "loss": val_loss, "num_images": len(val_f.labels)},
        "assembly_check": {
            "images": min(config.check_images, len(test_f.paths)),
            "max_abs_diff": assembly_diff,
        },
        "feature_backend": config.feature_backend,
        "skipped_images": len(skipped),
    }
    if fine_tuned is not None:
        extra["fine_tune"] = {
            "best_epoch": fine_tuned["best_epoch"],
            "val_accuracy": max(fine_tuned["val_accuracy"]),
            "unfrozen_layers": len(fine_tuned["unfrozen_layers"]),
        }
        extra["assembly_check"] = {"skipped": "fine-tuned: test logits come from the full model"}
    if EXTRA_SPLIT in dataset.splits:
        extra["extra_training_images"] = extra_rows
    report = evaluate.write_report(
        out, test_logits, test_f.labels, dataset.class_names, test_f.paths, "test", extra
    )
    phase("evaluate_s")
    timings["total_s"] = round(time.perf_counter() - start, 2)
    report["timings"] = timings
    (out / evaluate.METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"done: best epoch {keep.best_epoch}/{config.epochs}, val accuracy {val_accuracy:.4f}, "
        f"test accuracy {report['accuracy']:.4f}, test macro F1 {report['macro_avg']['f1']:.4f}"
    )
    print("time per phase (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in timings.items()))
    print(f"artifacts in {out}")
    return TrainResult(
        output_dir=out,
        best_epoch=keep.best_epoch,
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        test_accuracy=report["accuracy"],
        cache_hits=store.hits,
        cache_misses=store.misses,
        assembly_max_abs_diff=assembly_diff,
        timings=timings,
        skipped=skipped,
    )

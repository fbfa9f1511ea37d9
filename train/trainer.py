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

from lambda_function.classifier import softmax
from lambda_function.preprocess import DEFAULT_RESIZE
from train import evaluate, heldout
from train.augment import make_view, view_rng
from train.block14 import (
    MAP_BLOCK,
    Maps,
    block_layers,
    blocks_before_map,
    build_tail,
    concat_maps,
    tune_block14,
)
from train.calibration import at_threshold, summary
from train.callbacks import KeepBest
from train.config import CONFIG_FILE, LAST_BLOCK, TrainConfig
from train.data import Dataset, Skipped, discover, discover_folder, load_split
from train.errors import AssemblyError, BackendError, DataError
from train.features import (
    block_output,
    build_extractor,
    cache_key,
    extract,
    features_dim,
    files_fingerprint,
    load_cached,
    save_cached,
    weights_identity,
    xception_base,
)
from train.folds import contributors_and_kids, grouped_folds
from train.heldout import HeldOut
from train.mixup import MixedBatches
from train.model import HeadLayers, build_full_model

# Largest |full model logits - head(cached features)| accepted as "the same model" (float32 noise).
ASSEMBLY_TOLERANCE = 1e-3
HEAD_SEED_STRIDE = 1000
# The extraction pass's cache (pooled blocks before 13 + block 13's map) lives in its own folder: its
# extractor's file is keyed like a pooled-only one.
MAPS_DIR = "block13-maps"
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
    """Seed python, numpy and Keras, and ask the Keras backend for deterministic kernels.

    TensorFlow is the default backend; torch and JAX (``KERAS_BACKEND``) let the model train where only
    they are installed, such as a GPU machine's PyTorch image (docs/training.md). JAX on a GPU is
    deterministic only with ``XLA_FLAGS=--xla_gpu_deterministic_ops=true``, which must be set before start.
    """
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)


class FeatureStore:
    """Features per (split, view), read from the disk cache or computed (and then cached)."""

    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        extractor: keras.Model,
        blocks: tuple[int, ...] | None = None,
        cache_dir: Path | None = None,
    ):
        """``blocks`` (the extractor's pooled blocks; default the config's) and ``cache_dir`` (default
        the config's) key the cache: an extractor that also outputs a map caches into its own folder."""
        self.config = config
        self.dataset = dataset
        self.extractor = extractor
        self.blocks = tuple(blocks) if blocks is not None else config.blocks
        self.cache_dir = cache_dir or config.resolved_cache_dir
        self.weights_id = weights_identity(config.weights, config.seed)
        self.pixels: dict[str, tuple[np.ndarray, np.ndarray, list[Skipped]]] = {}
        self.hits = 0
        self.misses = 0
        self.skipped: dict[str, list[Skipped]] = {}
        self.dim = features_dim(extractor)
        base_key = cache_key(
            weights=self.weights_id,
            image_size=config.image_size,
            blocks=self.blocks,
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
            "blocks": self.blocks,
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

    def split_maps(
        self, split: str, views: int, map_shape: tuple[int, ...], dtype=np.float32
    ) -> tuple[Maps, list[Path]]:
        """A split's cached (pooled, block-13 map) rows, ``views`` views stacked, maps kept as ``dtype``
        (float16 halves train's 1.5 GB; the splits that are scored stay float32, so their logits are
        exactly the saved model's); the extractor's flat output is [pooled blocks before 13, the map]."""
        data = self.dataset.splits[split]
        pooled_width = self.dim - int(np.prod(map_shape))
        parts, kept = [], None
        for view in range(views):
            flat, view_kept, _ = self.get(split, view)
            if kept is not None and not np.array_equal(kept, view_kept):
                raise DataError(f"Cached views of {split} disagree on the readable images; delete the cache")
            kept = view_kept
            maps = flat[:, pooled_width:].reshape((-1, *map_shape)).astype(dtype)
            parts.append(Maps(flat[:, :pooled_width].copy(), maps, data.labels[kept]))
            del flat  # the float32 copy of a split's maps is the largest array of the run
        return concat_maps(parts), [data.paths[i] for i in kept]


def map_store(
    config: TrainConfig, dataset: Dataset, base: keras.Model
) -> tuple[FeatureStore, tuple[int, ...]]:
    """The feature store of the extraction pass (pooled blocks before 13 + block 13's map, one LiteRT
    pass per photo, cached in ``<cache>/block13-maps``) and the map's shape."""
    before = blocks_before_map(config.blocks)
    extractor = build_extractor(config.image_size, config.weights, before, map_block=MAP_BLOCK, base=base)
    store = FeatureStore(
        config, dataset, extractor, blocks=before, cache_dir=config.resolved_cache_dir / MAPS_DIR
    )
    return store, tuple(int(d) for d in block_output(base, MAP_BLOCK).shape[1:])


def mean_logits(model: keras.Model, features: np.ndarray) -> np.ndarray:
    """The mean of a (training) head model's outputs: the ensemble's logits before calibration."""
    outputs = model.predict(features, batch_size=256, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return np.mean([np.asarray(o, dtype=np.float64) for o in outputs], axis=0)


def accuracy_and_loss(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from train.calibration import nll

    return float(np.mean(logits.argmax(axis=1) == labels)), nll(logits, labels)


def head_seeds(config: TrainConfig) -> tuple[int, ...]:
    """The seeds of the ensemble's heads: the run's seed, then SEED + 1000, SEED + 2000... (runs with
    neighbouring seeds share no head)."""
    return tuple(config.seed + HEAD_SEED_STRIDE * i for i in range(config.heads))


def compiled_heads(
    config: TrainConfig, features: np.ndarray, num_classes: int, seeds: tuple[int, ...] | None = None
) -> tuple[HeadLayers, keras.Model]:
    """The configured heads (one per seed; default the config's), standardized on ``features`` (the rows
    they will train on), and their training model, compiled with one loss per head.

    Shared by training and the studies, so cross-validation scores the heads that train.
    """
    heads = HeadLayers(
        features.shape[1],
        num_classes,
        seeds or head_seeds(config),
        config.dense_units,
        config.dropout,
        standardize_on=features if config.standardize else None,
        signed_sqrt=config.signed_sqrt,
    )
    model = heads.training_model()
    if config.weight_decay > 0:
        optimizer = keras.optimizers.AdamW(
            learning_rate=config.learning_rate, weight_decay=config.weight_decay
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    count = len(heads.heads)
    model.compile(
        optimizer=optimizer,
        loss=loss if count == 1 else [loss] * count,
        metrics=["accuracy"] if count == 1 else None,
    )
    return heads, model


def compiled_head(config: TrainConfig, features: np.ndarray, num_classes: int) -> keras.Model:
    """One head (the config's seed), compiled: the single-head training model."""
    return compiled_heads(config, features, num_classes, (config.seed,))[1]


def fit_heads(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    sample_weight: np.ndarray | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    seeds: tuple[int, ...] | None = None,
) -> tuple[HeadLayers, dict]:
    """Train the ensemble's heads on (x, y) for ``config.epochs``, rows weighted by ``sample_weight``.

    With ``validation`` and ``config.keep_best``, the epoch with the best validation accuracy of the
    ensemble is kept; otherwise the last. Returns the heads and the history (per-epoch lists).
    """
    set_seeds(config.seed)
    heads, model = compiled_heads(config, x, num_classes, seeds)
    targets = keras.utils.to_categorical(y, num_classes)
    count = len(heads.heads)
    keep = None
    if validation is not None:
        val_x, val_y = validation
        keep = KeepBest(lambda m: accuracy_and_loss(mean_logits(m, val_x), val_y))
    callbacks = [keep] if keep is not None else []
    if config.mixup > 0:
        batches = MixedBatches(x, targets, sample_weight, config.batch_size, config.mixup, config.seed, count)
        history = model.fit(batches, epochs=config.epochs, callbacks=callbacks, verbose=0)
    else:
        history = model.fit(
            x,
            targets if count == 1 else [targets] * count,
            sample_weight=sample_weight,
            epochs=config.epochs,
            batch_size=config.batch_size,
            shuffle=True,
            callbacks=callbacks,
            verbose=0,
        )
    record = {"loss": [float(v) for v in history.history["loss"]]}
    if keep is not None:
        record["val_accuracy"] = [a for a, _ in keep.scores]
        record["val_loss"] = [loss for _, loss in keep.scores]
        if config.keep_best:
            model.set_weights(keep.best_weights)
            record["best_epoch"] = keep.best_epoch
        else:
            record["best_epoch"] = config.epochs
    return heads, record


def grouped_cv_logits(
    config,
    x: np.ndarray,
    y: np.ndarray,
    extra_x: np.ndarray,
    extra_y: np.ndarray,
    folds: list[np.ndarray],
    num_classes: int,
    sample_weight: np.ndarray | None = None,
):
    """Out-of-fold logits of the extra photos (rows of ``extra_x``): for each fold, the configured heads
    trained on (x, y) + the other folds' extra photos at ``config.extra_weight``, uncalibrated. Also
    returns the first fold's heads (a study scores validation with them)."""
    oof = np.zeros((len(extra_y), num_classes))
    first = None
    base_w = np.ones(len(y)) if sample_weight is None else sample_weight
    for held in tqdm(folds, desc="grouped CV of the extra photos", unit="fold"):
        others = np.setdiff1d(np.arange(len(extra_y)), held)
        heads, _ = fit_heads(
            config,
            np.concatenate([x, extra_x[others]]),
            np.concatenate([y, extra_y[others]]),
            num_classes,
            sample_weight=np.concatenate([base_w, np.full(len(others), config.extra_weight)]),
        )
        oof[held] = np.asarray(heads.model().predict(extra_x[held], verbose=0))
        if first is None:
            first = heads
    return oof, first


def versions() -> dict:
    """The versions that made the model; a package that is not installed is recorded as None."""
    from importlib import metadata

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    backend = keras.backend.backend()
    record = {
        "python": platform.python_version(),
        "keras_backend": backend,
        "tensorflow": installed("tensorflow-cpu") or installed("tensorflow"),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "ai_edge_litert": installed("ai-edge-litert"),
    }
    if backend != "tensorflow":
        record[backend] = installed(backend)
    return record


def check_assembly(
    model: keras.Model, store: FeatureStore, paths: list[Path], head_logits: np.ndarray, count: int
) -> float:
    """Max |full model(pixels) - head(cached features)| on the first ``count`` test images (``paths``)."""
    count = min(count, len(paths))
    if count == 0:
        return 0.0
    size = (store.config.image_size, store.config.image_size)
    if "test" in store.pixels:
        images = store.pixels["test"][0][:count]
    else:  # features came from the cache: decode just these few images
        images = load_split(paths[:count], size, desc="load check images", resize=store.config.resize)[0]
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
    if config.view_style != "photo":
        # Measured: the heads already fit these exact images (train loss 0.002), so the gradient is ~0.
        print("note: without --view-style photo every epoch shows the images the head already fits")
    return fine_tune(config, model, (images, labels), pixels("validation"), len(dataset.class_names))


@dataclass
class Loaded:
    """What the extraction pass gives every later phase: per split its cached maps and kept paths."""

    store: FeatureStore
    maps: dict[str, Maps]
    paths: dict[str, list[Path]]
    skipped: list[Skipped]


def load_maps(config: TrainConfig, dataset: Dataset, base: keras.Model) -> Loaded:
    """Every split's (pooled, block-13 map) rows from the cache, computed with one pass where missing.

    The train split has ``train_views`` views; the extra photos join training with one (each is also
    scored out of fold, as the photo itself), validation and test one, as serving sees them.
    """
    store, map_shape = map_store(config, dataset, base)
    maps, paths = {}, {}
    for split, views in (("train", config.train_views), (EXTRA_SPLIT, 1), ("validation", 1), ("test", 1)):
        if split in dataset.splits:
            dtype = np.float16 if split == "train" else np.float32  # train is trained on, not scored
            maps[split], paths[split] = store.split_maps(split, views, map_shape, dtype)
    skipped = [s for split in dataset.splits for s in store.skipped.get(split, [])]
    print(f"features: {store.hits} reused from cache, {store.misses} computed")
    return Loaded(store, maps, paths, skipped)


def tune_block14_on_train(
    config: TrainConfig,
    tail: keras.Model,
    layers14: list,
    train: Maps,
    scored: dict[str, Maps],
    num_classes: int,
) -> tuple[keras.Model, dict]:
    """A head on train's frozen features, then block 14 trained with it for ``tune_block14_epochs``
    (train split only, so the extra photos stay out of what their grouped CV cannot refit). Each split
    of ``scored`` is scored every epoch for the record (``NAME_accuracy``, ``NAME_loss``), not to choose.
    Returns the head (tuned with block 14) and the tuning's history."""
    frozen = train.features(tail)
    set_seeds(config.seed)
    head = compiled_head(config, frozen, num_classes)
    targets = keras.utils.to_categorical(train.labels, num_classes)
    head.fit(frozen, targets, batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0)

    def on_epoch(epoch: int, model: keras.Model) -> dict:
        row = {}
        for name, split in scored.items():
            logits = np.asarray(model.predict(split.inputs(slice(None)), batch_size=64, verbose=0))
            row[f"{name}_accuracy"], row[f"{name}_loss"] = accuracy_and_loss(logits, split.labels)
        return row

    print(f"fine-tuning block 14 on cached block 13 maps: {config.tune_block14_epochs} epochs")
    tuned = tune_block14(
        tail,
        layers14,
        head,
        train,
        config.tune_block14_epochs,
        config.tune_block14_learning_rate,
        config.batch_size,
        config.seed,
        on_epoch=on_epoch,
    )
    return head, tuned


def extra_held_out(config, loaded, features, x, y, weights, held: HeldOut, num_classes) -> None:
    """Out-of-fold logits of the extra photos into ``held`` (grouped by contributor), when they have
    enough contributors for ``config.folds`` folds."""
    paths = loaded.paths[EXTRA_SPLIT]
    groups, kids = contributors_and_kids(config.extra_dir, paths, np.arange(len(paths)))
    if len(set(groups)) < config.folds:
        print(f"WARNING: {len(set(groups))} contributors in the extra photos, fewer than {config.folds} "
              "folds: calibration is fitted on validation alone")  # fmt: skip
        return
    folds = grouped_folds(groups, config.folds)
    labels = loaded.maps[EXTRA_SPLIT].labels
    oof, _ = grouped_cv_logits(config, x, y, features[EXTRA_SPLIT], labels, folds, num_classes, weights)
    held.extra_logits, held.extra_labels, held.extra_kids, held.extra_folds = oof, labels, kids, folds


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

    backend = keras.backend.backend()
    if config.feature_backend == "litert" and backend != "tensorflow":
        # The LiteRT extractor is converted from the Keras model by TensorFlow's converter.
        raise BackendError(
            f"--feature-backend litert needs Keras on TensorFlow; with KERAS_BACKEND={backend} "
            "use --feature-backend keras"
        )
    set_seeds(config.seed)
    dataset = discover(config.data_dir, config.limit_per_class)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    counts = {name: len(split) for name, split in dataset.splits.items()}
    print(f"data: {len(dataset.class_names)} classes {dataset.class_names}; images {counts}")
    if config.extra_dir is not None:
        dataset.splits[EXTRA_SPLIT] = discover_folder(config.extra_dir, dataset.class_names, EXTRA_SPLIT)
        print(f"extra training photos: {len(dataset.splits[EXTRA_SPLIT])} from {config.extra_dir}")

    # One base: the extraction pass, block 14's tail and the saved model share its layers and weights.
    base = xception_base(config.image_size, config.weights)
    extractor = build_extractor(config.image_size, config.weights, config.blocks, base=base)
    loaded = load_maps(config, dataset, base)
    maps, skipped, store = loaded.maps, loaded.skipped, loaded.store
    (out / SKIPPED_FILE).write_text(json.dumps([s.__dict__ for s in skipped], indent=2) + "\n")
    if skipped:
        print(f"WARNING: {len(skipped)} unreadable image(s) skipped; see {out / SKIPPED_FILE}")
    phase("features_s")

    num_classes = len(dataset.class_names)
    layers14 = block_layers(base, LAST_BLOCK)
    tail = build_tail(layers14, maps["train"].maps.shape[1:], maps["train"].pooled.shape[1], config.blocks)
    tuned = None
    if config.tune_block14_epochs > 0:
        _, tuned = tune_block14_on_train(
            config, tail, layers14, maps["train"], {"validation": maps["validation"]}, num_classes
        )
        phase("tune_block14_s")
    features = {split: m.features(tail) for split, m in maps.items()}
    val_y, test_y = maps["validation"].labels, maps["test"].labels

    x, y, weights = features["train"], maps["train"].labels, None
    extra_rows = len(maps[EXTRA_SPLIT]) if EXTRA_SPLIT in maps else 0
    if extra_rows:
        weights = np.ones(len(y))
        x_all = np.concatenate([x, features[EXTRA_SPLIT]])
        y_all = np.concatenate([y, maps[EXTRA_SPLIT].labels])
        w_all = np.concatenate([weights, np.full(extra_rows, config.extra_weight)])
    else:
        x_all, y_all, w_all = x, y, None
    heads, history = fit_heads(
        config, x_all, y_all, num_classes, sample_weight=w_all, validation=(features["validation"], val_y)
    )
    phase("head_training_s")

    fine_tuned = None
    if config.fine_tune:  # the base changes: calibrate on what the fine-tuned model says on validation
        model = build_full_model(extractor, heads)
        fine_tuned = run_fine_tune(config, model, store, dataset)
        held = HeldOut(full_model_logits(model, store, "validation", len(val_y)), val_y)
        phase("fine_tune_s")
    else:
        held = HeldOut(np.asarray(heads.model().predict(features["validation"], verbose=0)), val_y)
        if extra_rows:
            extra_held_out(config, loaded, features, x, y, weights, held, num_classes)
            phase("grouped_cv_s")
    calibrator, calibration_report, nested = heldout.calibrate(
        config.calibration, held, config.threshold_accuracy, config.calibration_extra_share
    )
    heads.set_calibration(calibrator)
    # The same (trained, perhaps fine-tuned) layers, calibrated, without any optimizer state.
    model = build_full_model(extractor, heads)
    print(f"calibration: {calibrator.to_dict()}")

    model.save(out / MODEL_FILE)
    (out / LABELS_FILE).write_text(json.dumps(dataset.class_names, indent=2) + "\n")
    best_epoch = history.get("best_epoch", config.epochs)
    history_record = {"best_epoch": best_epoch, **history}
    if tuned is not None:
        history_record["block14"] = tuned
    if fine_tuned is not None:
        history_record["fine_tune"] = fine_tuned
    (out / HISTORY_FILE).write_text(json.dumps(history_record, indent=2) + "\n")
    train_rows = len(y_all)
    config_record = {
        "config": config.to_dict(),
        "versions": versions(),
        "data": {**dataset.summary(), "skipped": len(skipped), "train_rows": train_rows},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config_record, indent=2) + "\n")
    evaluate.plot_training_curves(history, out / evaluate.CURVES_PNG, best_epoch)
    phase("save_s")

    test_paths = loaded.paths["test"]
    if fine_tuned is None:
        test_logits = np.asarray(heads.model().predict(features["test"], verbose=0))
        assembly_diff = check_assembly(model, store, test_paths, test_logits, config.check_images)
    else:  # the base changed: the cached features no longer describe this model, so run it on pixels
        test_logits = full_model_logits(model, store, "test", len(test_y))
        assembly_diff = 0.0
    test_probs = softmax(test_logits)
    calibration_report["test"] = summary(test_probs, test_y)
    recommended = calibration_report["threshold"]["held_out"]["threshold"]
    if recommended is not None:
        calibration_report["threshold"]["test"] = at_threshold(test_probs, test_y, recommended)
    val_accuracy, val_loss = accuracy_and_loss(calibrator(held.val_logits), val_y)
    extra = {
        "best_epoch": best_epoch,
        "heads": config.heads,
        "validation": {"accuracy": val_accuracy, "loss": val_loss, "num_images": len(val_y)},
        "calibration": calibration_report,
        "assembly_check": {
            "images": min(config.check_images, len(test_paths)),
            "max_abs_diff": assembly_diff,
        },
        "feature_backend": config.feature_backend,
        "skipped_images": len(skipped),
    }
    if tuned is not None:
        extra["block14"] = {
            "epochs": config.tune_block14_epochs,
            "val_accuracy": [row["validation_accuracy"] for row in tuned["epochs"]],
            "max_weight_change": tuned["block14_max_weight_change"],
            "batchnorm_max_change": tuned["batchnorm_max_change"],
        }
    if fine_tuned is not None:
        extra["fine_tune"] = {
            "best_epoch": fine_tuned["best_epoch"],
            "val_accuracy": max(fine_tuned["val_accuracy"]),
            "unfrozen_layers": len(fine_tuned["unfrozen_layers"]),
        }
        extra["assembly_check"] = {"skipped": "fine-tuned: test logits come from the full model"}
    if extra_rows:
        extra["extra_training_images"] = extra_rows
    report = evaluate.write_report(out, test_logits, test_y, dataset.class_names, test_paths, "test", extra)
    curves = {"test": (test_probs, test_y), "validation (nested)": (nested[: len(val_y)], val_y)}
    if held.has_extra:
        curves["extra photos, grouped CV"] = (nested[len(val_y) :], held.extra_labels)
    evaluate.plot_risk_coverage(curves, out / evaluate.RISK_COVERAGE_PNG, recommended)
    phase("evaluate_s")
    timings["total_s"] = round(time.perf_counter() - start, 2)
    report["timings"] = timings
    (out / evaluate.METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")

    cv = calibration_report.get("extra_grouped_cv", {}).get("calibrated")
    cv_text = f", extra photos grouped CV top-1 {cv['top1']:.4f} ECE {cv['ece']:.3f}" if cv else ""
    test_ece = calibration_report["test"]["ece"]
    print(
        f"done: {config.heads} head(s), val accuracy {val_accuracy:.4f}, test accuracy "
        f"{report['accuracy']:.4f} (ECE {test_ece:.3f}), macro F1 {report['macro_avg']['f1']:.4f}{cv_text}"
    )
    print("time per phase (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in timings.items()))
    print(f"artifacts in {out}")
    return TrainResult(
        output_dir=out,
        best_epoch=best_epoch,
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        test_accuracy=report["accuracy"],
        cache_hits=store.hits,
        cache_misses=store.misses,
        assembly_max_abs_diff=assembly_diff,
        timings=timings,
        skipped=skipped,
    )

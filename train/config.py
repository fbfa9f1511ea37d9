"""Every training default in one place. The CLI (``python -m train --help``) is generated from these fields.

Defaults were chosen without the test split, which is read once, at the end, to report: head settings on
the validation split, the pooled blocks by 5-fold cross-validation on train + validation (3409 images,
view 0 only; a logistic regression and this Dense(100) head agreed). Pooling more than the last block
is the one change that beat the frozen-feature plateau (mean CV accuracy, Dense(100) head):
block 14 alone 87.7% -> blocks 13-14 89.2% -> blocks 11-14 with standardization 90.1%
(logistic regression: 87.9 -> 89.2 -> 90.3%; blocks 8-14 90.6%, 10-14 90.4%: no clear gain for the size).
The extra blocks come out of the same forward pass, so they cost no extraction time.

Input size and views share one budget: a forward pass costs 0.11 s at 299 px and 0.145 s at 352 px here,
and ``make train`` must stay under 15 minutes. 352 px with the image alone was chosen over 299 px with
the image and its flip on the validation split (92.38% vs 90.32%) and on 5-fold CV of 100 train images
per class + validation (88.1% vs 86.6%, every fold); on CV over all of train + validation the two sizes
tie for a logistic regression (90.7 vs 90.6%) and favour 299 px for this head (89.2 vs 89.9%, mean of
3 seeds), and the flip view was worth -0.2 to +0.4 points there: the evidence for 352 px is the
validation split the recipe is chosen on, not a sure thing. Xception saw 299 px crops of its ImageNet
images: at 352 px a whole garment photo shows details at about the scale it learned them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from lambda_function.jsonfile import JSONFileError, read_json
from lambda_function.preprocess import DEFAULT_RESIZE, RESIZE_MODES, check_resize_mode
from train.augment import SHEAR_DEG, VIEW_STYLES, ZOOM
from train.calibration import METHODS as CALIBRATION_METHODS
from train.data import MAX_UNREADABLE_FRACTION
from train.errors import RunConfigError

# Written by ``python -m train`` next to model.keras; its "config" holds the training options.
CONFIG_FILE = "config.json"

# Weights value meaning "random init" (tests, and runs without the ImageNet file).
NO_WEIGHTS = "none"
FEATURE_BACKENDS = ("litert", "keras")
LAST_BLOCK = 14  # Xception's last block; its output (2048 channels) is the base's output
FIRST_RESIDUAL_BLOCK = 2  # blocks 2..13 each end with a residual Add layer


def option(default, help: str, **cli):  # noqa: A002 - argparse's word
    """A TrainConfig field with its ``--help`` text (and extra argparse settings, e.g. ``choices``).

    ``python -m train``'s options are generated from these fields (train/__main__.py).
    """
    return field(default=default, metadata={"help": help, "cli": cli})


def parse_blocks(text: str, name: str = "pooled_blocks") -> tuple[int, ...]:
    """ "13,14" -> (13, 14): sorted, unique, each a block whose output can be pooled."""
    try:
        blocks = tuple(sorted({int(part) for part in str(text).split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"{name} must be comma-separated block numbers, got {text!r}") from None
    if not blocks or blocks[0] < FIRST_RESIDUAL_BLOCK or blocks[-1] > LAST_BLOCK:
        raise ValueError(
            f"{name} must name Xception blocks {FIRST_RESIDUAL_BLOCK}..{LAST_BLOCK}, got {text!r}"
        )
    return blocks


@dataclass
class TrainConfig:
    data_dir: Path = option(
        Path("data/clothing-dataset-small"), "holds train/ validation/ test/<class>/*.jpg"
    )
    output_dir: Path = option(
        Path("artifacts/train"), "where model.keras, labels.json, metrics.json and PNGs go"
    )
    weights: str = option("imagenet", '"imagenet" (Keras download), a local .weights.h5 path, or "none"')
    image_size: int = option(352, "square input side in pixels (Xception was trained at 299; needs >= 71)")
    resize: str = option(
        DEFAULT_RESIZE,
        "how photos become squares: squash, letterbox (grey pad) or crop (centre)",
        choices=RESIZE_MODES,
    )
    extra_dir: Path | None = option(
        None, "a folder of more LABEL/IMAGE photos to train on (as the extra dataset)"
    )
    pooled_blocks: str = option("11,12,13,14", "Xception blocks (2-14) whose pooled outputs are concatenated")
    # off: over ten paired seeds -0.1 points on the extra photos, Brier and log-loss worse on 8 and 9 of them
    # (docs/lab/calibration.md, "Follow-up: ten seeds and proper scores").
    signed_sqrt: bool = option(
        False, "heads on sign(x) sqrt(|x|) of each pooled feature (power normalization, inside the model)"
    )
    standardize: bool = option(True, "scale each feature to zero mean, unit variance (inside the head)")
    train_views: int = option(1, "views per image: 1 = the image, 2 = + h-flip, 3.. = + random views")
    view_style: str = option(
        "affine",
        "random views (3rd on): affine = shear/zoom/flip, photo = crop, rotation, colour, flip "
        "(photo also redraws every --fine-tune epoch)",
        choices=VIEW_STYLES,
    )
    epochs: int = option(
        30, "head epochs on cached features, fixed (as in the grouped-CV folds; seconds each)"
    )
    keep_best: bool = option(
        False,
        "keep the head epoch with the best validation accuracy; off, so validation stays held out for "
        "the calibration",
    )
    heads: int = option(5, "heads in the ensemble (seeds SEED, SEED+1000, ...), averaged inside the model")
    tune_block14_epochs: int = option(
        0, "epochs of block 14 fine-tuned with a head on cached block 13 maps (0 = frozen)"
    )
    tune_block14_learning_rate: float = option(3e-5, "Adam learning rate of the block 14 fine-tuning")
    # 3, not 1: over six paired seeds, grouped CV of the extra photos gave 82.5% (81.4-83.4) top-1 at
    # weight 3 against 81.2% (79.4-83.4) at 1, never below the 81% floor (docs/lab/calibration.md).
    extra_weight: float = option(3.0, "loss weight of each --extra-dir photo (train photos weigh 1)")
    # top-label, not temperature: over six paired seeds (grouped CV of the extra photos, weight 3) ECE 0.051
    # (0.039-0.066) against 0.068 (0.041-0.091), better on 5 seeds of 6, and it keeps T = 1's ranking of the
    # photos, which the temperature's reorders (docs/lab/calibration.md); it never changes an answer.
    calibration: str = option(
        "top-label",
        "calibration map fitted on held-out logits (validation + grouped CV of the extra photos), "
        "inside the model",
        choices=CALIBRATION_METHODS,
    )
    calibration_extra_share: float | None = option(
        None, "share of the calibration fit's weight on the extra photos; None = every photo the same"
    )
    folds: int = option(5, "contributor-grouped folds of the --extra-dir photos (sender_id in images.csv)")
    threshold_accuracy: float = option(
        0.95, "the recommended 'not sure' threshold is the lowest whose answers reach this held-out accuracy"
    )
    batch_size: int = option(32, "head training batch size")
    learning_rate: float = option(1e-3, "Adam learning rate")
    dense_units: int = option(
        100, "hidden Dense layer of the head (the seed's Dense(100)); 0 = no hidden layer"
    )
    dropout: float = option(0.5, "dropout after the hidden layer (and on the features when 0 dense units)")
    label_smoothing: float = option(0.0, "CategoricalCrossentropy label smoothing")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay; 0 = plain Adam")
    # 0: over three paired seeds mixup 0.4 gave one head +3.7 points on the extra photos but the 5-head recipe
    # with the extra photos -0.8 and ECE +0.019 (docs/lab/calibration.md).
    mixup: float = option(
        0.0, "mixup of the heads' training rows: Beta(a, a) mixing weights (train/mixup.py); 0 = off"
    )
    seed: int = option(42, "python / numpy / keras seeds and the random augmentation views")
    feature_backend: str = option(
        "litert",
        '"litert" (about 3x faster on CPU) or "keras" to run the frozen base',
        choices=FEATURE_BACKENDS,
    )
    num_threads: int | None = option(None, "threads for the frozen base; None = os.cpu_count()")
    cache_dir: Path | None = option(None, "feature cache; None = <output_dir>/cache")
    limit_per_class: int | None = option(
        None, "keep only the first N images per class and split (quick runs)"
    )
    shear_deg: float = option(
        SHEAR_DEG, "max shear angle of random views, degrees (the seed's shear_range=10)"
    )
    zoom: float = option(ZOOM, "max zoom in/out of random views (the seed's zoom_range=0.1)")
    max_unreadable_fraction: float = option(
        MAX_UNREADABLE_FRACTION, "stop above this unreadable share of a split"
    )
    check_images: int = option(8, "test images used to prove full model == head(features)")
    fine_tune: bool = option(
        False,
        "after the head: train the exit flow too (10-20 min per epoch on 2 CPU cores; use with "
        "--view-style photo, docs/lab/calibration.md)",
    )
    fine_tune_blocks: str = option(
        "13,14", "Xception blocks unfrozen by --fine-tune (BatchNorm stays frozen)"
    )
    fine_tune_epochs: int = option(3, "epochs of fine-tuning on pixels (each runs the whole base)")
    fine_tune_learning_rate: float = option(1e-5, "low, so the ImageNet features are adjusted, not erased")

    # Not a hyper-parameter: filled in by __post_init__ so the rest of the code never re-derives it.
    resolved_cache_dir: Path = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.output_dir = Path(self.output_dir)
        if self.image_size < 71:
            raise ValueError(f"image_size must be at least 71 (Xception's minimum), got {self.image_size}")
        if self.train_views < 1:
            raise ValueError(f"train_views must be at least 1, got {self.train_views}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.view_style not in VIEW_STYLES:
            raise ValueError(f"view_style must be one of {VIEW_STYLES}, got {self.view_style!r}")
        if self.feature_backend not in FEATURE_BACKENDS:
            raise ValueError(
                f"feature_backend must be one of {FEATURE_BACKENDS}, got {self.feature_backend!r}"
            )
        if self.mixup < 0:
            raise ValueError(f"mixup must be 0 (off) or positive, got {self.mixup}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.limit_per_class is not None and self.limit_per_class < 1:
            raise ValueError(f"limit_per_class must be at least 1, got {self.limit_per_class}")
        if self.heads < 1:
            raise ValueError(f"heads must be at least 1, got {self.heads}")
        if self.tune_block14_epochs < 0:
            raise ValueError(f"tune_block14_epochs must be at least 0, got {self.tune_block14_epochs}")
        if self.extra_weight <= 0:
            raise ValueError(f"extra_weight must be positive, got {self.extra_weight}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, got {self.calibration!r}")
        if self.calibration_extra_share is not None and not 0.0 <= self.calibration_extra_share <= 1.0:
            raise ValueError(f"calibration_extra_share must be in [0, 1], got {self.calibration_extra_share}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if not 0.0 < self.threshold_accuracy < 1.0:
            raise ValueError(f"threshold_accuracy must be in (0, 1), got {self.threshold_accuracy}")
        parse_blocks(self.pooled_blocks)  # fail at startup, not after minutes of feature extraction
        if LAST_BLOCK not in self.blocks:
            raise ValueError(f"pooled_blocks must include block {LAST_BLOCK} (it runs on cached maps)")
        check_resize_mode(self.resize)
        self.extra_dir = Path(self.extra_dir) if self.extra_dir is not None else None
        if self.fine_tune:
            parse_blocks(self.fine_tune_blocks, "fine_tune_blocks")
            if self.fine_tune_epochs < 1:
                raise ValueError(f"fine_tune_epochs must be at least 1, got {self.fine_tune_epochs}")
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else None
        self.resolved_cache_dir = self.cache_dir or self.output_dir / "cache"

    @property
    def blocks(self) -> tuple[int, ...]:
        return parse_blocks(self.pooled_blocks)

    @property
    def blocks_to_fine_tune(self) -> tuple[int, ...]:
        return parse_blocks(self.fine_tune_blocks, "fine_tune_blocks")

    @property
    def threads(self) -> int:
        return self.num_threads or os.cpu_count() or 1

    def to_dict(self) -> dict:
        """JSON-ready dict of every init field (paths as strings)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def field_help() -> dict[str, str]:
    """{field name: its help}: the same text ``python -m train --help`` shows."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig) if f.init}


def trained_resize(model_path: str | Path) -> str:
    """The resize mode a model was trained with: ``config.resize`` of the config.json that
    ``python -m train`` writes next to model.keras; "squash" when there is none (models from before
    resize modes, or trained elsewhere), since that is how such models were trained."""
    path = Path(model_path).with_name(CONFIG_FILE)
    if not path.is_file():
        return DEFAULT_RESIZE
    try:
        record = read_json(path, "Training config")
    except JSONFileError as exc:
        raise RunConfigError(str(exc)) from None
    config = record.get("config") if isinstance(record, dict) else None
    mode = config.get("resize", DEFAULT_RESIZE) if isinstance(config, dict) else DEFAULT_RESIZE
    try:
        return check_resize_mode(mode)
    except ValueError as exc:
        raise RunConfigError(f"{path}: {exc}") from None

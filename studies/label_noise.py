"""Training photos whose own label the model finds implausible: out-of-fold scores of the train split.

Each train row is scored by heads that did not train on it (class-stratified folds of the train split
alone, so nothing held out for scoring leaks in); a row whose own label gets a probability under
``below`` on average over the seeds is a *suspect*: a wrong label, or a photo between two classes.
``studies.calibration --drop-suspects BELOW`` trains its heads without them, and writes a contact sheet
of the worst, for a person to tell the two kinds apart (docs/lab/calibration.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lambda_function.classifier import softmax
from studies.choose_blocks import stratified_folds

FOLDS = 5
SEEDS = (42, 43)  # two heads per fold: one head's 30 epochs leave its scores near 0 or 1
SHEET_COLUMNS = 8
SHEET_ROWS = 6
TILE = (160, 200)  # width, height: photo above, label -> prediction below


def own_label_scores(config, x: np.ndarray, y: np.ndarray, num_classes: int, folds: int = FOLDS,
                     seeds: tuple[int, ...] = SEEDS) -> np.ndarray:  # fmt: skip
    """Out-of-fold probabilities (N, classes), the mean over ``seeds`` of one head each, every row scored
    by heads trained on the other folds of (x, y)."""
    from train.trainer import fit_heads

    probs = np.zeros((len(y), num_classes))
    for seed in seeds:
        one = dataclasses.replace(config, seed=seed, heads=1)
        for held in stratified_folds(y, folds, seed):
            fit = np.setdiff1d(np.arange(len(y)), held)
            heads, _ = fit_heads(one, x[fit], y[fit], num_classes)
            probs[held] += softmax(np.asarray(heads.model().predict(x[held], verbose=0))) / len(seeds)
    return probs


def suspects(probs: np.ndarray, y: np.ndarray, below: float) -> np.ndarray:
    """Rows whose own label scores under ``below``, the least plausible first."""
    own = probs[np.arange(len(y)), y]
    rows = np.flatnonzero(own < below)
    return rows[np.argsort(own[rows], kind="stable")]


def contact_sheet(paths: list[Path], y: np.ndarray, probs: np.ndarray, rows: np.ndarray,
                  class_names: list[str], path: Path) -> None:  # fmt: skip
    """The first ``SHEET_COLUMNS x SHEET_ROWS`` of ``rows`` as a PNG: each photo, its label and the
    out-of-fold prediction with its score. Photos are decoded as training decodes them (upright by their
    EXIF orientation, transparency on white), so a person judges the picture the heads saw."""
    from PIL import Image, ImageDraw

    from lambda_function.preprocess import decode_image

    width, height = TILE
    shown = rows[: SHEET_COLUMNS * SHEET_ROWS]
    lines = max(1, -(-len(shown) // SHEET_COLUMNS))
    sheet = Image.new("RGB", (SHEET_COLUMNS * width, lines * height), "white")
    draw = ImageDraw.Draw(sheet)
    for n, row in enumerate(shown):
        left, top = (n % SHEET_COLUMNS) * width, (n // SHEET_COLUMNS) * height
        photo = decode_image(Path(paths[row]).read_bytes())
        photo.thumbnail((width - 4, height - 30))
        sheet.paste(photo, (left + 2, top + 2))
        guess = int(probs[row].argmax())
        text = f"{class_names[y[row]]}\n-> {class_names[guess]} {probs[row, guess]:.2f}"
        draw.text((left + 2, top + height - 26), text, fill="black")
    sheet.save(path)

"""studies.label_noise finds the train rows whose label the other folds' heads find implausible."""

from pathlib import Path

import numpy as np
from PIL import Image

from studies import label_noise
from train.config import TrainConfig


def clusters_with_flipped_labels(flipped: list[int]):
    """Three well separated classes, 20 rows each; the rows in ``flipped`` carry the next class's label."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8, dtype=np.float32) * 6.0
    y = np.repeat(np.arange(3), 20)
    x = (centres[y] + rng.normal(0, 0.5, (60, 8))).astype(np.float32)
    given = y.copy()
    given[flipped] = (y[flipped] + 1) % 3
    return x, given


def test_flipped_labels_are_the_suspects_and_clean_rows_are_not():
    flipped = [3, 27, 45]
    x, y = clusters_with_flipped_labels(flipped)
    config = TrainConfig(
        data_dir=Path("unused"), epochs=20, dense_units=16, batch_size=16, learning_rate=0.01
    )
    probs = label_noise.own_label_scores(config, x, y, 3, folds=4, seeds=(1,))
    assert probs.shape == (60, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert sorted(label_noise.suspects(probs, y, 0.2).tolist()) == flipped


def test_suspects_come_least_plausible_first():
    probs = np.array([[0.9, 0.1], [0.05, 0.95], [0.3, 0.7], [0.01, 0.99]])
    y = np.array([0, 0, 0, 0])
    assert label_noise.suspects(probs, y, 0.5).tolist() == [3, 1, 2]
    assert label_noise.suspects(probs, y, 0.01).tolist() == []


def test_contact_sheet_draws_one_tile_per_suspect(tmp_path):
    paths = []
    for i, colour in enumerate(["red", "green", "blue"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (300, 400), colour).save(paths[-1])
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.4]])
    out = tmp_path / "sheet.png"
    label_noise.contact_sheet(paths, np.array([0, 1, 0]), probs, np.array([1, 0]), ["hat", "shoes"], out)
    width, height = label_noise.TILE
    with Image.open(out) as sheet:
        assert sheet.size == (label_noise.SHEET_COLUMNS * width, height)  # two suspects: one row of tiles
        rgb = sheet.convert("RGB")
        assert rgb.getpixel((50, 50)) == (0, 128, 0)  # suspects in the order given: row 1 (green) first
        assert rgb.getpixel((width + 50, 50)) == (255, 0, 0)
        assert rgb.getpixel((2 * width + 50, 50)) == (255, 255, 255)  # no third tile

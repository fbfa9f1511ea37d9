"""``--mixup``: what the heads train on is a convex mix of two rows, targets and weights mixed alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from train.config import TrainConfig  # noqa: E402
from train.mixup import MixedBatches  # noqa: E402
from train.trainer import fit_heads  # noqa: E402

ROWS, CLASSES = 40, 4


def test_each_row_mixes_two_rows_and_their_targets_and_weights_by_the_same_amount():
    # Features that name their row (the identity), so a mixed row shows which rows it mixed and how much.
    labels = np.arange(ROWS) % CLASSES
    targets = np.eye(CLASSES, dtype=np.float32)[labels]
    weights = np.linspace(1.0, 3.0, ROWS, dtype=np.float32)
    batches = MixedBatches(np.eye(ROWS), targets, weights, batch_size=16, alpha=0.4, seed=7)
    assert len(batches) == 3
    mixed_rows = 0
    for index in range(len(batches)):
        x, y, w = batches[index]
        assert np.all(x >= 0) and np.all(np.count_nonzero(x, axis=1) <= 2)
        np.testing.assert_allclose(x.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(y, x @ targets, atol=1e-6)
        np.testing.assert_allclose(w, x @ weights, atol=1e-5)
        mixed_rows += int((x.max(axis=1) < 0.99).sum())
    assert mixed_rows > ROWS // 2  # Beta(0.4, 0.4) mixes most rows noticeably


def test_an_ensemble_gets_one_copy_of_targets_and_weights_per_head():
    targets = np.eye(CLASSES, dtype=np.float32)[np.arange(ROWS) % CLASSES]
    x, y, w = MixedBatches(np.eye(ROWS), targets, None, 8, 1.0, seed=0, outputs=3)[0]
    assert len(y) == len(w) == 3 and y[0].shape == (8, CLASSES) and w[0].shape == (8,)
    with pytest.raises(ValueError, match="positive"):
        MixedBatches(np.eye(ROWS), targets, None, 8, 0.0, seed=0)


def test_mixup_heads_learn_and_repeat_themselves_with_the_same_seed(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.arange(200) % CLASSES
    x = rng.normal(size=(200, 12)).astype(np.float32) + 3 * np.eye(CLASSES, 12)[labels]
    config = TrainConfig(
        data_dir=tmp_path, output_dir=tmp_path, epochs=8, heads=2, mixup=0.4, keep_best=False
    )
    runs = []
    for _ in range(2):
        heads, record = fit_heads(config, x, labels, CLASSES, sample_weight=np.ones(200))
        runs.append((np.asarray(heads.model().predict(x, verbose=0)), record["loss"]))
    (logits, loss), (again, loss_again) = runs
    assert loss[-1] < loss[0]
    assert (logits.argmax(axis=1) == labels).mean() > 0.9
    np.testing.assert_array_equal(logits, again)
    assert loss == loss_again
    plain, _ = fit_heads(dataclasses.replace(config, mixup=0.0), x, labels, CLASSES)
    assert not np.allclose(np.asarray(plain.model().predict(x, verbose=0)), logits)
    with pytest.raises(ValueError, match="mixup"):
        TrainConfig(data_dir=tmp_path, output_dir=tmp_path, mixup=-0.1)

"""``--mixup ALPHA``: the heads trained on convex mixes of two photos' features and their targets.

mixup (Zhang et al., 2018): each training row becomes ``lam * a + (1 - lam) * b`` for another row ``b`` of
the same batch, its one-hot target and loss weight mixed by the same ``lam ~ Beta(alpha, alpha)``. It asks
the head for scores that change linearly between photos instead of jumping to 1.0, which is the
over-confidence issue 19 is about. It costs nothing at inference; head training is about 2.4x slower
(batches are mixed in Python).

Off by default. Measured over three paired seeds on other contributors' photos (docs/lab/calibration.md):
one head gains 3.7 points of top-1 (within half a point of five plain heads), but the recipe (five heads
with the extra photos) loses 0.8 and calibrates worse (ECE +0.019): a lever for a single-head recipe, not
for the bundle's.
"""

from __future__ import annotations

import keras
import numpy as np


class MixedBatches(keras.utils.PyDataset):
    """(features, targets, weights) batches in a new order each epoch, every row mixed with another row of
    its batch. ``outputs`` copies of the targets (and weights): one per head of the ensemble."""

    def __init__(
        self,
        x: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray | None,
        batch_size: int,
        alpha: float,
        seed: int,
        outputs: int = 1,
    ):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"mixup alpha must be positive, got {alpha}")
        self.x = np.asarray(x, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.float32)
        self.weights = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
        self.batch_size, self.alpha, self.outputs = batch_size, alpha, outputs
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        partners = self.rng.permutation(rows)
        lam = self.rng.beta(self.alpha, self.alpha, size=(len(rows), 1)).astype(np.float32)
        x = lam * self.x[rows] + (1 - lam) * self.x[partners]
        targets = lam * self.targets[rows] + (1 - lam) * self.targets[partners]
        weights = lam[:, 0] * self.weights[rows] + (1 - lam[:, 0]) * self.weights[partners]
        if self.outputs == 1:
            return x, targets, weights
        return x, (targets,) * self.outputs, (weights,) * self.outputs

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))

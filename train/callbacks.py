"""Training callbacks shared by the head's training (train.trainer) and the base's fine-tuning
(train.finetune)."""

from __future__ import annotations

import keras
import numpy as np


class KeepBest(keras.callbacks.Callback):
    """Remember the weights of the epoch with the best val accuracy (tie: lower val loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        score = (float(logs["val_accuracy"]), float(logs["val_loss"]))
        if (
            self.best is None
            or score[0] > self.best[0]
            or (score[0] == self.best[0] and score[1] < self.best[1])
        ):
            self.best = score
            self.best_epoch = epoch + 1
            self.best_weights = self.model.get_weights()

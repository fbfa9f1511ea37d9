"""Training callbacks shared by the head's training (train.trainer) and the base's fine-tuning
(train.finetune)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

# (model) -> (accuracy, loss) on held-out rows: how an ensemble scores itself as one model.
Scorer = Callable[[keras.Model], tuple[float, float]]


class KeepBest(keras.callbacks.Callback):
    """Remember the weights of the epoch with the best val accuracy (tie: lower val loss).

    With ``score`` (say, the ensemble's mean logits on validation) the epoch is judged by it; without,
    by Keras's own ``val_accuracy`` / ``val_loss``.
    """

    def __init__(self, score: Scorer | None = None) -> None:
        super().__init__()
        self.score = score
        self.best: tuple[float, float] | None = None
        self.best_epoch = 0
        self.best_weights: list[np.ndarray] | None = None
        self.scores: list[tuple[float, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.score is None:
            score = (float(logs["val_accuracy"]), float(logs["val_loss"]))
        else:
            score = self.score(self.model)
        self.scores.append(score)
        if (
            self.best is None
            or score[0] > self.best[0]
            or (score[0] == self.best[0] and score[1] < self.best[1])
        ):
            self.best = score
            self.best_epoch = epoch + 1
            self.best_weights = self.model.get_weights()

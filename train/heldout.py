"""Logits of photos the model did not train on, the calibration fitted on them, and the honest figures.

Two held-out sets, both free of test photos:

- the validation split, scored by the final heads (which never train on it);
- the extra photos (``--extra-dir``), which the final heads do train on: each is scored instead by heads
  trained on train + the *other* contributor-grouped folds' extra photos (out-of-fold logits), the same
  recipe minus that contributor, so a figure on them estimates photos from people the model never saw.

The calibration map is fitted on both (train/calibration.py); the figures reported for them are nested
(each fold calibrated by a map fitted on the other rows), so they are not flattered by the fit. The "not
sure" threshold is recommended from the same nested probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lambda_function.classifier import softmax
from train import calibration
from train.calibration import Calibrator, cross_calibrated, interleaved_folds


@dataclass
class HeldOut:
    val_logits: np.ndarray
    val_labels: np.ndarray
    extra_logits: np.ndarray | None = None  # out-of-fold
    extra_labels: np.ndarray | None = None
    extra_kids: np.ndarray | None = None
    extra_folds: list[np.ndarray] | None = None

    @property
    def has_extra(self) -> bool:
        return self.extra_logits is not None and len(self.extra_labels) > 0

    def weights(self, extra_share: float | None) -> np.ndarray | None:
        """Calibration weights of the pool's rows: None (every photo the same) or the extra photos
        holding ``extra_share`` of the total weight and validation the rest."""
        if extra_share is None or not self.has_extra:
            return None
        counts = [len(self.val_labels), len(self.extra_labels)]
        return calibration.share_weights(counts, [1.0 - extra_share, extra_share])

    def pool(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(logits, labels, nested chunks) of validation then the extra photos."""
        folds = len(self.extra_folds) if self.has_extra else 5
        chunks = interleaved_folds(len(self.val_labels), folds)
        if not self.has_extra:
            return self.val_logits, self.val_labels, chunks
        offset = len(self.val_labels)
        chunks += [fold + offset for fold in self.extra_folds]
        return (
            np.concatenate([self.val_logits, self.extra_logits]),
            np.concatenate([self.val_labels, self.extra_labels]),
            chunks,
        )


def calibrate(
    method: str, held: HeldOut, threshold_accuracy: float, extra_share: float | None = None
) -> tuple[Calibrator, dict, np.ndarray]:
    """The map fitted on every held-out row; the nested figures (validation and the extra photos before
    and after calibration, the recommended "not sure" threshold); the nested probabilities of the pool
    (validation rows, then the extra photos)."""
    logits, labels, chunks = held.pool()
    weights = held.weights(extra_share)
    calibrator = calibration.fit(method, logits, labels, weights)
    nested = cross_calibrated(method, logits, labels, chunks, weights)
    raw = softmax(logits)
    n_val = len(held.val_labels)
    report = {
        **calibrator.to_dict(),
        "fitted_on": {
            "validation": n_val,
            "extra_grouped_cv": len(labels) - n_val,
            "extra_share": extra_share,
        },
        "validation": {
            "uncalibrated": calibration.summary(raw[:n_val], labels[:n_val]),
            "calibrated": calibration.summary(nested[:n_val], labels[:n_val]),
        },
    }
    report["risk_coverage"] = {"validation": calibration.coverage_curve(nested[:n_val], labels[:n_val])}
    if held.has_extra:
        extra_p, extra_y, kids = nested[n_val:], held.extra_labels, held.extra_kids
        report["risk_coverage"]["extra_grouped_cv"] = calibration.coverage_curve(extra_p, extra_y)
        report["extra_grouped_cv"] = {
            "folds": len(held.extra_folds),
            "uncalibrated": calibration.summary(raw[n_val:], extra_y),
            "calibrated": calibration.summary(extra_p, extra_y),
            "kids": calibration.summary(extra_p[kids], extra_y[kids]) if kids.any() else None,
            "adults": calibration.summary(extra_p[~kids], extra_y[~kids]) if (~kids).any() else None,
        }
    recommended = calibration.recommend_threshold(nested, labels, threshold_accuracy)
    threshold = {"target_accuracy": threshold_accuracy, "held_out": recommended}
    if recommended["threshold"] is not None:
        t = recommended["threshold"]
        threshold["validation"] = calibration.at_threshold(nested[:n_val], labels[:n_val], t)
        if held.has_extra:
            threshold["extra_grouped_cv"] = calibration.at_threshold(nested[n_val:], labels[n_val:], t)
    report["threshold"] = threshold
    return calibrator, report, nested

"""Scores that mean what they say: calibration maps fitted on held-out logits, and the figures that judge
a score (ECE, Brier, accuracy of the most confident photos, a "not sure" threshold).

A calibration map turns the model's logits into logits whose softmax is an honest probability:

- ``temperature``: z / T, one number (Guo et al., 2017); the order of the photos by score is unchanged;
- ``vector``: z * a + b per class (20 numbers for 10 classes);
- ``matrix``: W z + b (110 numbers), fitted with a pull towards "no change" so 500 photos do not overfit it;
- ``top-label``: Platt scaling of the top class alone: P(top) = sigmoid(slope * log-odds + offset), where the
  log-odds are those of the T = 1 softmax; the other classes keep their shares of the rest. Two numbers.
  Unlike a temperature it keeps T = 1's order of the photos (a temperature makes the top score depend on all
  ten logits), which ranks the confident photos better (docs/lab/calibration.md), and it never changes an
  answer: the top logit is floored just above the runner-up's.

Each is fitted by log-loss on logits of photos the model did not train on (the validation split, and the
extra photos through contributor-grouped folds) and then sits inside the exported graph
(train/model.py), so every runtime gives the same numbers. Pure numpy: the model card imports it with
the runtime requirements only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lambda_function.classifier import softmax
from lambda_function.sidecar import CALIBRATION_METHODS as METHODS  # the sidecar records one of these

ECE_BINS = 15  # equal-width bins on the top-1 score, the usual choice (Guo et al.)
COVERAGES = (0.9, 0.8, 0.7)  # "accuracy on the most confident 90 / 80 / 70% of photos"
# Temperature search range: below 0.05 or above 50 the model would be broken, not miscalibrated.
T_RANGE = (0.05, 50.0)
FIT_STEPS = 3000
FIT_LEARNING_RATE = 0.01
MATRIX_PULL = 1e-2  # L2 weight towards the identity map for matrix scaling
THRESHOLD_STEP = 0.05
PLATT_STEPS = 50  # Newton steps of the top-label fit (it converges in about ten)
PLATT_PULL = 1e-2  # L2 weight towards slope = offset = 0 (standardized): finite when all photos are right
# The top-label map keeps the top logit this far above the runner-up's, so no answer changes.
TOP_LABEL_MARGIN = 1e-3


@dataclass(frozen=True)
class Calibrator:
    """logits -> calibrated logits: ``z @ matrix.T * scale + offset`` with whichever parts are set, or for
    ``top-label`` the map of :func:`top_label` with ``scale`` as its slope."""

    method: str = "none"
    # 1/T for temperature, a per-class vector for vector scaling, the slope of the log-odds for top-label
    scale: np.ndarray | float = 1.0
    offset: np.ndarray | float = 0.0
    matrix: np.ndarray | None = None

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if self.method == "top-label":
            return top_label(z, float(self.scale), float(self.offset))
        if self.matrix is not None:
            z = z @ np.asarray(self.matrix).T
        return z * self.scale + self.offset

    @property
    def temperature(self) -> float | None:
        return 1.0 / float(self.scale) if self.method == "temperature" else None

    def to_dict(self) -> dict:
        """The JSON record (metrics.json, the sidecar's ``calibration``)."""
        out: dict = {"method": self.method}
        if self.method == "temperature":
            out["temperature"] = round(self.temperature, 6)
        elif self.method == "top-label":
            out["slope"] = round(float(self.scale), 6)
            out["offset"] = round(float(self.offset), 6)
        elif self.method == "vector":
            out["scale"] = [round(float(v), 6) for v in np.ravel(self.scale)]
            out["offset"] = [round(float(v), 6) for v in np.ravel(self.offset)]
        elif self.method == "matrix":
            out["matrix"] = np.round(np.asarray(self.matrix), 6).tolist()
            out["offset"] = [round(float(v), 6) for v in np.ravel(self.offset)]
        return out


def _top_class_terms(z: np.ndarray) -> tuple[np.ndarray, ...]:
    """(top logit, top-class mask, spread, log_rest) per row, each (N, 1) but the (N, K) mask: the steps
    of the top-label layer (train/model.py) in numpy. log_rest is the log of the other classes' probability
    mass against the top's (= -s, the T = 1 log-odds of the top class); spread is the same against the
    runner-up's, in [0, log(classes - 1)]. Taken relative to the runner-up (its own term is 1), no step
    underflows to log(0) in float32 or float16 and no tiny constant is needed (a float16 export rounds
    1e-30 to 0)."""
    top = z.max(axis=1, keepdims=True)
    is_top = (z >= top).astype(np.float64)  # (a tie, which float logits never make, maps both alike)
    rest = 1.0 - is_top
    # The top's slot takes the smallest logit, so the max is the runner-up's.
    runner_up = (z - is_top * (top - z.min(axis=1, keepdims=True))).max(axis=1, keepdims=True)
    spread = np.log(np.maximum((np.exp((z - runner_up) * rest) * rest).sum(axis=1, keepdims=True), 1.0))
    return top, is_top, spread, runner_up - top + spread


def top_log_odds(logits: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of the T = 1 top probability: z_top - log-sum-exp of the other logits (a sure
    photo's log-odds can pass 100, where p itself rounds to 1)."""
    return -_top_class_terms(np.asarray(logits, np.float64))[3][:, 0]


def top_label(logits: np.ndarray, slope: float, offset: float) -> np.ndarray:
    """The top-label map in logits, step for step as its layer in the model (train/model.py): every other
    class keeps its logit; the top one becomes L + max(slope * s + offset, log-odds of a tie with the
    runner-up + margin), where L is the log-sum-exp of the others and s = z_top - L the T = 1 log-odds, so
    softmax gives the top class sigmoid(slope * s + offset) and the others their old shares of the rest."""
    z = np.asarray(logits, np.float64)
    top, is_top, spread, log_rest = _top_class_terms(z)
    odds = np.maximum(offset - slope * log_rest, TOP_LABEL_MARGIN - spread)
    return z + is_top * (top + log_rest + odds - z)


def fit_platt(
    score: np.ndarray, correct: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """(slope, offset) of P(right) = sigmoid(slope * score + offset) by (weighted) maximum likelihood.

    A weak pull of the (standardized) parameters towards 0 keeps the optimum finite when every photo is
    right or the scores separate right from wrong (a few photos); on hundreds it changes nothing. Not
    Platt's soft targets ((right + 1) / (right + 2)): over six seeds they raised the grouped-CV ECE from
    0.051 to 0.057, as the sure photos' log-odds (past 100) then hold the slope down. Newton's method with
    step halving, on the standardized score from 0, 0 (every photo at 0.5)."""
    score = np.asarray(score, np.float64)
    correct = np.asarray(correct, bool)
    row_weight = np.ones(len(score)) if weights is None else np.asarray(weights, np.float64)
    target = correct.astype(np.float64)
    centre, spread = float(score.mean()), float(score.std()) or 1.0
    x = np.stack([(score - centre) / spread, np.ones_like(score)], axis=1)

    def loss(w: np.ndarray) -> float:
        logit = x @ w  # log-loss in a form that never takes log(0)
        return float(row_weight @ (np.logaddexp(0, logit) - target * logit) + PLATT_PULL / 2 * w @ w)

    w = np.zeros(2)
    for _ in range(PLATT_STEPS):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        hessian = (x * (row_weight * p * (1 - p))[:, None]).T @ x + PLATT_PULL * np.eye(2)
        step = np.linalg.solve(hessian, x.T @ (row_weight * (p - target)) + PLATT_PULL * w)
        while loss(w - step) > loss(w) and np.abs(step).max() > 1e-12:
            step = step / 2
        w = w - step
    return float(w[0] / spread), float(w[1] - w[0] * centre / spread)


def fit_top_label(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """Platt scaling of the T = 1 top log-odds on whether the top class is right. A slope <= 0 would rank
    the sure photos last (no real model does that); it is kept just above 0 so the order survives."""
    z = np.asarray(logits, np.float64)
    slope, offset = fit_platt(top_log_odds(z), z.argmax(axis=1) == labels, weights)
    return Calibrator("top-label", scale=max(slope, 1e-3), offset=offset)


def nll(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean log-loss of softmax(logits), each row weighted by ``weights`` when given."""
    probs = softmax(logits)
    losses = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    return float(np.average(losses, weights=weights))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """The T minimising (weighted) log-loss, by golden-section search on log T (unimodal in it)."""
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(np.asarray(logits, np.float64) / np.exp(log_t), labels, weights)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return Calibrator("temperature", scale=float(1.0 / np.exp((lo + hi) / 2)))


def _fit_affine(logits: np.ndarray, labels: np.ndarray, full: bool, weights: np.ndarray | None) -> Calibrator:
    """Vector (``full`` False) or matrix scaling by Adam on the log-loss, from the temperature fit."""
    z = np.asarray(logits, np.float64)
    n, k = z.shape
    onehot = np.eye(k)[labels]
    row_weight = (np.ones(n) if weights is None else np.asarray(weights, np.float64))[:, None]
    row_weight = row_weight * n / row_weight.sum()
    start = fit_temperature(z, labels, weights).scale
    weight = np.eye(k) * start if full else np.full(k, start)
    bias = np.zeros(k)
    params = [weight, bias]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    for step in range(1, FIT_STEPS + 1):
        out = z @ weight.T + bias if full else z * weight + bias
        grad_out = row_weight * (softmax(out) - onehot) / n
        grads = [grad_out.T @ z if full else (grad_out * z).sum(axis=0), grad_out.sum(axis=0)]
        if full:
            grads[0] = grads[0] + MATRIX_PULL * (weight - np.eye(k) * start)
        for p, g, m in zip(params, grads, moments, strict=True):  # Adam, in place
            m[0] = 0.9 * m[0] + 0.1 * g
            m[1] = 0.999 * m[1] + 0.001 * g * g
            p -= FIT_LEARNING_RATE * (m[0] / (1 - 0.9**step)) / (np.sqrt(m[1] / (1 - 0.999**step)) + 1e-8)
    if full:
        return Calibrator("matrix", matrix=weight, offset=bias)
    return Calibrator("vector", scale=weight, offset=bias)


def fit(method: str, logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> Calibrator:
    """The ``method`` calibration map fitted on held-out ``logits`` (N, K) with true ``labels`` (N,),
    rows weighted by ``weights`` in the log-loss when given."""
    labels = np.asarray(labels, dtype=np.int64)
    if method == "none" or len(labels) == 0:
        return Calibrator()
    if method == "temperature":
        return fit_temperature(logits, labels, weights)
    if method == "top-label":
        return fit_top_label(logits, labels, weights)
    if method in ("vector", "matrix"):
        return _fit_affine(logits, labels, method == "matrix", weights)
    raise ValueError(f"calibration must be one of {METHODS}, got {method!r}")


# ------------------------------------------------------------------ what a score is worth


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: |accuracy - mean top-1 score| per equal-width score bin, weighted by
    the bin's share of photos."""
    probs = np.asarray(probs, np.float64)
    if not len(probs):
        return float("nan")
    return score_ece(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels), bins)


def score_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of any top-1 score: ``confidence`` per photo, ``correct`` whether its answer was right."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    if not len(confidence):
        return float("nan")
    # Bin i holds scores in (i/bins, (i+1)/bins]; a score of exactly 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = index == b
        if rows.any():
            total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total)


ECE_FLOOR_DRAWS = 2000  # simulated label draws behind ece_if_calibrated: its mean moves by < 0.001


def ece_if_calibrated(
    confidence: np.ndarray, draws: int = ECE_FLOOR_DRAWS, seed: int = 0, bins: int = ECE_BINS
) -> np.ndarray:
    """The ECE a perfectly calibrated model would show with these top-1 scores on this many photos:
    ``draws`` values, each with every photo right with probability its score. ECE is never below zero,
    so on a couple of hundred photos it is well above zero even for honest scores; a measured ECE is
    judged against this spread, not against 0."""
    confidence = np.asarray(confidence, np.float64)
    rng = np.random.default_rng(seed)
    return np.array(
        [score_ece(confidence, rng.random(len(confidence)) < confidence, bins) for _ in range(draws)]
    )


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: the mean over photos of sum_k (p_k - [k is the true class])^2
    (0 best, 2 worst)."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean()) if len(probs) else float("nan")


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    order = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return float((order == np.asarray(labels)[:, None]).any(axis=1).mean()) if len(order) else float("nan")


def highest_first(confidence: np.ndarray) -> np.ndarray:
    """Photo indices from the highest top-1 score down (ties keep their order)."""
    return np.argsort(-np.asarray(confidence), kind="stable")


def coverage_accuracy(probs: np.ndarray, labels: np.ndarray, coverage: float) -> float:
    """Top-1 accuracy on the ``coverage`` share of photos with the highest top-1 scores."""
    probs = np.asarray(probs)
    return score_coverage_accuracy(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels), coverage)


def score_coverage_accuracy(confidence: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """The same for any top-1 score: ``confidence`` per photo, ``correct`` whether its answer was right."""
    order = highest_first(confidence)
    keep = order[: max(1, int(round(coverage * len(order))))]
    return float(np.asarray(correct, bool)[keep].mean())


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy) when answering only the n most confident photos, n = 1..N."""
    probs = np.asarray(probs)
    order = highest_first(probs.max(axis=1))
    correct = (probs.argmax(axis=1) == np.asarray(labels))[order]
    n = np.arange(1, len(order) + 1)
    return n / len(order), np.cumsum(correct) / n


def coverage_curve(probs: np.ndarray, labels: np.ndarray, step: float = 0.05) -> list[list[float]]:
    """[coverage, accuracy] at coverage step, 2 * step, ..., 1: the risk-coverage curve in a few numbers."""
    coverage, accuracy = risk_coverage(probs, labels)
    points = []
    for share in np.arange(step, 1.0 + 1e-9, step):
        n = max(1, int(round(share * len(coverage))))
        points.append([round(float(share), 4), round(float(accuracy[n - 1]), 4)])
    return points


def at_threshold(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Share of photos answered (top-1 score >= threshold) and the accuracy of those answers."""
    probs = np.asarray(probs)
    answered = probs.max(axis=1) >= threshold
    correct = probs.argmax(axis=1) == np.asarray(labels)
    return {
        "threshold": round(float(threshold), 4),
        "answered": float(answered.mean()) if len(probs) else float("nan"),
        "accuracy": float(correct[answered].mean()) if answered.any() else None,
    }


def recommend_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float) -> dict:
    """The lowest threshold on a 0.05 grid whose answered photos reach ``target_accuracy`` (the most
    photos answered for that accuracy), with its share answered and accuracy; None when no grid point
    reaches it."""
    for threshold in np.arange(THRESHOLD_STEP, 1.0, THRESHOLD_STEP):
        row = at_threshold(probs, labels, float(threshold))
        if row["accuracy"] is not None and row["accuracy"] >= target_accuracy:
            return row
    return {"threshold": None, "answered": 0.0, "accuracy": None}


def summary(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Every figure the model card shows for one set of photos."""
    labels = np.asarray(labels, dtype=np.int64)
    return {
        "images": int(len(labels)),
        "top1": top_k_accuracy(probs, labels, 1),
        "top3": top_k_accuracy(probs, labels, 3),
        "ece": ece(probs, labels),
        "brier": brier(probs, labels),
        "mean_top1_score": float(np.asarray(probs).max(axis=1).mean()) if len(labels) else float("nan"),
        "coverage_accuracy": {f"{c:.0%}": coverage_accuracy(probs, labels, c) for c in COVERAGES},
    }


def cross_calibrated(
    method: str,
    logits: np.ndarray,
    labels: np.ndarray,
    chunks: list[np.ndarray],
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities where each chunk's rows are calibrated by a map fitted on every other row: honest
    calibrated figures for the very photos the calibration is fitted on (nested in the grouped folds)."""
    probs = np.zeros(np.shape(logits), dtype=np.float64)
    everything = np.arange(len(labels))
    for held in chunks:
        rest = np.setdiff1d(everything, held)
        rest_weights = None if weights is None else weights[rest]
        probs[held] = softmax(fit(method, logits[rest], labels[rest], rest_weights)(logits[held]))
    return probs


def share_weights(counts: list[int], shares: list[float]) -> np.ndarray:
    """Per-row weights giving consecutive groups of ``counts`` rows ``shares`` of the total weight."""
    return np.concatenate(
        [np.full(n, share / n) for n, share in zip(counts, shares, strict=True) if n]
    ) * sum(counts)


def interleaved_folds(count: int, folds: int) -> list[np.ndarray]:
    """``folds`` chunks of ``range(count)``, row i in chunk i % folds (the split's order mixes classes)."""
    return [np.arange(start, count, folds) for start in range(min(folds, count))]

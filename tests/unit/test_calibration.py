"""train/calibration.py: the calibration maps and the figures that judge a score (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_function.classifier import softmax
from train import calibration
from train.calibration import (
    Calibrator,
    at_threshold,
    brier,
    coverage_accuracy,
    coverage_curve,
    cross_calibrated,
    ece,
    ece_if_calibrated,
    fit,
    interleaved_folds,
    nll,
    recommend_threshold,
    risk_coverage,
    summary,
    top_k_accuracy,
    top_label,
    top_log_odds,
)


def overconfident(n: int = 600, classes: int = 5, true_t: float = 3.0, seed: int = 0):
    """Logits whose labels are drawn from softmax(logits / true_t): a model sure beyond its worth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, classes))
    probs = softmax(logits / true_t)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_ece_by_hand():
    # Two photos in the (0.8, 0.8667] bin, one right: |0.5 - 0.85| * 2/4; two in the top bin, both right.
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [1.0, 0.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 0])
    assert ece(probs, labels) == pytest.approx(0.5 * 0.35)
    # One photo scored 0.6 and right is 0.4 off; scored 0.6 and wrong, 0.6 off.
    assert ece(np.array([[0.6, 0.4]]), np.array([0])) == pytest.approx(0.4)
    assert ece(np.array([[0.6, 0.4]]), np.array([1])) == pytest.approx(0.6)


def test_ece_of_honest_scores_is_the_binomial_spread_of_one_bin():
    # n photos all scored p sit in one bin; honest labels make its ECE |K/n - p| with K ~ Binomial(n, p).
    from math import comb

    n, p = 40, 0.8
    exact = sum(comb(n, k) * p**k * (1 - p) ** (n - k) * abs(k / n - p) for k in range(n + 1))
    floor = ece_if_calibrated(np.full(n, p), draws=20000)
    assert floor.mean() == pytest.approx(exact, abs=0.002)  # 0.050: honest scores, far from 0
    again = ece_if_calibrated(np.full(n, p), draws=20000)
    assert np.array_equal(floor, again)  # seeded: the same figures every run
    assert ece_if_calibrated(np.ones(25)).max() == 0.0  # sure and right every time
    # More photos, a smaller floor (about 1 / sqrt(n)).
    assert ece_if_calibrated(np.full(1000, p)).mean() < floor.mean() / 4


def test_brier_top_k_and_coverage_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.4, 0.35, 0.25]])
    labels = np.array([0, 1, 1])
    assert brier(probs, labels) == pytest.approx(
        ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.7**2 + 0.6**2) + (0.4**2 + 0.65**2 + 0.25**2)) / 3
    )
    assert top_k_accuracy(probs, labels, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(probs, labels, 2) == pytest.approx(1.0)
    # Most confident first: 0.7 (right), 0.6 (wrong), 0.4 (wrong).
    assert coverage_accuracy(probs, labels, 1 / 3) == 1.0
    assert coverage_accuracy(probs, labels, 2 / 3) == 0.5
    coverage, accuracy = risk_coverage(probs, labels)
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0]) and accuracy.tolist() == pytest.approx(
        [1, 0.5, 1 / 3]
    )
    assert at_threshold(probs, labels, 0.5) == {
        "threshold": 0.5,
        "answered": pytest.approx(2 / 3),
        "accuracy": 0.5,
    }
    assert at_threshold(probs, labels, 0.9)["accuracy"] is None


def test_temperature_recovers_an_overconfident_models_temperature():
    logits, labels = overconfident(n=3000, true_t=3.0)
    calibrator = fit("temperature", logits, labels)
    assert calibrator.temperature == pytest.approx(3.0, rel=0.15)
    before, after = softmax(logits), softmax(calibrator(logits))
    assert ece(after, labels) < ece(before, labels) / 2 and nll(calibrator(logits), labels) < nll(
        logits, labels
    )
    assert (after.argmax(1) == before.argmax(1)).all()  # a temperature never reorders the classes
    assert calibrator.to_dict() == {
        "method": "temperature",
        "temperature": pytest.approx(calibrator.temperature),
    }


@pytest.mark.parametrize("method", ["vector", "matrix"])
def test_affine_maps_fit_at_least_as_well_as_the_temperature(method):
    logits, labels = overconfident()
    shifted = logits + np.array([2.0, 0, 0, 0, 0])  # a class the model over-calls: a bias fixes it
    temperature = fit("temperature", shifted, labels)
    affine = fit(method, shifted, labels)
    assert affine.method == method
    assert nll(affine(shifted), labels) < nll(temperature(shifted), labels)
    record = affine.to_dict()
    assert record["method"] == method and len(record["offset"]) == 5


def platt_world(n: int = 4000, classes: int = 10, slope: float = 0.4, offset: float = 0.5, seed: int = 1):
    """Logits whose top class is right with probability sigmoid(slope * T=1 log-odds + offset), else a
    random other class is: a model whose ranking is sound but whose scores are too sure."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    right = rng.random(n) < 1 / (1 + np.exp(-(slope * top_log_odds(logits) + offset)))
    top = logits.argmax(axis=1)
    other = (top + rng.integers(1, classes, n)) % classes
    return logits, np.where(right, top, other)


def test_top_label_recovers_the_platt_map_and_keeps_answers_and_ranking():
    logits, labels = platt_world()
    calibrator = fit("top-label", logits, labels)
    assert calibrator.method == "top-label"
    assert calibrator.scale == pytest.approx(0.4, rel=0.15) and calibrator.offset == pytest.approx(
        0.5, abs=0.15
    )
    before, after = softmax(logits), softmax(calibrator(logits))
    assert ece(after, labels) < ece(before, labels) / 2
    assert ece(after, labels) < ece(softmax(fit("temperature", logits, labels)(logits)), labels)
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()
    # An increasing map of the T = 1 top score: the photos keep their order by score.
    assert (
        np.argsort(-after.max(axis=1), kind="stable") == np.argsort(-before.max(axis=1), kind="stable")
    ).all()
    assert calibrator.to_dict() == {"method": "top-label", "slope": pytest.approx(calibrator.scale, abs=1e-6),
                                    "offset": pytest.approx(calibrator.offset, abs=1e-6)}  # fmt: skip


def test_top_label_fit_stays_finite_when_every_photo_is_right_or_wrong():
    logits = np.random.default_rng(0).normal(0, 3, (7, 4))
    for labels, sure in ((logits.argmax(axis=1), True), ((logits.argmax(axis=1) + 1) % 4, False)):
        calibrator = fit("top-label", logits, labels)
        scores = softmax(calibrator(logits)).max(axis=1)
        assert np.isfinite([calibrator.scale, calibrator.offset]).all() and calibrator.scale > 0
        assert (scores > 0.9).all() if sure else (scores < 0.5).all()


def test_top_label_map_in_logits():
    logits = np.array([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.9, -4.0], [200.0, 0.0, -50.0, 1.0]])
    slope, offset = 0.5, 0.2
    probs, mapped = softmax(logits), softmax(top_label(logits, slope, offset))
    rows = np.arange(3)
    top = probs.argmax(axis=1)
    p_top = probs[rows[:2], top[:2]]
    log_odds = np.log(p_top / (1 - p_top))  # the first two rows, where p is not yet 1 in float64
    assert top_log_odds(logits)[:2] == pytest.approx(log_odds)
    assert top_log_odds(logits)[2] == pytest.approx(200.0 - np.logaddexp.reduce([0.0, -50.0, 1.0]))
    wanted = 1 / (1 + np.exp(-(slope * log_odds + offset)))
    assert mapped[rows[:2], top[:2]] == pytest.approx(wanted)
    # The other classes keep their shares of the rest.
    others = np.ones_like(probs, bool)
    others[rows, top] = False
    share = lambda p: p[others].reshape(3, 3) / p[others].reshape(3, 3).sum(axis=1, keepdims=True)  # noqa: E731
    assert share(mapped) == pytest.approx(share(probs))
    # A photo sure beyond float32's exp (a 199-logit gap) stays finite and sure.
    assert np.isfinite(mapped).all() and mapped[2, 0] == pytest.approx(1.0)


def test_top_label_never_lowers_the_top_class_under_the_runner_up():
    logits = np.array([[2.0, 1.9, -5.0], [0.0, 4.0, 3.99]])
    mapped = top_label(logits, 1.0, -8.0)  # would put the top class far under the runner-up
    assert (mapped.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert mapped[0, 0] == pytest.approx(1.9 + calibration.TOP_LABEL_MARGIN)
    assert mapped[1, 1] == pytest.approx(3.99 + calibration.TOP_LABEL_MARGIN)
    assert np.delete(mapped, [0, 4]) == pytest.approx(np.delete(logits, [0, 4]))  # the rest untouched


def test_none_and_bad_methods():
    logits, labels = overconfident(n=20)
    assert fit("none", logits, labels)(logits) == pytest.approx(logits)
    assert Calibrator().to_dict() == {"method": "none"}
    with pytest.raises(ValueError, match="calibration must be one of"):
        fit("isotonic", logits, labels)


def test_cross_calibration_never_fits_on_the_rows_it_calibrates():
    logits, labels = overconfident(n=200)
    chunks = interleaved_folds(200, 5)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(200))
    nested = cross_calibrated("temperature", logits, labels, chunks)
    # Each chunk's probabilities are what the map fitted on the other chunks gives.
    rest = np.setdiff1d(np.arange(200), chunks[0])
    expected = softmax(fit("temperature", logits[rest], labels[rest])(logits[chunks[0]]))
    np.testing.assert_allclose(nested[chunks[0]], expected)
    assert not np.allclose(nested, softmax(fit("temperature", logits, labels)(logits)))


def test_recommended_threshold_is_the_lowest_that_reaches_the_target():
    logits, labels = overconfident(n=1000)
    probs = softmax(fit("temperature", logits, labels)(logits))
    row = recommend_threshold(probs, labels, 0.9)
    assert row["accuracy"] >= 0.9
    below = at_threshold(probs, labels, row["threshold"] - calibration.THRESHOLD_STEP)
    assert below["accuracy"] is None or below["accuracy"] < 0.9
    wrong = (probs.argmax(1) + 1) % probs.shape[1]  # every answer wrong: no threshold reaches anything
    assert recommend_threshold(probs, wrong, 0.5) == {"threshold": None, "answered": 0.0, "accuracy": None}


def test_summary_and_curve_shapes():
    logits, labels = overconfident(n=100)
    probs = softmax(logits)
    figures = summary(probs, labels)
    assert figures["images"] == 100 and set(figures["coverage_accuracy"]) == {"90%", "80%", "70%"}
    assert 0 <= figures["ece"] <= 1 and 0 <= figures["brier"] <= 2 and figures["top1"] <= figures["top3"]
    curve = coverage_curve(probs, labels)
    assert len(curve) == 20 and curve[-1] == [1.0, pytest.approx(figures["top1"], abs=1e-4)]

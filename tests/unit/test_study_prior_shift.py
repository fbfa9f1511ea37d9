"""studies.prior_shift: each fold's prior is what its heads trained on, and tau is chosen on other folds."""

import numpy as np

from studies import prior_shift

TRAIN_COUNTS = np.array([8.0, 1.0, 1.0])
EXTRA_Y = np.array([0, 1, 2, 1, 2, 2])
FOLDS = [np.array([0, 1, 2]), np.array([3, 4, 5])]


def test_each_fold_prior_counts_train_and_the_other_folds_extra_photos_at_their_weight():
    first, second = prior_shift.fold_priors(TRAIN_COUNTS, EXTRA_Y, FOLDS, weight=3.0)
    # fold 0's heads saw train + photos 3-5 (labels 1, 2, 2) x 3; fold 1's: train + photos 0-2 x 3.
    np.testing.assert_allclose(first, np.array([8, 4, 7]) / 19)
    np.testing.assert_allclose(second, np.array([11, 4, 4]) / 19)
    np.testing.assert_allclose(
        prior_shift.fold_priors(TRAIN_COUNTS, EXTRA_Y, FOLDS, 0.0)[0], TRAIN_COUNTS / 10
    )


def test_a_prior_in_the_logits_is_taken_out_by_tau_one_and_tau_is_chosen_on_the_other_folds():
    priors = prior_shift.fold_priors(TRAIN_COUNTS, EXTRA_Y, FOLDS, 0.0)
    # Logits = the class signal + log(train prior): the prior outvotes the signal for classes 1 and 2.
    signal = 1.5 * np.eye(3)[EXTRA_Y]
    run = {"config": "5 heads", "seed": 42, "extra": (signal + np.log(priors[0])).tolist(),
           "validation": np.log(priors[0])[None].repeat(2, axis=0).tolist()}  # fmt: skip
    assert (np.asarray(run["extra"]).argmax(axis=1) == EXTRA_Y).mean() == 1 / 6
    tau = prior_shift.best_tau(run, FOLDS, priors, EXTRA_Y, FOLDS[1])
    # The signal (1.5) beats the prior's pull (1 - tau) * log 8 from tau > 0.28 on: the grid's smallest such.
    assert tau == 0.3
    fixed = prior_shift.adjusted(run, FOLDS, priors, [1.0, 1.0], 1.0)
    np.testing.assert_allclose(fixed["extra"], signal, atol=1e-12)
    np.testing.assert_allclose(fixed["validation"], 0.0, atol=1e-12)
    # Only the fold named gets its tau: fold 0 left as trained, fold 1 adjusted.
    half = np.asarray(prior_shift.adjusted(run, FOLDS, priors, [0.0, 1.0], 0.0)["extra"])
    np.testing.assert_allclose(half[FOLDS[0]], np.asarray(run["extra"])[FOLDS[0]])
    np.testing.assert_allclose(half[FOLDS[1]], signal[FOLDS[1]], atol=1e-12)


def test_a_missing_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    logits = tmp_path / "logits.json"
    logits.write_text("{}")
    assert prior_shift.main([str(logits), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: Data directory not found")

"""studies.top_label reads several saved studies as one table, only when they hold the same photos."""

import json

import numpy as np
import pytest

from studies import top_label


def saved(configs, labels=(0, 1, 2, 1), seed=42):
    rng = np.random.default_rng(seed)
    return {
        "labels": {"validation": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], "extra": list(labels)},
        "kids": [True, False, True, False],
        "extra_folds": [[0, 1], [2, 3]],
        "runs": [
            {
                "config": name,
                "seed": seed,
                "validation": rng.normal(size=(10, 3)).tolist(),
                "extra": rng.normal(size=(4, 3)).tolist(),
            }
            for name in configs
        ],
    }


def test_merged_keeps_every_configuration_once():
    both = top_label.merged([saved(["1 head", "5 heads"]), saved(["1 head", "10 heads"], seed=42)])
    assert [run["config"] for run in both["runs"]] == ["1 head", "5 heads", "10 heads"]


def test_merged_refuses_studies_of_different_photos():
    with pytest.raises(SystemExit, match="different photos"):
        top_label.merged([saved(["5 heads"]), saved(["10 heads"], labels=(1, 1, 2, 1))])


def test_the_table_has_a_row_per_configuration_of_both_files(tmp_path, capsys):
    paths = []
    for i, configs in enumerate((["5 heads"], ["10 heads"])):
        path = tmp_path / f"logits{i}.json"
        path.write_text(json.dumps(saved(configs)), encoding="utf-8")
        paths.append(str(path))
    assert top_label.main(paths) == 0
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "heads" in line
    ]
    assert [row.split(" | ")[0] for row in rows] == ["| 5 heads", "| 10 heads"]


def test_paired_counts_better_and_worse_seeds_against_the_named_configuration():
    def row(seed, top1, ece, cov70, brier, log_loss):
        return {"seed": seed, "top1": top1, "top_label_ece": ece, "top_label_cov70": cov70,
                "top_label_brier": brier, "top_label_log_loss": log_loss}  # fmt: skip

    rows = {
        "5 heads": [row(seed, 0.80, 0.05, 0.9, 0.30, 0.80) for seed in (1, 2, 3)],
        # seed 1 better on top-1, ECE and Brier, seed 2 worse on those, seed 3 tied; log-loss worse on all
        # three (lower is better for ECE, Brier and log-loss); seed 4 has no pair
        "linear": [
            row(1, 0.83, 0.04, 0.9, 0.28, 0.81),
            row(2, 0.79, 0.08, 0.9, 0.32, 0.82),
            row(3, 0.80, 0.05, 0.9, 0.30, 0.83),
            row(4, 0.99, 0.00, 1.0, 0.00, 0.00),
        ],
    }
    table = top_label.paired(rows, "5 heads")
    line = next(line for line in table.splitlines() if line.startswith("| linear"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[1] == "3"
    assert cells[2] == "+0.7 pt (better 1, worse 1)"
    assert cells[3] == "+0.007 (better 1, worse 1)"  # ECE went up on average: worse, but one seed better
    assert cells[4] == "+0.0 pt (better 0, worse 0)"
    assert cells[5] == "+0.000 (better 1, worse 1)"
    assert cells[6] == "+0.020 (better 0, worse 3)"


def test_against_an_unknown_configuration_names_the_known_ones(tmp_path):
    path = tmp_path / "logits.json"
    path.write_text(json.dumps(saved(["5 heads"])), encoding="utf-8")
    with pytest.raises(SystemExit, match="5 heads"):
        top_label.main([str(path), "--against", "10 heads"])


def test_mix_averages_two_configurations_logits_seed_by_seed():
    runs = saved(["5 heads", "5 heads (signed sqrt)"])["runs"]
    (mixed,) = top_label.mixed_runs(runs, "5 heads", "5 heads (signed sqrt)")
    assert mixed["config"] == "5 heads + 5 heads (signed sqrt)" and mixed["seed"] == 42
    for part in ("validation", "extra"):
        expected = (np.asarray(runs[0][part]) + np.asarray(runs[1][part])) / 2
        np.testing.assert_allclose(mixed[part], expected)


def test_mix_shift_pairs_a_seed_with_a_later_one_and_skips_seeds_without_a_partner():
    runs = [run for seed in (1, 2, 3) for run in saved(["5 heads"], seed=seed)["runs"]]
    mixed = top_label.mixed_runs(runs, "5 heads", "5 heads", shift=1)
    assert [(run["config"], run["seed"]) for run in mixed] == [
        ("5 heads + 5 heads (seed +1)", s) for s in (1, 2)
    ]
    np.testing.assert_allclose(
        mixed[0]["extra"], (np.asarray(runs[0]["extra"]) + np.asarray(runs[1]["extra"])) / 2
    )


def test_mix_of_an_unknown_configuration_names_the_known_ones():
    with pytest.raises(SystemExit, match="5 heads"):
        top_label.mixed_runs(saved(["5 heads"])["runs"], "5 heads", "10 heads")


def test_log_loss_sees_wrong_answers_made_surer_where_top1_does_not():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 1])
    chunks = [np.arange(0, 10, 2), np.arange(1, 10, 2), np.array([10, 11]), np.array([12, 13])]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(14, 3)) + 2.0 * np.eye(3)[labels]
    run = {"config": "a", "seed": 1, "validation": logits[:10].tolist(), "extra": logits[10:].tolist()}
    surer = logits.copy()
    wrong = surer.argmax(axis=1) != labels
    assert wrong[10:].any()  # the test needs a wrong extra photo
    surer[np.flatnonzero(wrong), labels[wrong]] -= 3.0  # the true class pushed further down; the answer stays
    run_surer = {**run, "validation": surer[:10].tolist(), "extra": surer[10:].tolist()}
    plain, sharpened = (top_label.compare(r, labels, chunks, 10) for r in (run, run_surer))
    assert sharpened["top1"] == plain["top1"]
    assert sharpened["top_label_log_loss"] > plain["top_label_log_loss"] + 0.1


def test_extra_share_weighs_the_extra_photos_in_the_map_fit():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 1])
    chunks = [np.arange(0, 10, 2), np.arange(1, 10, 2), np.array([10, 11]), np.array([12, 13])]
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(14, 3)) + 2.0 * np.eye(3)[labels]
    logits[:10] *= 4.0  # validation far surer than the extra photos: the two shares fit different maps
    run = {"config": "a", "seed": 1, "validation": logits[:10].tolist(), "extra": logits[10:].tolist()}
    uniform = top_label.compare(run, labels, chunks, 10)
    assert top_label.compare(run, labels, chunks, 10, extra_share=4 / 14) == pytest.approx(uniform)
    assert top_label.compare(run, labels, chunks, 10, extra_share=1.0)["top_label_brier"] != pytest.approx(
        uniform["top_label_brier"]
    )


def test_extra_share_outside_0_1_is_refused(tmp_path):
    path = tmp_path / "logits.json"
    path.write_text(json.dumps(saved(["5 heads"])), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        top_label.main([str(path), "--extra-share", "1.5"])
    assert exit_info.value.code == 2

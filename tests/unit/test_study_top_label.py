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
    rows = {
        "5 heads": [
            {"seed": seed, "top1": 0.80, "top_label_ece": 0.05, "top_label_cov70": 0.9} for seed in (1, 2, 3)
        ],
        # seed 1 better on top-1 and ECE, seed 2 worse on both, seed 3 tied; seed 4 has no pair
        "linear": [
            {"seed": 1, "top1": 0.83, "top_label_ece": 0.04, "top_label_cov70": 0.9},
            {"seed": 2, "top1": 0.79, "top_label_ece": 0.08, "top_label_cov70": 0.9},
            {"seed": 3, "top1": 0.80, "top_label_ece": 0.05, "top_label_cov70": 0.9},
            {"seed": 4, "top1": 0.99, "top_label_ece": 0.00, "top_label_cov70": 1.0},
        ],
    }
    table = top_label.paired(rows, "5 heads")
    row = next(line for line in table.splitlines() if line.startswith("| linear"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "3"
    assert cells[2] == "+0.7 pt (better 1, worse 1)"
    assert cells[3] == "+0.007 (better 1, worse 1)"  # ECE went up on average: worse, but one seed better
    assert cells[4] == "+0.0 pt (better 0, worse 0)"


def test_against_an_unknown_configuration_names_the_known_ones(tmp_path):
    path = tmp_path / "logits.json"
    path.write_text(json.dumps(saved(["5 heads"])), encoding="utf-8")
    with pytest.raises(SystemExit, match="5 heads"):
        top_label.main([str(path), "--against", "10 heads"])

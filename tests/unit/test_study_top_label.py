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

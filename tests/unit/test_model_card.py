"""bench/model_card.py: the card is generated from the sidecar, and the committed one is current."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.model_card import render
from lambda_function.sidecar import read_sidecar
from tests.fixtures.images import BLUE, GREEN, RED, solid

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "lambda_function" / "model" / "model.tflite"
CARD = BUNDLED.with_name("MODEL_CARD.md")
METRICS = {
    "accuracy": 0.5,
    "num_images": 2,
    "macro_avg": {"f1": 0.4},
    "latency_p50_ms": 12.0,
    "load_average": 0.5,
    "cpus": 2,
    "per_class": {"dress": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}},
}


def test_committed_card_describes_the_bundled_model():
    """Regenerate the card (`make model-card`) whenever model.tflite / model.json change."""
    meta = read_sidecar(BUNDLED)
    card = CARD.read_text(encoding="utf-8")
    assert f"sha256 `{meta['sha256']}`" in card
    assert f"`model.tflite`, {BUNDLED.stat().st_size / 1e6:.1f} MB" in card
    assert card.startswith(f"# Model card: clothing classifier ({meta['variant']} TFLite)")
    assert ", ".join(meta["labels"]) in card
    assert f"input {meta['input']['height']}x{meta['input']['width']}" in card


def test_facts_come_from_the_sidecar():
    meta = copy.deepcopy(read_sidecar(BUNDLED))
    meta["training"].update(pooled_blocks="13,14", dense_units=0, dropout=0.2)
    meta["training"]["images"] = {"train": 5, "validation": 3, "test": 2}
    card = render(meta, 1_000_000, METRICS, "make model-card", "2026-12-03")
    assert "blocks 13-14's outputs" in card and "Dropout(0.2)" in card and "Dense(100" not in card
    assert "5 train / 3 validation / 2 test images" in card and "3068" not in card
    assert "`model.tflite`, 1.0 MB" in card and "2026-12-03" in card


def test_task_and_limits_come_from_the_labels_and_the_data():
    meta = copy.deepcopy(read_sidecar(BUNDLED))
    meta["labels"] = ["cat", "dog", "bird"]
    meta["training"]["dataset"] = "pets"
    per_class = {
        "cat": {"precision": 0.9, "recall": 0.9, "f1": 0.90, "support": 5},
        "dog": {"precision": 0.5, "recall": 0.7, "f1": 0.58, "support": 5},
        "bird": {"precision": 0.8, "recall": 0.6, "f1": 0.69, "support": 5},
    }
    card = render(meta, 1_000_000, {**METRICS, "per_class": per_class}, "make model-card", "2026-12-05")
    assert card.startswith("# Model card: pets classifier (")
    task = next(line for line in card.splitlines() if line.startswith("- **Task**"))
    limits = card.split("## Limits", 1)[1]
    assert "one of 3 classes: cat, dog, bird" in task
    assert "Trained on the photos of pets" in limits and "dog (F1 0.58) and bird (F1 0.69)" in limits
    assert "outside the 3 classes" in limits
    for word in ("garment", "clothing", "shirt", "ten"):
        assert word not in (task + limits).lower().split(), word
    # The recipe's own dataset keeps its description.
    ours = render(read_sidecar(BUNDLED), 1_000_000, METRICS, "make model-card", "2026-12-05")
    assert "product-style photos of a single garment" in ours.split("## Limits", 1)[1]


def test_a_sidecar_without_training_facts_says_so():
    meta = copy.deepcopy(read_sidecar(BUNDLED))
    del meta["training"]
    card = render(meta, 1_000_000, METRICS, "make model-card", "2026-12-03")
    assert card.count("not recorded in the sidecar") == 2


@pytest.fixture
def tiny_dataset(tmp_path):
    for name, color in (("red", RED), ("green", GREEN), ("blue", BLUE)):
        folder = tmp_path / "data" / "test" / name
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(solid(color))
        (folder / ".hidden.png").write_bytes(b"skipped: hidden")
    return tmp_path / "data"


def test_runs_with_the_runtime_requirements_only(tiny_model_path, tiny_dataset, tmp_path):
    model = tmp_path / "model" / "tiny.tflite"
    model.parent.mkdir()
    shutil.copy(tiny_model_path, model)
    shutil.copy(tiny_model_path.with_suffix(".json"), model.with_suffix(".json"))
    blocked = ("tensorflow", "keras", "tqdm", "matplotlib", "onnxruntime")
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}));"
        "sys.path.insert(0, 'bench'); import model_card;"
        f"sys.exit(model_card.main(['--data-dir', {str(tiny_dataset)!r}, '--model', {str(model)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    card = model.with_name("MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Test accuracy **100.00%**" in card and "(3 images)" in card
    assert f"sha256 `{read_sidecar(model)['sha256']}`" in card
    # The risk-coverage chart (Pillow) lands next to another model's card, which links it.
    assert (model.parent / "risk_coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(risk_coverage.png)" in card and "| test split (measured here, test) | 3 | 100.0% |" in card


def test_a_missing_test_split_is_one_line_and_exit_2(tiny_model_path, tmp_path):
    code = (
        "import sys; sys.path.insert(0, 'bench'); import model_card;"
        f"sys.exit(model_card.main(['--data-dir', {str(tmp_path)!r}, '--model', {str(tiny_model_path)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("error: Split folder not found")
    assert "Traceback" not in done.stderr


CALIBRATION = {
    "method": "temperature",
    "temperature": 4.2,
    "in_model": True,
    "fitted_on": {"validation": 341, "extra_grouped_cv": 199},
    "held_out": {
        "validation": {"images": 341, "top1": 0.9, "top3": 0.99, "ece": 0.03, "brier": 0.15,
                       "mean_top1_score": 0.88, "coverage_accuracy": {"90%": 0.94, "80%": 0.96, "70%": 0.97}},
        "extra_grouped_cv": {
            "folds": 5,
            "uncalibrated": {"ece": 0.19},
            "calibrated": {"images": 199, "top1": 0.81, "top3": 0.96, "ece": 0.05, "brier": 0.3,
                           "mean_top1_score": 0.78,
                           "coverage_accuracy": {"90%": 0.84, "80%": 0.88, "70%": 0.92}},
        },
    },
    "risk_coverage": {"extra_grouped_cv": [[0.5, 0.95], [1.0, 0.81]]},
    "threshold": {"recommended": 0.55, "target_accuracy": 0.95,
                  "extra_grouped_cv": {"threshold": 0.55, "answered": 0.62, "accuracy": 0.95}},
}  # fmt: skip


def test_calibration_figures_and_threshold_come_from_the_sidecar():
    meta = copy.deepcopy(read_sidecar(BUNDLED))
    meta["calibration"] = CALIBRATION
    meta["training"].update(heads=5, tune_block14_epochs=2)
    card = render(meta, 1_000_000, METRICS, "make model-card", "2026-12-05", "../../docs/img/x.png")
    assert "temperature scaling T = 4.20" in card and "341 validation photos" in card
    assert "5 such heads" in card and "fine-tuned 2 epochs" in card
    assert "| extra photos, 5-fold grouped CV (training time) | 199 | 81.0% | 96.0% | 0.050 |" in card
    assert "extra photos' ECE was 0.190" in card
    assert "**Recommended threshold: 0.55**" in card and "62.0% answered, 95.0% of them right" in card
    assert "![risk-coverage" in card and "(../../docs/img/x.png)" in card
    assert "Kids' one-piece garments" in card and "Capri" in card


def test_a_top_label_calibration_is_described_by_its_two_numbers():
    meta = copy.deepcopy(read_sidecar(BUNDLED))
    meta["calibration"] = {**CALIBRATION, "method": "top-label", "slope": 0.3125, "offset": 0.5}
    del meta["calibration"]["temperature"]
    extra = meta["calibration"]["held_out"]["extra_grouped_cv"]
    extra["uncalibrated"] = {"ece": 0.19, "coverage_accuracy": {"70%": 0.935}}
    card = render(meta, 1_000_000, METRICS, "make model-card", "2026-12-05", "../../docs/img/x.png")
    assert "sigmoid(0.312 x its softmax log-odds +0.500)" in card and "no answer changes" in card
    assert "then top-label calibration (a layer of the model)" in card and "T = " not in card
    assert "one map for all, is right on 93.5% of the 70% most confident extra photos" in card
    # A temperature reorders the photos: no such sentence for it.
    assert "one map for all" not in render(
        read_sidecar(BUNDLED) | {"calibration": CALIBRATION}, 1, METRICS, "c", "d", "x.png"
    )


def test_a_sidecar_without_calibration_says_so():
    meta = copy.deepcopy(read_sidecar(BUNDLED))
    meta.pop("calibration", None)
    card = render(meta, 1_000_000, METRICS, "make model-card", "2026-12-05")
    assert "none recorded: the scores are the softmax of the model's raw logits" in card
    assert "No threshold is recommended" in card

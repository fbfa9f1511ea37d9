"""Accuracy levers of ``python -m train`` on a tiny synthetic dataset: resize mode, extra photos,
fine-tuning, the grouped-CV study and ``train.evaluate --images-dir`` (random-init Xception at 71 px)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from tests.integration.test_train import CLASSES, SIZE, _argv, _shape_image  # noqa: E402
from train import evaluate  # noqa: E402
from train.__main__ import main  # noqa: E402
from train.trainer import MAPS_DIR  # noqa: E402

SENDERS = ("s1", "s2", "s3", "s4")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(dataset with splits, LABEL/IMAGE extra folder with images.csv: 8 photos, 4 senders, 3 kids')."""
    root = tmp_path_factory.mktemp("levers")
    rng = np.random.default_rng(1)
    data = root / "data"
    for split, count in {"train": 4, "validation": 2, "test": 2}.items():
        for name in CLASSES:
            (data / split / name).mkdir(parents=True)
            for i in range(count):
                _shape_image(name, rng).save(data / split / name / f"{i}.png")
    extra = root / "extra"
    rows = []
    for i in range(8):
        name = CLASSES[i % 2]  # a folder need not hold every class
        (extra / name).mkdir(parents=True, exist_ok=True)
        # Tall photos, so that the resize mode matters.
        _shape_image(name, rng).resize((60, 120)).save(extra / name / f"e{i}.jpg", "JPEG")
        rows.append({"image": f"e{i}", "label": name, "kids": str(i < 3), "sender_id": SENDERS[i % 4]})
    with (extra / "images.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "label", "kids", "sender_id"])
        writer.writeheader()
        writer.writerows(rows)
    return data, extra


def test_letterbox_extra_photos_and_fine_tune_end_to_end(folders, tmp_path, capsys):
    data, extra = folders
    out = tmp_path / "run"
    argv = _argv(data, out, "--feature-backend", "keras", "--train-views", "1", "--resize", "letterbox")
    argv += [
        "--extra-dir",
        str(extra),
        "--fine-tune",
        "--fine-tune-epochs",
        "1",
        "--max-unreadable-fraction",
        "0",
        "--view-style",
        "photo",  # with one view per photo it only changes the fine-tuning batches: a new draw each
    ]
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "extra training photos: 8" in log and "fine-tuning blocks 13,14 on 20 images" in log
    assert "without --view-style photo" not in log  # the note is for runs that show the fitted images
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["resize"], config["fine_tune"], config["view_style"]) == ("letterbox", True, "photo")
    assert config["extra_dir"] == str(extra)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["extra_training_images"] == 8 and metrics["num_images"] == 6
    assert metrics["fine_tune"]["unfrozen_layers"] > 0 and "skipped" in metrics["assembly_check"]
    assert "fine_tune_s" in metrics["timings"]
    history = json.loads((out / "history.json").read_text())
    assert len(history["fine_tune"]["val_accuracy"]) == 1
    # The extra photos have their own feature cache, keyed apart from squash features.
    assert len(list((out / "cache" / MAPS_DIR).glob("features-extra-v0-*.npz"))) == 1
    # The evaluator reads the resize mode next to the model and reproduces the run's test metrics,
    # which come from the fine-tuned full model itself.
    assert evaluate.main([str(out / "model.keras"), "--data-dir", str(data)]) == 0
    alone = json.loads((out / "evaluation-test" / "metrics.json").read_text())
    assert alone["resize"] == "letterbox"
    assert alone["confusion_matrix"] == metrics["confusion_matrix"]
    assert alone["loss"] == pytest.approx(metrics["loss"], abs=1e-4)


def test_ensemble_block14_and_calibration_from_grouped_folds(folders, tmp_path):
    """The recipe of issue 19 end to end: block 14 tuned on cached maps, an ensemble of heads on train +
    extra photos, out-of-fold logits of the extra photos by contributor, the top-label map in the model."""
    data, extra = folders
    out = tmp_path / "run"
    argv = _argv(data, out, "--feature-backend", "keras", "--train-views", "1", "--extra-dir", str(extra))
    argv += ["--heads", "2", "--folds", "2", "--tune-block14-epochs", "1", "--extra-weight", "2"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["method"] == "top-label" and calibration["slope"] > 0
    assert calibration["fitted_on"] == {"validation": 6, "extra_grouped_cv": 8, "extra_share": None}
    cv = calibration["extra_grouped_cv"]
    assert cv["folds"] == 2 and cv["calibrated"]["images"] == 8
    assert cv["kids"]["images"] == 3 and cv["adults"]["images"] == 5
    assert {"validation", "extra_grouped_cv"} <= set(calibration["risk_coverage"])
    assert calibration["test"]["images"] == 6 and "target_accuracy" in calibration["threshold"]
    assert (out / "risk_coverage.png").read_bytes()[:4] == b"\x89PNG"
    # Block 14's convolutions moved, its BatchNorm did not; the saved model holds the tuned block and
    # agrees with the heads on the cached (tuned) features.
    assert metrics["block14"]["max_weight_change"] > 0 and metrics["block14"]["batchnorm_max_change"] == 0.0
    assert metrics["assembly_check"]["max_abs_diff"] <= 1e-3
    model = keras.saving.load_model(out / "model.keras")
    names = [layer.name for layer in model.layers]
    assert names[-2:] == ["ensemble", "calibration"] and {"logits_1", "logits_2"} <= set(names)
    layer = model.get_layer("calibration")
    assert (layer.slope, layer.offset) == pytest.approx(
        (calibration["slope"], calibration["offset"]), abs=1e-6
    )
    # The evaluator (full Keras model on pixels) reproduces the run's calibrated test figures.
    assert evaluate.main([str(out / "model.keras"), "--data-dir", str(data)]) == 0
    alone = json.loads((out / "evaluation-test" / "metrics.json").read_text())
    assert alone["confusion_matrix"] == metrics["confusion_matrix"]
    assert alone["loss"] == pytest.approx(metrics["loss"], abs=1e-4)
    assert json.loads((out / "config.json").read_text())["data"]["train_rows"] == 12 + 8


def test_evaluate_takes_a_label_image_folder_and_reports_kids_and_adults(folders, tmp_path, capsys):
    data, extra = folders
    out = tmp_path / "plain"
    assert main(_argv(data, out, "--feature-backend", "keras", "--epochs", "1")) == 0
    assert evaluate.main([str(out / "model.keras"), "--images-dir", str(extra)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "evaluation-extra" / "metrics.json").read_text())
    assert report["split"] == "extra" and report["num_images"] == 8 and report["resize"] == "squash"
    assert report["groups"]["kids"]["num_images"] == 3 and report["groups"]["adults"]["num_images"] == 5
    assert np.array(report["confusion_matrix"]).sum(axis=1).tolist() == [4, 4, 0]
    assert "kids: accuracy" in printed
    scores = report["calibration"]  # the score's promise beside top-1, from the same logits
    assert scores["images"] == 8 and scores["top1"] == pytest.approx(report["accuracy"])
    assert 0.0 <= scores["ece"] <= 1.0 and set(scores["coverage_accuracy"]) == {"90%", "80%", "70%"}
    assert "ECE" in printed
    assert (out / "evaluation-extra" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # A folder with a class the model does not know is refused in one line.
    (tmp_path / "odd" / "scarf").mkdir(parents=True)
    assert evaluate.main([str(out / "model.keras"), "--images-dir", str(tmp_path / "odd")]) == 2
    assert "does not know: ['scarf']" in capsys.readouterr().err


def test_fine_tune_trains_the_exit_flow_and_nothing_else():
    from train.config import TrainConfig
    from train.features import build_extractor
    from train.finetune import base_of, fine_tune
    from train.model import build_full_model, build_head

    extractor = build_extractor(SIZE, "none", (11, 12, 13, 14))
    rng = np.random.default_rng(0)
    head = build_head(4528, 3, 8, 0.0, standardize_on=rng.normal(size=(4, 4528)).astype("float32"))
    model = build_full_model(extractor, head)
    base = base_of(model)

    def weights(name: str) -> list[np.ndarray]:
        return [np.array(w) for w in base.get_layer(name).get_weights()]

    names = ("block1_conv1", "block12_sepconv1", "block14_sepconv1", "block14_sepconv1_bn")
    before = {name: weights(name) for name in names}
    head_before = np.array(model.get_layer("logits").get_weights()[0])
    images = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    config = TrainConfig(weights="none", fine_tune=True, fine_tune_epochs=2, batch_size=3)
    config.fine_tune_learning_rate = 1e-2  # large, so that one step surely moves what is trainable
    record = fine_tune(config, model, (images, labels), (images[:3], labels[:3]), 3)

    moved = zip(before["block14_sepconv1"], weights("block14_sepconv1"), strict=True)
    assert any(not np.array_equal(a, b) for a, b in moved)
    for frozen in ("block1_conv1", "block12_sepconv1", "block14_sepconv1_bn"):  # BN: moving stats too
        assert all(np.array_equal(a, b) for a, b in zip(before[frozen], weights(frozen), strict=True)), frozen
    assert not np.array_equal(head_before, model.get_layer("logits").get_weights()[0])
    assert (
        "block14_sepconv1" in record["unfrozen_layers"]
        and "block14_sepconv1_bn" not in record["unfrozen_layers"]
    )
    assert all(n.startswith(("block13_", "block14_")) for n in record["unfrozen_layers"])
    assert 1 <= record["best_epoch"] <= 2 and not base.trainable


def test_fine_tune_options_are_checked_before_any_work(capsys, tmp_path):
    assert main(["--fine-tune", "--fine-tune-blocks", "15", "--output-dir", str(tmp_path)]) == 2
    assert "fine_tune_blocks must name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--resize", "stretch", "--output-dir", str(tmp_path)])
    assert info.value.code == 2 and "invalid choice: 'stretch'" in capsys.readouterr().err


def test_study_extra_groups_folds_by_contributor(folders, tmp_path):
    from studies import extra as study_extra

    data, extra = folders
    argv = [
        "--data-dir", str(data), "--extra-dir", str(extra), "--weights", "none",
        "--image-size", str(SIZE), "--output-dir", str(tmp_path), "--resize", "squash,crop",
        "--folds", "2", "--epochs", "1", "--feature-backend", "keras", "--seeds", "1,2",
    ]  # fmt: skip
    assert study_extra.main(argv) == 0
    record = json.loads((tmp_path / study_extra.RESULTS_FILE).read_text())
    assert [r["resize"] for r in record["results"]] == ["squash", "crop"]
    for result in record["results"]:
        assert (result["extra_images"], result["extra_kids"], result["contributors"]) == (8, 3, 4)
        for head in result["heads"].values():
            assert all(0.0 <= head[k] <= 1.0 for k in ("extra_grouped_cv", "extra_grouped_cv_tta_flip"))
            runs = head["seeds"]
            assert [run["seed"] for run in runs] == [1, 2]
            assert head["validation"] == pytest.approx(np.mean([run["validation"] for run in runs]))
    assert (tmp_path / study_extra.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "cache").glob("features-test-*"))  # the test split is never read


def test_grouped_folds_never_split_a_contributor():
    from train.folds import grouped_folds

    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] * 1 + ["e"] * 2
    folds = grouped_folds(groups, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    owners = [{groups[i] for i in fold} for fold in folds]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    assert sorted(len(f) for f in folds) == [4, 5, 5]  # balanced by image count
    with pytest.raises(ValueError, match="cannot fill"):
        grouped_folds(["a", "b"], 3)


def test_first_per_class_is_the_smaller_limit():
    from studies.extra import first_per_class

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert first_per_class(labels, 2).tolist() == [0, 1, 3, 4, 5, 6]
    assert first_per_class(labels, 9).tolist() == list(range(9))


def test_photo_views_are_cached_apart_from_affine_views(folders, tmp_path, capsys):
    data, _ = folders
    cache = tmp_path / "cache"
    common = ["--feature-backend", "keras", "--train-views", "3", "--cache-dir", str(cache)]
    assert main(_argv(data, tmp_path / "photo", *common, "--view-style", "photo")) == 0
    assert "features: 0 reused from cache, 5 computed" in capsys.readouterr().out
    config = json.loads((tmp_path / "photo" / "config.json").read_text())["config"]
    assert (config["view_style"], config["train_views"]) == ("photo", 3)
    # The same run with the seed's affine views: the image and its mirror are reused, view 2 is not.
    assert main(_argv(data, tmp_path / "affine", *common)) == 0
    assert "features: 4 reused from cache, 1 computed" in capsys.readouterr().out
    assert len(list((cache / MAPS_DIR).glob("features-train-v2-*.npz"))) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it: the field's choices
        main(_argv(data, tmp_path / "bad", *common, "--view-style", "cartoon"))
    assert exit_info.value.code == 2


def test_block14_study_heads_weights_and_fine_tuning(folders, tmp_path):
    from studies import block14 as study_block14

    data, extra = folders
    argv = [
        "--data-dir", str(data), "--extra-dir", str(extra), "--weights", "none",
        "--image-size", str(SIZE), "--feature-backend", "keras", "--output-dir", str(tmp_path),
        "--seeds", "42,43", "--epochs", "1", "--photo-view", "--extra-weights", "0,2", "--folds", "2",
        "--fine-tune-epochs", "1", "--fine-tune-seed", "7",
    ]  # fmt: skip
    assert study_block14.main(argv) == 0
    record = json.loads((tmp_path / study_block14.RESULTS_FILE).read_text())
    names = [row["heads"] for row in record["heads"]]
    assert names == ["11,12,13,14", "13,14", "11,12,13,14 + photo view", "13,14 + photo view"]
    for row in record["heads"]:
        assert len(row["seeds"]) == 2 and 0.0 <= row["extra"] <= 1.0 and 0.0 <= row["validation"] <= 1.0
        assert row["extra_range"][0] <= row["extra"] <= row["extra_range"][1]
    assert [row["extra_weight"] for row in record["weighted_extra_cv"]] == [0.0, 2.0]
    tuned = record["fine_tune"]
    assert [row["epoch"] for row in tuned["epochs"]] == [0, 1] and tuned["seed"] == 7
    # Block 14's convolutions moved; its BatchNorm (weights and moving statistics) did not.
    assert tuned["block14_max_weight_change"] > 0 and tuned["batchnorm_max_change"] == 0.0
    assert (tmp_path / study_block14.PLOT_FILE).stat().st_size > 0
    cache = tmp_path / "cache" / "block13-maps"
    assert len(list(cache.glob("features-train-v2-*.npz"))) == 1  # the photo view
    assert not list(cache.glob("features-test-*"))  # the test split is never read


def test_block14_study_columns_follow_the_block_layout():
    from studies.block14 import columns

    widths = {11: 2, 12: 2, 13: 3, 14: 4}
    assert columns((13, 14), widths).tolist() == [4, 5, 6, 7, 8, 9, 10]
    assert columns((11, 14), widths).tolist() == [0, 1, 7, 8, 9, 10]


def test_fine_tuning_batches_redraw_photo_views_every_time():
    from train.finetune import Batches

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(6) % 2
    plain = Batches(images, labels, 2, batch_size=3, seed=1)
    photo = Batches(images, labels, 2, batch_size=3, seed=1, photo_views=True)
    x0, y0 = plain[0]
    a, ya = photo[0]
    b, _ = photo[0]
    assert np.array_equal(ya, y0)  # the same rows and labels, in the same order
    assert not np.array_equal(a, x0) and not np.array_equal(a, b)  # a new draw each time it is served
    assert a.dtype == np.float32 and a.shape == x0.shape and 0 <= a.min() and a.max() <= 255
    with pytest.raises(ValueError, match="need a seed"):
        Batches(images, labels, 2, batch_size=3, photo_views=True)

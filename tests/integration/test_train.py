"""``python -m train`` end to end on a tiny synthetic dataset (random-init Xception at 71 px: slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from tests.fixtures.shapes import CLASSES, write_shapes_dataset  # noqa: E402

# (test_train_levers.py imports the drawing under this name from here)
from tests.fixtures.shapes import shape_image as _shape_image  # noqa: E402
from train import evaluate  # noqa: E402
from train.__main__ import main  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.trainer import MAPS_DIR, train  # noqa: E402

SIZE = 71  # Xception's minimum input side
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARTIFACTS = [
    "model.keras",
    "labels.json",
    "config.json",
    "history.json",
    "metrics.json",
    "skipped_images.json",
    "confusion_matrix.png",
    "per_class_metrics.png",
    "training_curves.png",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """3 classes of coloured shapes, 6/3/3 images each (PNG and JPEG), plus one truncated JPEG in train."""
    root = write_shapes_dataset(tmp_path_factory.mktemp("shapes"))
    broken = root / "train" / CLASSES[0] / "zz_broken.jpg"
    _shape_image(CLASSES[0], np.random.default_rng(1)).save(broken, "JPEG")
    broken.write_bytes(broken.read_bytes()[:300])
    return root


def _argv(data_dir, out, *extra):
    return [
        "--data-dir", str(data_dir), "--output-dir", str(out), "--weights", "none",
        "--image-size", str(SIZE), "--epochs", "2", "--train-views", "2", "--batch-size", "8",
        "--max-unreadable-fraction", "0.1", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def keras_run(data_dir, tmp_path_factory):
    """One CLI run with the Keras backend, shared by the artifact tests."""
    out = tmp_path_factory.mktemp("run_keras")
    assert main(_argv(data_dir, out, "--feature-backend", "keras")) == 0
    return out


def test_cli_writes_every_artifact(keras_run):
    for name in ARTIFACTS:
        assert (keras_run / name).is_file(), name
    for png in ("confusion_matrix.png", "per_class_metrics.png", "training_curves.png"):
        assert (keras_run / png).read_bytes()[:8] == PNG_MAGIC


def test_labels_and_metrics(keras_run):
    assert json.loads((keras_run / "labels.json").read_text()) == CLASSES
    metrics = json.loads((keras_run / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num_images"] == 9 and metrics["labels"] == CLASSES
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 9 and cm.sum(axis=1).tolist() == [3, 3, 3]
    assert set(metrics["per_class"]) == set(CLASSES)
    assert all(set(v) == {"precision", "recall", "f1", "support"} for v in metrics["per_class"].values())
    assert len(metrics["misclassified"]) == 9 - int(np.trace(cm))
    assert metrics["assembly_check"]["max_abs_diff"] <= 1e-3
    history = json.loads((keras_run / "history.json").read_text())
    assert len(history["val_accuracy"]) == 2 and 1 <= history["best_epoch"] <= 2
    config = json.loads((keras_run / "config.json").read_text())
    assert config["config"]["image_size"] == SIZE and config["config"]["weights"] == "none"
    assert config["data"]["classes"] == CLASSES and "tensorflow" in config["versions"]


def test_corrupt_image_is_skipped_and_listed(keras_run):
    skipped = json.loads((keras_run / "skipped_images.json").read_text())
    assert [s["path"].rsplit("/", 1)[-1] for s in skipped] == ["zz_broken.jpg"]
    assert skipped[0]["code"] == "invalid_image"
    config = json.loads((keras_run / "config.json").read_text())
    assert config["data"]["train_rows"] == 2 * (3 * 6)  # 2 views of the 18 readable training images


def test_saved_model_is_self_contained(keras_run, data_dir):
    model = keras.saving.load_model(keras_run / "model.keras")
    assert model.input_shape == (None, SIZE, SIZE, 3) and model.output_shape == (None, 3)
    assert [layer.name for layer in model.layers][1] == "scale_to_xception"  # pixels 0-255 go in
    # Default features: pooled blocks 11, 12 (728 channels each), 13 (1024) and 14 (2048), concatenated,
    # then standardized inside the model (the served model needs no preprocessing beyond resizing).
    assert model.get_layer("features").output.shape[-1] == 728 + 728 + 1024 + 2048
    assert model.get_layer("standardize").mean.shape[-1] == 728 + 728 + 1024 + 2048
    # The standalone evaluator (full model on decoded pixels) reproduces the run's test metrics.
    assert evaluate.main([str(keras_run / "model.keras"), "--data-dir", str(data_dir)]) == 0
    alone = json.loads((keras_run / "evaluation-test" / "metrics.json").read_text())
    during = json.loads((keras_run / "metrics.json").read_text())
    assert alone["confusion_matrix"] == during["confusion_matrix"]
    assert alone["loss"] == pytest.approx(during["loss"], abs=1e-4)


def test_second_run_reuses_cache_and_reproduces(keras_run, data_dir, tmp_path, capsys):
    # Same seed and cache, new output dir: nothing recomputed, identical head training.
    out = tmp_path / "again"
    argv = _argv(data_dir, out, "--feature-backend", "keras", "--cache-dir", str(keras_run / "cache"))
    assert main(argv) == 0
    log = capsys.readouterr().out
    assert "features: 4 reused from cache, 0 computed" in log
    first = json.loads((keras_run / "history.json").read_text())
    second = json.loads((out / "history.json").read_text())
    assert second["val_loss"] == pytest.approx(first["val_loss"], rel=1e-5)
    assert json.loads((out / "skipped_images.json").read_text())  # the skip list survives the cache


def test_litert_backend_with_random_views(data_dir, tmp_path):
    config = TrainConfig(
        data_dir=data_dir,
        output_dir=tmp_path / "run",
        weights="none",
        image_size=SIZE,
        epochs=1,
        train_views=3,
        batch_size=8,
        feature_backend="litert",
        num_threads=2,
        max_unreadable_fraction=0.1,
    )
    result = train(config)
    assert (result.cache_hits, result.cache_misses) == (0, 5)  # train views 0-2, validation, test
    assert list((tmp_path / "run" / "cache" / MAPS_DIR).glob("extractor-*.tflite"))
    # LiteRT features through the head agree with the saved Keras model on real pixels.
    assert result.assembly_max_abs_diff <= 1e-3
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == CLASSES


def test_choose_blocks_cross_validates_suffixes_without_the_test_split(data_dir, tmp_path, capsys):
    from studies import choose_blocks

    argv = [
        "--data-dir", str(data_dir), "--weights", "none", "--image-size", str(SIZE),
        "--output-dir", str(tmp_path), "--max-unreadable-fraction", "0.1",
        "--candidates", "12,13,14", "--folds", "3", "--epochs", "1",
    ]  # fmt: skip
    assert choose_blocks.main(argv) == 0
    record = json.loads((tmp_path / choose_blocks.RESULTS_FILE).read_text())
    assert [row["blocks"] for row in record["rows"]] == [[14], [13, 14], [12, 13, 14]]
    assert [row["features"] for row in record["rows"]] == [2048, 1024 + 2048, 728 + 1024 + 2048]
    assert all(len(row["folds"]) == 3 and 0.0 <= row["mean"] <= 1.0 for row in record["rows"])
    assert not list((tmp_path / "cache").glob("features-test-*"))  # the test split is never extracted
    assert choose_blocks.main([*argv[:-4], "--folds", "1"]) == 2
    assert "folds must be at least 2" in capsys.readouterr().err


def test_stratified_folds_partition_every_class():
    from studies.choose_blocks import block_columns, stratified_folds

    labels = np.array([0] * 6 + [1] * 4 + [2] * 5)
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))
    assert all(set(labels[f]) == {0, 1, 2} for f in folds)
    widths = {12: 2, 13: 3, 14: 4}
    assert block_columns(widths, (13, 14)).tolist() == [2, 3, 4, 5, 6, 7, 8]


def test_extractor_pools_the_named_blocks():
    from train.features import build_extractor

    both = build_extractor(SIZE, "none", (13, 14))
    last = build_extractor(SIZE, "none", (14,))
    last.set_weights(both.get_weights())  # same Xception weights: block 14 features must match exactly
    pixels = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    features = np.asarray(both(pixels))
    assert features.shape == (2, 1024 + 2048)
    np.testing.assert_allclose(features[:, 1024:], np.asarray(last(pixels)), atol=1e-5)
    # The first 1024 are block 13's output (the input of block 14), averaged over space.
    xception = both.get_layer("xception_blocks")
    block13 = keras.Model(xception.input, xception.get_layer("block14_sepconv1").input)
    scaled = pixels / 127.5 - 1.0
    expected = np.asarray(block13(scaled)).mean(axis=(1, 2))
    np.testing.assert_allclose(features[:, :1024], expected, atol=1e-4)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_dir", "Data directory not found"),
        ("missing_split", "no validation folder"),
        ("empty_class", "has no images"),
        ("class_mismatch", "unexpected ['hats']"),
        ("all_corrupt", "could not be read"),
        ("bad_weights", "Could not load Xception weights"),
        ("missing_weights", "Weights file not found"),
    ],
)
def test_bad_data_dirs_exit_2_with_one_line(tmp_path, capsys, breakage, message):
    root = tmp_path / "data"
    for split in ("train", "validation", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), (9, 9, 9)).save(root / split / name / "x.png")
    if breakage == "missing_dir":
        root = tmp_path / "absent"
    elif breakage == "missing_split":
        for f in (root / "validation").rglob("*.png"):
            f.unlink()
        for d in (root / "validation").iterdir():
            d.rmdir()
        (root / "validation").rmdir()
    elif breakage == "empty_class":
        (root / "test" / "b" / "x.png").unlink()
    elif breakage == "class_mismatch":
        (root / "test" / "hats").mkdir()
    elif breakage == "all_corrupt":
        for f in (root / "train").rglob("*.png"):
            f.write_bytes(b"")
    weights = "none"
    if breakage == "bad_weights":
        weights = str(tmp_path / "not_weights.weights.h5")
        (tmp_path / "not_weights.weights.h5").write_bytes(b"this is not HDF5")
    elif breakage == "missing_weights":
        weights = str(tmp_path / "absent.weights.h5")
    code = main(["--data-dir", str(root), "--output-dir", str(tmp_path / "out"), "--weights", weights,
                 "--image-size", str(SIZE), "--feature-backend", "keras"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in err

"""Tolerance checks, softmax, variant choice, install and data sampling (no TensorFlow)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from convert.data import calibration_batches, list_split, stratified_sample, synthetic_images
from convert.errors import ConversionError, DataError, SidecarError, UnknownVariantError, ValidationError
from convert.install import choose_variant, install
from convert.metadata import write_sidecar
from convert.report import to_markdown
from convert.validate import TOLERANCES, check, compare, tolerance_for
from lambda_function.classifier import softmax


def _probs(rng, n=20, k=4, sharp=5.0):
    return softmax(rng.normal(0, sharp, (n, k)))


def test_softmax_is_a_distribution_even_for_huge_logits():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-12)
    assert probs[0, 0] == pytest.approx(1.0) and probs[1, 1] == pytest.approx(1 / 3)


def test_identical_outputs_pass_every_tolerance():
    probs = _probs(np.random.default_rng(0))
    for variant in TOLERANCES:
        result = check(compare(variant, probs, probs))
        assert result.passed and result.max_abs_diff == 0.0 and result.top1_agreement == 1.0


def test_diff_beyond_tolerance_raises_with_the_metric_named():
    probs = _probs(np.random.default_rng(1))
    moved = probs.copy()
    moved[0] = np.roll(moved[0], 1)
    result = compare("tflite-fp32", moved, probs)
    assert not result.passed
    with pytest.raises(ValidationError) as info:
        check(result)
    assert (info.value.variant, info.value.metric) == ("tflite-fp32", "max_abs_diff")
    assert info.value.value == pytest.approx(result.max_abs_diff)
    assert "tflite-fp32" in str(info.value) and "max_abs_diff" in str(info.value)


def test_agreement_below_tolerance_raises():
    rng = np.random.default_rng(2)
    probs = _probs(rng, n=10)
    flipped = probs[:, ::-1]
    with pytest.raises(ValidationError) as info:
        check(
            compare("tflite-int8", flipped, probs, tolerance={"max_abs_diff": 1.0, "min_top1_agreement": 0.9})
        )
    assert info.value.metric == "top1_agreement"


def test_accuracy_is_measured_against_targets():
    probs = np.eye(4)[[0, 1, 2, 3]]
    result = compare("onnx-fp32", probs, probs, targets=np.array([0, 1, 2, 0]))
    assert result.accuracy == pytest.approx(0.75)


def test_shape_mismatch_is_a_validation_error():
    with pytest.raises(ValidationError):
        compare("onnx-fp32", np.ones((2, 3)) / 3, np.ones((2, 4)) / 4)


def test_unknown_variant_has_no_tolerance():
    with pytest.raises(UnknownVariantError):
        tolerance_for("tflite-int4")


def test_tolerances_tighten_with_precision():
    assert TOLERANCES["tflite-fp32"]["max_abs_diff"] < TOLERANCES["tflite-float16"]["max_abs_diff"]
    assert TOLERANCES["tflite-fp32"]["min_top1_agreement"] == 1.0
    for quantized in ("tflite-dynamic", "tflite-int8", "onnx-int8"):
        assert "max_abs_diff" not in TOLERANCES[quantized]  # bounded on the mean instead
        assert TOLERANCES[quantized]["min_top1_agreement"] >= 0.95


def _swung(rows: int, flipped: int) -> tuple[np.ndarray, np.ndarray]:
    """Keras probabilities (confident class 0) and a variant that swings ``flipped`` images to class 1."""
    keras_probs = np.tile([0.91] + [0.01] * 9, (rows, 1))
    variant = keras_probs.copy()
    variant[:flipped, :2] = [0.05, 0.87]
    return variant, keras_probs


def test_quantized_variant_tolerates_a_few_swung_images_but_not_a_broken_model():
    variant, keras_probs = _swung(rows=100, flipped=2)  # 98% agreement, worst image moved by 0.86
    result = compare("tflite-int8", variant, keras_probs)
    assert result.max_abs_diff == pytest.approx(0.86) and result.passed
    assert check(result) is result
    broken, keras_probs = _swung(rows=100, flipped=30)  # mean |diff| 0.052, agreement 70%
    result = compare(
        "tflite-int8", broken, keras_probs, tolerance={"max_mean_abs_diff": 0.02, "min_top1_agreement": 0.0}
    )
    assert not result.passed
    with pytest.raises(ValidationError, match="mean_abs_diff = 0.0516, the tolerance is at most 0.02"):
        check(result)


ROWS = [
    {"variant": "keras", "format": "keras", "accuracy": 91.0},
    {"variant": "tflite-fp32", "format": "tflite", "accuracy": 91.0, "latency_p50_ms": 86, "passed": True},
    {"variant": "tflite-dynamic", "format": "tflite", "accuracy": 90.5, "latency_p50_ms": 74, "passed": True},
    {"variant": "tflite-int8", "format": "tflite", "accuracy": 84.1, "latency_p50_ms": 53, "passed": False},
    {"variant": "onnx-int8", "format": "onnx", "accuracy": 90.8, "latency_p50_ms": 30, "passed": True},
]


def test_choose_variant_is_the_fastest_tflite_within_one_point():
    assert choose_variant(ROWS, 0.91)["variant"] == "tflite-dynamic"
    assert choose_variant(ROWS, 91.0)["variant"] == "tflite-dynamic"
    good_int8 = [*ROWS[:3], {**ROWS[3], "accuracy": 90.6, "passed": True}]
    assert choose_variant(good_int8, 0.91)["variant"] == "tflite-int8"


def test_choose_variant_respects_the_size_budget():
    # fp32 is the fastest here, but 84 MB would blow the Lambda artifact budget.
    rows = [
        {
            "variant": "tflite-fp32",
            "format": "tflite",
            "accuracy": 91.0,
            "latency_p50_ms": 50,
            "size_mb": 84.0,
            "passed": True,
        },
        {
            "variant": "tflite-int8",
            "format": "tflite",
            "accuracy": 90.6,
            "latency_p50_ms": 60,
            "size_mb": 23.0,
            "passed": True,
        },
        {
            "variant": "tflite-dynamic",
            "format": "tflite",
            "accuracy": 90.9,
            "latency_p50_ms": 70,
            "size_mb": 21.8,
            "passed": True,
        },
    ]
    assert choose_variant(rows, 0.91)["variant"] == "tflite-int8"
    assert choose_variant(rows, 0.91, max_size_mb=100)["variant"] == "tflite-fp32"
    with pytest.raises(ConversionError, match="at most 10"):
        choose_variant(rows, 0.91, max_size_mb=10)


def test_choose_variant_fails_clearly():
    with pytest.raises(ConversionError, match="within"):
        choose_variant(ROWS, 0.99)
    with pytest.raises(ConversionError, match="test accuracy"):
        choose_variant(ROWS, None)


def test_markdown_has_one_row_per_variant_and_marks_failures():
    text = to_markdown(ROWS)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(ROWS)  # header, separator, rows
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "FAIL" in text and "| keras |" in text


def _installable(tmp_path, passed=True):
    model = tmp_path / "tflite_int8.tflite"
    shutil.copyfile("tests/fixtures/tiny_model.tflite", model)
    source = tmp_path / "model.keras"
    source.write_bytes(b"k")
    write_sidecar(model, "tflite", "int8", ["a", "b", "c"], (32, 32), source, {}, {"passed": passed})
    return model


def test_install_copies_model_and_sidecar(tmp_path):
    model = _installable(tmp_path)
    dest = tmp_path / "dest"
    assert install(model, dest) == dest / "model.tflite"
    assert (dest / "model.tflite").read_bytes() == model.read_bytes()
    assert (dest / "model.json").read_text() == model.with_suffix(".json").read_text()
    assert sorted(p.name for p in dest.iterdir()) == ["model.json", "model.tflite"]


def test_install_refuses_other_formats_failed_or_tampered_models(tmp_path):
    saved = tmp_path / "model.pb"
    saved.write_bytes(b"x")
    with pytest.raises(ConversionError, match="Only TFLite and ONNX"):
        install(saved, tmp_path / "dest")
    failed = _installable(tmp_path, passed=False)
    with pytest.raises(SidecarError, match="failed validation"):
        install(failed, tmp_path / "dest")
    tampered = _installable(tmp_path)
    tampered.write_bytes(b"changed")
    with pytest.raises(SidecarError, match="does not match"):
        install(tampered, tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.tflite").exists()


def _make_split(root, counts):
    from PIL import Image

    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / name / f"{i}.png")
    (root / "notes.txt").write_text("ignored: not a folder")


def test_list_split_and_stratified_sample_cover_every_class(tmp_path):
    _make_split(tmp_path / "train", {"a": 10, "b": 2, "c": 5})
    items = list_split(tmp_path, "train", ["a", "b", "c"])
    assert len(items) == 17
    sample = stratified_sample(items, 6)
    assert len(sample) == 6 and {cls for _, cls in sample} == {0, 1, 2}
    assert stratified_sample(items, 6) == sample  # seeded
    assert stratified_sample(items, None) == items


def test_list_split_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_split(tmp_path, "test", ["a"])
    _make_split(tmp_path / "test", {"a": 1, "zz": 1})
    with pytest.raises(DataError, match="zz"):
        list_split(tmp_path, "test", ["a"])


def test_calibration_batches_add_mirrors():
    images = synthetic_images(3, (16, 12))
    assert images.pixels.shape == (3, 16, 12, 3) and images.pixels.dtype == np.uint8
    steps = list(calibration_batches(images, flips=True)())
    assert len(steps) == 6
    first, mirror = steps[0][0], steps[1][0]
    assert first.dtype == np.float32 and first.shape == (1, 16, 12, 3)
    np.testing.assert_array_equal(mirror, first[:, :, ::-1, :])
    assert len(list(calibration_batches(images, flips=False)())) == 3


def test_cli_errors_exit_2_without_importing_tensorflow(tmp_path):
    fake = tmp_path / "x.keras"
    fake.write_text("not a model")
    code = (
        "import sys\n"
        "from convert.__main__ import main\n"
        f"r1 = main([{str(fake)!r}, '--quantize', 'none', '--output-dir', {str(tmp_path / 'o')!r}])\n"
        f"r2 = main([{str(tmp_path / 'missing.keras')!r}, '--quantize', 'none'])\n"
        f"r3 = main([{str(fake)!r}, '--quantize', 'int4'])\n"
        "assert (r1, r2, r3) == (2, 2, 2), (r1, r2, r3)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "not a Keras model" in done.stderr
    assert "Model file not found" in done.stderr
    assert "Unknown quantization variant 'int4'" in done.stderr
    assert "Traceback" not in done.stderr


def test_conversion_lists_and_loads_images_as_training_does(tmp_path, capsys):
    from convert.data import load_split
    from train.data import list_split as training_list_split

    _make_split(tmp_path / "test", {"a": 30, "b": 2})
    (tmp_path / "test" / "a" / ".DS_Store.png").write_bytes(b"hidden: never listed")
    (tmp_path / "test" / "b" / "broken.png").write_bytes(b"not an image")
    items = list_split(tmp_path, "test", ["a", "b", "c"])  # a class of the labels may be absent
    paths, targets = training_list_split(tmp_path, "test", ["a", "b", "c"], subset=True)
    assert [(path, cls) for path, cls in items] == list(zip(paths, targets.tolist(), strict=True))
    assert len(items) == 33 and not any(path.name.startswith(".") for path, _ in items)
    images = load_split(tmp_path, "test", ["a", "b", "c"], (8, 8))  # 1 of 33 unreadable: skipped, named
    assert len(images) == 32 and not any(path.endswith("broken.png") for path in images.paths)
    assert images.targets.tolist() == [0] * 30 + [1] * 2
    captured = capsys.readouterr()
    assert "broken.png" in captured.out + captured.err
    (tmp_path / "test" / "b" / "broken2.png").write_bytes(b"not an image either")
    with pytest.raises(DataError, match="could not be read"):  # 2 of 34 > 5%: the data is wrong
        load_split(tmp_path, "test", ["a", "b", "c"], (8, 8))

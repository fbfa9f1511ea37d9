"""An ensemble of heads with its calibration layer, through every export (issue 19), on a tiny model:
Keras, TFLite (fp32, float16, dynamic, int8), ONNX (fp32, int8) and the on-device file give the same
calibrated probabilities within each variant's tolerance, and the sidecars record the calibration. Once
with a temperature (a Rescaling layer), once with the top-label map (its own layer of exp, log, max), and once
with the top-label map over heads that take the features' signed square root (``--signed-sqrt``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from convert.metadata import read_sidecar  # noqa: E402
from convert.pipeline import ConvertOptions, run  # noqa: E402
from convert.runners import load_runner  # noqa: E402
from convert.validate import TOLERANCES  # noqa: E402
from lambda_function.classifier import Classifier, softmax  # noqa: E402
from lambda_function.preprocess import load_image_file  # noqa: E402
from tests.integration.test_convert import LABELS, SIZE, data_dir  # noqa: E402, F401 - the fixture
from train.calibration import Calibrator, at_threshold, coverage_curve, summary  # noqa: E402
from train.model import HeadLayers, build_full_model  # noqa: E402

TEMPERATURE = 6.0
# Strong enough that the calibrated probabilities are far from the raw ones on the tiny model.
CALIBRATORS = {
    "temperature": Calibrator("temperature", scale=1 / TEMPERATURE),
    "top-label": Calibrator("top-label", scale=0.15, offset=-0.3),
}
SIGNED_SQRT = "top-label, signed sqrt"  # heads on sign(x) sqrt(|x|) of features with both signs
CALIBRATORS[SIGNED_SQRT] = CALIBRATORS["top-label"]
SEEDS = (1, 1001, 2001)


def _pixels(folder, split):
    paths = sorted((folder / split).glob("*/*"))
    pixels = np.stack([load_image_file(p, SIZE) for p in paths]).astype(np.float32)
    return pixels, np.array([LABELS.index(p.parent.name) for p in paths])


@pytest.fixture(scope="module", params=sorted(CALIBRATORS))
def method(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, data_dir, method):  # noqa: F811 - the imported fixture
    """(model.keras path, the same layers without calibration as a Keras model): a tiny CNN, three heads
    trained side by side, their mean logits through ``method``'s map inside the graph."""
    keras.utils.set_random_seed(0)
    signed_sqrt = method == SIGNED_SQRT
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    # Without a ReLU the pooled features take both signs, as Xception's pooled residual blocks do.
    x = keras.layers.Conv2D(8, 3, activation=None if signed_sqrt else "relu")(x)
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    pixels, targets = _pixels(data_dir, "train")
    features = np.asarray(extractor(pixels))
    if signed_sqrt:
        assert (features < 0).any() and (features > 0).any()
    heads = HeadLayers(
        8, len(LABELS), SEEDS, dense_units=6, dropout=0.0, standardize_on=features, signed_sqrt=signed_sqrt
    )
    trainer = heads.training_model()
    trainer.compile(
        keras.optimizers.Adam(0.05), [keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 3
    )
    trainer.fit(features, [targets] * 3, epochs=25, batch_size=12, verbose=0)
    uncalibrated = build_full_model(extractor, heads)
    heads.set_calibration(CALIBRATORS[method])
    model = build_full_model(extractor, heads)
    folder = tmp_path_factory.mktemp("calibrated")
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(LABELS))
    val_pixels, val_targets = _pixels(data_dir, "validation")
    val_probs = softmax(np.asarray(model(val_pixels)))
    # What python -m train writes (train/heldout.py): the block the sidecar's "calibration" comes from.
    record = {
        **heads.calibrator.to_dict(),
        "fitted_on": {"validation": len(val_targets)},
        "validation": {"calibrated": summary(val_probs, val_targets)},
        "risk_coverage": {"validation": coverage_curve(val_probs, val_targets)},
        "threshold": {"target_accuracy": 0.9, "held_out": at_threshold(val_probs, val_targets, 0.5)},
    }
    (folder / "metrics.json").write_text(json.dumps({"calibration": record}))
    return folder / "model.keras", uncalibrated


@pytest.fixture(scope="module")
def exported(calibrated, data_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("exported")
    options = ConvertOptions(
        data_dir=data_dir,
        calibration_images=12,
        latency_runs=1,
        install="fp32",
        install_dir=out / "installed",
    )
    return run(calibrated[0], out, options), out


def test_the_saved_model_maps_the_mean_of_its_heads_as_the_calibrator_does(calibrated, data_dir, method):  # noqa: F811
    path, uncalibrated = calibrated
    model = keras.saving.load_model(path)
    names = [layer.name for layer in model.layers]
    assert {"ensemble", "calibration", "logits_1", "logits_3"} <= set(names) and names[-1] == "calibration"
    assert ("signed_sqrt" in names) == (method == SIGNED_SQRT)
    pixels, _ = _pixels(data_dir, "test")
    raw = np.asarray(uncalibrated(pixels))
    served = np.asarray(model(pixels))
    np.testing.assert_allclose(served, CALIBRATORS[method](raw), atol=1e-5)
    assert (served.argmax(axis=1) == raw.argmax(axis=1)).all()  # neither map changes an answer


def test_every_variant_serves_the_calibrated_probabilities(exported, calibrated, data_dir):  # noqa: F811
    from convert.ondevice import FILE_NAME
    from lambda_function.classifier import load_interpreter

    result, out = exported
    assert not result.failures
    path, uncalibrated = calibrated
    pixels, _ = _pixels(data_dir, "test")
    keras_probs = softmax(np.asarray(keras.saving.load_model(path)(pixels)))
    raw_probs = softmax(np.asarray(uncalibrated(pixels)))
    # The layer matters: without it the probabilities are far from the calibrated ones.
    assert np.abs(raw_probs - keras_probs).max() > 0.1
    outputs = {vid: softmax(load_runner(p).predict_logits(pixels)) for vid, p in result.models.items()}
    interpreter = load_interpreter(out / FILE_NAME, 1)  # a softmax inside: probabilities out
    inp, output = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    ondevice = []
    for image in pixels:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        ondevice.append(interpreter.get_tensor(output["index"])[0])
    outputs["tflite-ondevice"] = np.array(ondevice)
    assert set(outputs) == {*TOLERANCES, "tflite-ondevice"}
    for vid, probs in outputs.items():
        tolerance = TOLERANCES.get(vid, TOLERANCES["tflite-fp32"])  # on-device: its source, fp32
        diff = np.abs(probs - keras_probs)
        assert diff.max() <= tolerance.get("max_abs_diff", 1.0), vid
        assert diff.mean() <= tolerance.get("max_mean_abs_diff", 1.0), vid
        assert np.mean(probs.argmax(-1) == keras_probs.argmax(-1)) >= tolerance["min_top1_agreement"], vid
        assert diff.mean() < np.abs(probs - raw_probs).mean(), vid  # nearer the calibrated than the raw


def test_sidecars_record_the_calibration_and_the_runtime_serves_it(exported, calibrated, data_dir, method):  # noqa: F811
    from convert.ondevice import FILE_NAME

    result, out = exported
    written = CALIBRATORS[method].to_dict()
    for path in (*result.models.values(), out / FILE_NAME):
        record = read_sidecar(path)["calibration"]
        assert {key: record[key] for key in written} == pytest.approx(written)
        assert record["in_model"] is True and record["fitted_on"] == {"validation": 3 * len(LABELS)}
        assert record["threshold"]["recommended"] == 0.5 and "test" not in record["threshold"]
        assert record["held_out"]["validation"]["images"] == 3 * len(LABELS)
    classifier = Classifier.from_path(result.installed, num_threads=1)
    pixels, _ = _pixels(data_dir, "test")
    keras_probs = softmax(np.asarray(keras.saving.load_model(calibrated[0])(pixels)))
    served = np.array([classifier.predict(image.astype(np.uint8)) for image in pixels])
    np.testing.assert_allclose(served, keras_probs, atol=1e-4)  # the runtime adds nothing of its own


def _run_on_rows(path, rows: np.ndarray) -> np.ndarray:
    """A (None, K) -> (None, K) model file run one row at a time (the runners take images)."""
    if path.suffix == ".onnx":
        from lambda_function.onnx_engine import import_onnxruntime

        session = import_onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: row[None]})[0] for row in rows])
    from lambda_function.classifier import load_interpreter

    interpreter = load_interpreter(path, 1)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for row in rows:
        interpreter.resize_tensor_input(inp["index"], (1, len(row)))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], row[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0])
    return np.array(outputs)


def _float_exports(model, folder) -> dict:
    """``model`` as fp32, float16 and dynamic-range TFLite files and an fp32 ONNX file in ``folder``."""
    from convert.onnx import to_onnx_fp32
    from convert.savedmodel import export_saved_model
    from convert.tflite import convert_dynamic, convert_float16, convert_fp32

    saved = export_saved_model(model, folder / "saved_model")
    files = {}
    for name, make in (("fp32", convert_fp32), ("float16", convert_float16), ("dynamic", convert_dynamic)):
        files[name] = folder / f"{name}.tflite"
        files[name].write_bytes(make(saved)[0])
    files["onnx"] = folder / "model.onnx"
    to_onnx_fp32(saved, files["onnx"])
    return files


def test_the_top_label_layer_alone_keeps_sure_photos_finite_in_every_float_export(tmp_path):
    """Logits as sure as the real model's shoes (gaps past float32's exp range): float16 exports store
    every constant in float16, where a tiny floor such as 1e-30 becomes 0 and log(0) gave NaN."""
    from train.calibration import top_label
    from train.model import TopLabelCalibration

    slope, offset = 0.2, -0.06
    inputs = keras.Input((4,))
    model = keras.Model(inputs, TopLabelCalibration(slope, offset)(keras.layers.Dense(4)(inputs)))
    model.layers[1].set_weights([np.eye(4, dtype=np.float32), np.zeros(4, np.float32)])  # logits in = out
    logits = np.array(
        [[0.0, 1.0, 2.0, 3.0], [120.0, 0.0, -5.0, 1.0], [-30.0, -40.0, 60.0, -60.0], [1.0, 1.0001, -3, 0]],
        dtype=np.float32,
    )
    wanted = softmax(top_label(logits, slope, offset))
    files = _float_exports(model, tmp_path)
    for name, path in files.items():
        got = softmax(_run_on_rows(path, logits))
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, wanted, atol=1e-3, err_msg=name)
        assert (got.argmax(axis=1) == logits.argmax(axis=1)).all(), name


def test_the_signed_sqrt_layer_alone_is_exact_at_zero_and_both_signs_in_every_float_export(tmp_path):
    """sign(x) sqrt(|x|) through fp32, float16, dynamic-range TFLite and ONNX: no NaN at 0 (float16 has no
    room for an eps under a square root), the negative branch kept, large pooled values too."""
    from train.model import SignedSqrt, signed_sqrt_of

    inputs = keras.Input((5,))
    model = keras.Model(inputs, SignedSqrt()(keras.layers.Dense(5)(inputs)))
    model.layers[1].set_weights([np.eye(5, dtype=np.float32), np.zeros(5, np.float32)])  # rows in = out
    rows = np.array([[0.0, 4.0, -9.0, 1e-8, -1e-8], [400.0, -0.25, 2.0, -16.0, 0.0]], dtype=np.float32)
    wanted = signed_sqrt_of(rows)
    np.testing.assert_allclose(wanted, [[0, 2, -3, 1e-4, -1e-4], [20, -0.5, np.sqrt(2), -4, 0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(model(rows)), wanted, rtol=1e-6)
    files = _float_exports(model, tmp_path)
    for name, path in files.items():
        got = _run_on_rows(path, rows)
        assert np.isfinite(got).all(), name
        np.testing.assert_allclose(got, wanted, rtol=1e-2, atol=1e-3, err_msg=name)

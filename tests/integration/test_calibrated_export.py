"""An ensemble of heads with its calibration layer, through every export (issue 19), on a tiny model:
Keras, TFLite (fp32, float16, dynamic, int8), ONNX (fp32, int8) and the on-device file give the same
calibrated probabilities within each variant's tolerance, and the sidecars record the calibration."""

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
SEEDS = (1, 1001, 2001)


def _pixels(folder, split):
    paths = sorted((folder / split).glob("*/*"))
    pixels = np.stack([load_image_file(p, SIZE) for p in paths]).astype(np.float32)
    return pixels, np.array([LABELS.index(p.parent.name) for p in paths])


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, data_dir):  # noqa: F811 - the imported fixture
    """(model.keras path, the same layers without calibration as a Keras model): a tiny CNN, three heads
    trained side by side, their mean logits divided by TEMPERATURE inside the graph."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    pixels, targets = _pixels(data_dir, "train")
    features = np.asarray(extractor(pixels))
    heads = HeadLayers(8, len(LABELS), SEEDS, dense_units=6, dropout=0.0, standardize_on=features)
    trainer = heads.training_model()
    trainer.compile(
        keras.optimizers.Adam(0.05), [keras.losses.SparseCategoricalCrossentropy(from_logits=True)] * 3
    )
    trainer.fit(features, [targets] * 3, epochs=25, batch_size=12, verbose=0)
    uncalibrated = build_full_model(extractor, heads)
    heads.set_calibration(Calibrator("temperature", scale=1 / TEMPERATURE))
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


def test_the_saved_model_divides_the_mean_of_its_heads_by_the_temperature(calibrated, data_dir):  # noqa: F811
    path, uncalibrated = calibrated
    model = keras.saving.load_model(path)
    names = [layer.name for layer in model.layers]
    assert {"ensemble", "calibration", "logits_1", "logits_3"} <= set(names) and names[-1] == "calibration"
    pixels, _ = _pixels(data_dir, "test")
    np.testing.assert_allclose(
        np.asarray(model(pixels)), np.asarray(uncalibrated(pixels)) / TEMPERATURE, atol=1e-5
    )


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


def test_sidecars_record_the_calibration_and_the_runtime_serves_it(exported, calibrated, data_dir):  # noqa: F811
    from convert.ondevice import FILE_NAME

    result, out = exported
    for path in (*result.models.values(), out / FILE_NAME):
        record = read_sidecar(path)["calibration"]
        assert record["method"] == "temperature" and record["temperature"] == pytest.approx(TEMPERATURE)
        assert record["in_model"] is True and record["fitted_on"] == {"validation": 3 * len(LABELS)}
        assert record["threshold"]["recommended"] == 0.5 and "test" not in record["threshold"]
        assert record["held_out"]["validation"]["images"] == 3 * len(LABELS)
    classifier = Classifier.from_path(result.installed, num_threads=1)
    pixels, _ = _pixels(data_dir, "test")
    keras_probs = softmax(np.asarray(keras.saving.load_model(calibrated[0])(pixels)))
    served = np.array([classifier.predict(image.astype(np.uint8)) for image in pixels])
    np.testing.assert_allclose(served, keras_probs, atol=1e-4)  # the runtime adds nothing of its own

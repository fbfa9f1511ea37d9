"""The sidecar's optional ``calibration`` record (issue 19): written by convert from the training run,
checked by the one schema, never applied by the runtime (the map is a layer of the model), and a
sidecar written before the key existed is served exactly as it was."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from convert.errors import SidecarError
from convert.metadata import calibration_facts, write_sidecar
from lambda_function.classifier import Classifier, softmax
from lambda_function.errors import ServingError
from lambda_function.sidecar import calibration_problem, read_sidecar
from tests.fixtures.images import BLUE, GREEN, RED

TRAINED = {  # the shape of metrics.json's "calibration" block (train/heldout.py)
    "method": "temperature",
    "temperature": 4.2,
    "fitted_on": {"validation": 341, "extra_grouped_cv": 199},
    "validation": {"uncalibrated": {"ece": 0.05}, "calibrated": {"ece": 0.03, "images": 341}},
    "extra_grouped_cv": {"folds": 5, "calibrated": {"ece": 0.05, "images": 199}},
    "risk_coverage": {"validation": [[0.5, 1.0], [1.0, 0.9]]},
    "threshold": {
        "target_accuracy": 0.95,
        "held_out": {"threshold": 0.55, "answered": 0.8, "accuracy": 0.95},
        "test": {"threshold": 0.55, "answered": 0.9, "accuracy": 0.97},
    },
    "test": {"ece": 0.02},
}


@pytest.fixture
def served_copy(tmp_path, tiny_model_path):
    """The tiny model with its sidecar changed by ``edit``; returns the model path."""

    def make(edit):
        model = tmp_path / "m.tflite"
        shutil.copy(tiny_model_path, model)
        meta = json.loads(tiny_model_path.with_suffix(".json").read_text())
        edit(meta)
        model.with_suffix(".json").write_text(json.dumps(meta))
        return model

    return make


def _pixels():
    return [np.full((32, 32, 3), colour, np.uint8) for colour in (RED, GREEN, BLUE)] + [
        np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ]


def test_a_sidecar_from_before_the_key_is_served_as_it_was(tiny_model_path, served_copy):
    old = read_sidecar(tiny_model_path)
    assert "calibration" not in old  # the fixture predates the key, as do the models in the wild
    plain = Classifier.from_path(tiny_model_path, num_threads=1)
    described = Classifier.from_path(
        served_copy(lambda m: m.update(calibration={"method": "temperature", "temperature": 9.0})),
        num_threads=1,
    )
    for pixels in _pixels():
        # The runtime computes nothing from the record: the model's own softmax, bit for bit.
        interpreter = plain.engine.interpreter
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels[None].astype(np.float32))
        interpreter.invoke()
        raw = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        expected = softmax(raw).astype(np.float32)
        assert np.array_equal(plain.predict(pixels), expected)
        assert np.array_equal(described.predict(pixels), expected)


@pytest.mark.parametrize(
    "record, message",
    [
        ("temperature", "must be an object"),
        ({"temperature": 2.0}, "method is one of"),
        ({"method": "platt"}, "method is one of"),
        ({"method": "temperature", "threshold": {"recommended": 1.5}}, "between 0 and 1"),
        ({"method": "temperature", "threshold": {"recommended": True}}, "between 0 and 1"),
    ],
)
def test_a_malformed_record_is_a_model_error(served_copy, record, message):
    assert message in calibration_problem(record)
    with pytest.raises(ServingError) as error:
        Classifier.from_path(served_copy(lambda m: m.update(calibration=record)), num_threads=1)
    assert error.value.status == 500 and error.value.code == "model_unavailable"
    assert message in error.value.message


def test_well_formed_records_pass():
    assert calibration_problem(None) is None
    assert calibration_problem({"method": "none"}) is None
    assert calibration_problem({"method": "vector", "threshold": {"recommended": None}}) is None
    assert calibration_problem({"method": "temperature", "threshold": {"recommended": 0.55}}) is None
    assert calibration_problem({"method": "top-label", "slope": 0.3, "offset": 0.4}) is None


def test_convert_takes_the_record_from_the_training_metrics(tmp_path):
    source = tmp_path / "model.keras"
    source.write_bytes(b"pretend keras bytes")
    assert calibration_facts(source) is None  # no metrics.json: a model trained elsewhere
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))
    assert calibration_facts(source) is None  # a run from before calibration
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.9, "calibration": TRAINED}))
    facts = calibration_facts(source)
    assert facts["method"] == "temperature" and facts["temperature"] == 4.2 and facts["in_model"] is True
    top_label = {**TRAINED, "method": "top-label", "slope": 0.3, "offset": 0.4}
    del top_label["temperature"]
    (tmp_path / "metrics.json").write_text(json.dumps({"calibration": top_label}))
    assert {k: calibration_facts(source)[k] for k in ("method", "slope", "offset")} == {
        "method": "top-label",
        "slope": 0.3,
        "offset": 0.4,
    }
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.9, "calibration": TRAINED}))
    facts = calibration_facts(source)
    assert facts["held_out"]["validation"] == {"ece": 0.03, "images": 341}
    assert facts["held_out"]["extra_grouped_cv"]["folds"] == 5
    assert facts["threshold"]["recommended"] == 0.55
    # The test split is the model card's to measure, never carried from training.
    assert "test" not in facts and "test" not in facts["threshold"]
    model = tmp_path / "tflite_fp32.tflite"
    model.write_bytes(b"pretend model bytes")
    write_sidecar(model, "tflite", "fp32", ["a", "b"], (32, 32), source, {}, calibration=facts)
    assert read_sidecar(model)["calibration"] == facts
    with pytest.raises(SidecarError, match="method is one of"):
        write_sidecar(model, "tflite", "fp32", ["a", "b"], (32, 32), source, {}, calibration={"method": "x"})

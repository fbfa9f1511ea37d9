"""lambda_function.classifier: sidecar checks, probabilities, top-k, quantized I/O, runtime fallback."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import types

import numpy as np
import pytest

from lambda_function import classifier as clf
from lambda_function.classifier import Classifier, default_num_threads, load_interpreter, softmax, top_k
from lambda_function.errors import ServingError
from lambda_function.preprocess import preprocess
from tests.fixtures.images import BLUE, GREEN, RED, WHITE, solid
from tests.fixtures.make_tiny_model import LABELS as TINY_LABELS
from tests.fixtures.make_tiny_model import SIZE as TINY_SIZE


def pixels_of(color) -> np.ndarray:
    return np.full((TINY_SIZE, TINY_SIZE, 3), color, np.uint8)


@pytest.fixture
def model_copy(tmp_path, tiny_model_path):
    """A writable copy of the tiny model and its sidecar: (model path, sidecar dict, sidecar path)."""
    model = tmp_path / "m.tflite"
    shutil.copy(tiny_model_path, model)
    shutil.copy(tiny_model_path.with_suffix(".json"), tmp_path / "m.json")
    meta = json.loads((tmp_path / "m.json").read_text())
    return model, meta, tmp_path / "m.json"


def load_error(path) -> ServingError:
    with pytest.raises(ServingError) as info:
        Classifier.from_path(path, num_threads=1)
    assert (info.value.status, info.value.code) == (500, "model_unavailable")
    return info.value


# ---------------------------------------------------------------- loading


def test_tiny_model_metadata(tiny_classifier, tiny_model_path):
    assert tiny_classifier.labels == tuple(TINY_LABELS)
    assert tiny_classifier.input_size == (TINY_SIZE, TINY_SIZE)
    digest = hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    assert tiny_classifier.sha256 == digest
    assert tiny_classifier.model_id == digest[:12]


def test_labels_come_from_the_sidecar(model_copy):
    model, meta, sidecar = model_copy
    meta["labels"] = ["crimson", "lime", "navy"]
    sidecar.write_text(json.dumps(meta))
    loaded = Classifier.from_path(model, num_threads=1)
    assert loaded.top_k(loaded.predict(pixels_of(RED)), 1)[0]["label"] == "crimson"


def test_missing_model_file(tmp_path):
    assert "nope.tflite" in load_error(tmp_path / "nope.tflite").message


def test_missing_sidecar_names_its_path(model_copy):
    model, _, sidecar = model_copy
    sidecar.unlink()
    assert str(sidecar) in load_error(model).message


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_invalid_sidecar_names_its_path(model_copy, text):
    model, _, sidecar = model_copy
    sidecar.write_text(text)
    assert str(sidecar) in load_error(model).message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"labels": None}, "labels"),
        ({"labels": []}, "labels"),
        ({"labels": ["a", "a", "b"]}, "labels"),
        ({"labels": ["a", "b"]}, "2 labels"),
        ({"format": "onnx"}, "tflite"),
        ({"schema_version": 99}, "schema_version"),
        ({"output": "softmax"}, "output"),
        ({"sha256": "0" * 64}, "sha256"),
        ({"input": {"height": 64, "width": 64, "channels": 3}}, "64x64"),
    ],
)
def test_inconsistent_sidecar_is_refused(model_copy, change, needle):
    model, meta, sidecar = model_copy
    sidecar.write_text(json.dumps({**meta, **change}))
    assert needle in load_error(model).message


def test_sidecar_missing_a_required_key(model_copy):
    model, meta, sidecar = model_copy
    del meta["output"]
    sidecar.write_text(json.dumps(meta))
    assert "output" in load_error(model).message


def test_corrupt_model_with_matching_hash_is_refused(model_copy):
    model, meta, sidecar = model_copy
    model.write_bytes(b"definitely not a flatbuffer" * 10)
    meta["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    assert "could not load" in load_error(model).message


# ---------------------------------------------------------------- prediction


@pytest.mark.parametrize(("color", "label"), [(RED, "red"), (GREEN, "green"), (BLUE, "blue")])
def test_predicts_the_colour(tiny_classifier, color, label):
    probs = tiny_classifier.predict(pixels_of(color))
    assert probs.dtype == np.float32
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    assert tiny_classifier.top_k(probs, 1)[0]["label"] == label
    assert probs.max() > 0.99


def test_white_is_undecided(tiny_classifier):
    probs = tiny_classifier.predict(pixels_of(WHITE))
    np.testing.assert_allclose(probs, [1 / 3] * 3, atol=1e-3)


def test_predict_through_preprocess_of_a_real_file(tiny_classifier):
    pixels = preprocess(solid(BLUE, size=(300, 200), fmt="JPEG"), tiny_classifier.input_size)
    assert tiny_classifier.top_k(tiny_classifier.predict(pixels), 1)[0]["label"] == "blue"


def test_repeated_predictions_do_not_leak_state(tiny_classifier):
    first = tiny_classifier.predict(pixels_of(RED))
    tiny_classifier.predict(pixels_of(BLUE))
    np.testing.assert_array_equal(tiny_classifier.predict(pixels_of(RED)), first)


def test_wrong_pixel_shape_is_a_value_error(tiny_classifier):
    with pytest.raises(ValueError, match="shape"):
        tiny_classifier.predict(np.zeros((16, 16, 3), np.uint8))


def test_scores_cover_every_label(tiny_classifier):
    scores = tiny_classifier.scores(tiny_classifier.predict(pixels_of(GREEN)))
    assert list(scores) == TINY_LABELS
    assert all(isinstance(v, float) for v in scores.values())
    assert abs(sum(scores.values()) - 1.0) < 1e-4


def test_probabilities_output_is_renormalised_not_softmaxed(model_copy):
    # The tiny model emits [8, -4, -4] for red; read as probabilities, the negatives are noise -> [1, 0, 0].
    model, meta, sidecar = model_copy
    sidecar.write_text(json.dumps({**meta, "output": "probabilities"}))
    probs = Classifier.from_path(model, num_threads=1).predict(pixels_of(RED))
    np.testing.assert_allclose(probs, [1.0, 0.0, 0.0], atol=1e-6)


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([1000.0, 999.0, -1000.0]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, [0.7310586, 0.2689414, 0.0], atol=1e-6)


def test_renormalise_of_all_zero_is_uniform():
    np.testing.assert_allclose(clf.renormalise(np.zeros(4)), [0.25] * 4)


def test_top_k_is_best_first_with_stable_ties():
    probs = np.array([0.1, 0.4, 0.1, 0.4], np.float32)
    labels = ["a", "b", "c", "d"]
    assert [p["label"] for p in top_k(probs, labels, 4)] == ["b", "d", "a", "c"]
    assert top_k(probs, labels, 1) == [{"label": "b", "score": pytest.approx(0.4)}]
    assert len(top_k(probs, labels, 10)) == 4


# ---------------------------------------------------------------- quantized I/O (fake interpreter)


class FakeQuantInterpreter:
    """Just enough of the TFLite interpreter API: int8 input and output, 2x2 pixels, 3 classes."""

    def __init__(self, out_q=(0.5, -10), out_values=(6, -10, -20)):
        self.buffer = np.zeros((1, 2, 2, 3), np.int8)
        self.seen = None
        self.out_q, self.out_values = out_q, out_values

    def get_input_details(self):
        return [{"index": 0, "shape": np.array([1, 2, 2, 3]), "dtype": np.int8, "quantization": (1.0, -128)}]

    def get_output_details(self):
        return [{"index": 1, "shape": np.array([1, 3]), "dtype": np.int8, "quantization": self.out_q}]

    def tensor(self, index):
        assert index == 0
        return lambda: self.buffer

    def invoke(self):
        self.seen = self.buffer.copy()

    def get_tensor(self, index):
        return np.array([self.out_values], np.int8)


def test_int8_input_is_quantized_and_output_dequantized():
    fake = FakeQuantInterpreter()
    meta = {"labels": ["a", "b", "c"], "input": {"height": 2, "width": 2, "channels": 3}, "output": "logits"}
    model = Classifier(clf.TFLiteEngine(fake), meta, sha256="ab" * 32)
    pixels = np.array([[[0, 128, 255]] * 2] * 2, np.uint8)
    probs = model.predict(pixels)
    # x / scale + zero_point with scale 1, zero point -128: 0 -> -128, 128 -> 0, 255 -> 127.
    np.testing.assert_array_equal(fake.seen[0, 0, 0], [-128, 0, 127])
    # (q - zp) * scale = [8, 0, -5] -> softmax.
    np.testing.assert_allclose(probs, softmax(np.array([8.0, 0.0, -5.0])), rtol=1e-6)


# ---------------------------------------------------------------- runtime selection and threads


def test_falls_back_to_tflite_runtime(monkeypatch, tiny_model_path):
    made = {}

    class StubInterpreter:
        def __init__(self, model_path, num_threads):
            made.update(model_path=model_path, num_threads=num_threads)

        def allocate_tensors(self):
            made["allocated"] = True

    stub = types.ModuleType("tflite_runtime.interpreter")
    stub.Interpreter = StubInterpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", stub)
    assert isinstance(load_interpreter(tiny_model_path, 3), StubInterpreter)
    assert made == {"model_path": str(tiny_model_path), "num_threads": 3, "allocated": True}


def test_no_runtime_at_all_is_a_clear_error(monkeypatch, tiny_model_path):
    for name in (
        "ai_edge_litert",
        "ai_edge_litert.interpreter",
        "tflite_runtime",
        "tflite_runtime.interpreter",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ServingError, match="ai-edge-litert") as info:
        load_interpreter(tiny_model_path, 1)
    assert info.value.code == "model_unavailable"


def test_num_threads_from_env(monkeypatch):
    monkeypatch.setattr(clf.os, "cpu_count", lambda: 7)
    assert default_num_threads({}) == 7
    assert default_num_threads({"NUM_THREADS": " 2 "}) == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(ServingError, match="NUM_THREADS"):
            default_num_threads({"NUM_THREADS": bad})


# ---------------------------------------------------------------- without XNNPACK


def warnings_in(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "WARNING"]


def test_a_model_xnnpack_does_not_run_is_served_by_the_builtin_kernels_with_one_warning(tmp_path, capsys):
    from tests.fixtures import xnnpack_free_model

    path = xnnpack_free_model.write(tmp_path)
    capsys.readouterr()

    loaded = Classifier.from_path(path, num_threads=1)

    (warning,) = warnings_in(capsys)
    assert "built-in kernels" in warning["message"] and warning["model_path"] == str(path)
    assert clf.runs_on_xnnpack(loaded.engine.interpreter) is False
    size = (xnnpack_free_model.SIZE, xnnpack_free_model.SIZE, 3)
    for color, label in ((RED, "red"), (GREEN, "green"), (BLUE, "blue")):
        probs = loaded.predict(np.full(size, color, np.uint8))
        assert loaded.top_k(probs, 1)[0]["label"] == label
    assert warnings_in(capsys) == []  # once per load, not per request


def test_the_tiny_model_runs_on_xnnpack_without_a_warning(tiny_model_path, capsys):
    capsys.readouterr()

    loaded = Classifier.from_path(tiny_model_path, num_threads=1)

    assert clf.runs_on_xnnpack(loaded.engine.interpreter) is True
    assert warnings_in(capsys) == []

"""The on-device variant, checked in the device runtime itself: MediaPipe Tasks' ImageClassifier.

Built from the tiny colour model (tests/fixtures) in a temporary folder, so the test also covers the
writer; no TensorFlow is needed to build it (mediapipe may import it if it is installed).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("mediapipe", reason="the ondevice extra (mediapipe) is part of dev")

from convert import ondevice  # noqa: E402
from convert.errors import ConversionError, SidecarError  # noqa: E402
from lambda_function.classifier import Classifier, load_interpreter, softmax  # noqa: E402
from tests.conftest import BLUE, GREEN, RED, TINY_LABELS, TINY_SIZE  # noqa: E402


@pytest.fixture(scope="module")
def ondevice_path(tmp_path_factory, tiny_model_path):
    return ondevice.make_ondevice(tiny_model_path, tmp_path_factory.mktemp("ondevice") / "tiny.tflite")


def _mediapipe_classifier(path):
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    options = vision.ImageClassifierOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=str(path)), max_results=-1
    )
    return vision.ImageClassifier.create_from_options(options)


def _mp_image(rgb: tuple[int, int, int], height=45, width=70):
    import mediapipe as mp

    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = rgb
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=pixels)


def test_mediapipe_image_classifier_returns_probabilities_with_our_labels(ondevice_path):
    # An image of another size than the model's: MediaPipe resizes it itself.
    with _mediapipe_classifier(ondevice_path) as classifier:
        for colour, expected in ((RED, "red"), (GREEN, "green"), (BLUE, "blue")):
            categories = classifier.classify(_mp_image(colour)).classifications[0].categories
            assert categories[0].category_name == expected
            assert sorted(c.category_name for c in categories) == sorted(TINY_LABELS)
            assert sum(c.score for c in categories) == pytest.approx(1.0, abs=1e-5)
            assert all(0.0 <= c.score <= 1.0 for c in categories)
            assert categories[0].score > 0.99


def test_mediapipe_refuses_the_served_model_without_metadata(tiny_model_path):
    # Why this module exists: MediaPipe cannot use our logits model with its JSON sidecar.
    with pytest.raises(Exception, match="(?i)metadata|label"):
        with _mediapipe_classifier(tiny_model_path) as classifier:
            classifier.classify(_mp_image(RED))


def test_the_appended_softmax_computes_our_softmax_of_the_logits(tiny_model_path, ondevice_path):
    rng = np.random.default_rng(0)
    logits_model = load_interpreter(tiny_model_path, 1)
    probs_model = load_interpreter(ondevice_path, 1)
    for _ in range(5):
        pixels = rng.integers(0, 256, (1, TINY_SIZE, TINY_SIZE, 3)).astype(np.float32)
        outputs = []
        for interpreter in (logits_model, probs_model):
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
        np.testing.assert_allclose(outputs[1], softmax(outputs[0]), atol=1e-6)
    assert probs_model.get_signature_list()["serving_default"]["outputs"] == ["output_0"]
    # Batch fixed to one (LiteRT.js refuses a -1 batch in the signature); the source had -1.
    assert list(probs_model.get_input_details()[0]["shape_signature"]) == [1, TINY_SIZE, TINY_SIZE, 3]
    assert list(logits_model.get_input_details()[0]["shape_signature"])[0] == -1


def test_metadata_names_labels_normalisation_and_version(tiny_model_path, ondevice_path):
    meta = ondevice.read_metadata(ondevice_path.read_bytes())
    assert meta["labels"] == TINY_LABELS
    # The model scales pixels itself: MediaPipe must feed 0-255 unchanged.
    assert (meta["norm_mean"], meta["norm_std"]) == ([0.0], [1.0])
    assert meta["color_space"] == 1  # ColorSpaceType.RGB
    assert meta["min_parser_version"] == "1.0.0"
    source = json.loads(tiny_model_path.with_suffix(".json").read_text())
    assert source["sha256"][:12] in meta["version"]
    assert meta["author"] and meta["license"] and meta["name"]


def test_the_description_says_how_the_model_frames_a_photo(tmp_path, tiny_model_path, ondevice_path):
    # MediaPipe squashes every photo: a model trained on letterboxed photos must say so to the app.
    assert (
        "without keeping the aspect ratio"
        in ondevice.read_metadata(ondevice_path.read_bytes())["description"]
    )
    letterboxed = tmp_path / "letterboxed.tflite"
    shutil.copy(tiny_model_path, letterboxed)
    sidecar = json.loads(tiny_model_path.with_suffix(".json").read_text())
    sidecar["input"]["resize"] = "letterbox"
    letterboxed.with_suffix(".json").write_text(json.dumps(sidecar))
    out = ondevice.make_ondevice(letterboxed, tmp_path / "letterboxed_ondevice.tflite")
    assert "padded with mid-grey" in ondevice.read_metadata(out.read_bytes())["description"]


def test_the_same_source_always_gives_the_same_file(tmp_path, tiny_model_path, ondevice_path):
    again = ondevice.make_ondevice(tiny_model_path, tmp_path / "again.tflite")
    assert again.read_bytes() == ondevice_path.read_bytes()


def test_our_cli_runtime_serves_the_ondevice_file_with_the_same_scores(tiny_classifier, ondevice_path):
    on_device = Classifier.from_path(ondevice_path, num_threads=1)
    assert on_device.meta["output"] == "probabilities"
    rng = np.random.default_rng(1)
    for _ in range(3):
        pixels = rng.integers(0, 256, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
        np.testing.assert_allclose(on_device.predict(pixels), tiny_classifier.predict(pixels), atol=1e-6)


def test_build_variant_validates_against_reference_probabilities(tmp_path, tiny_model_path):
    source = tmp_path / "tflite_fp32.tflite"
    shutil.copy(tiny_model_path, source)
    shutil.copy(tiny_model_path.with_suffix(".json"), source.with_suffix(".json"))
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    reference = np.stack([Classifier.from_path(source, num_threads=1).predict(p) for p in pixels])
    targets = reference.argmax(-1)

    row, failure = ondevice.build_variant(source, tmp_path, reference, pixels, targets, latency_runs=2)
    assert failure is None
    assert row["variant"] == "tflite-ondevice" and row["passed"] and row["top1_agreement"] == 1.0
    side = json.loads((tmp_path / ondevice.FILE_NAME).with_suffix(".json").read_text())
    assert side["validation"]["passed"] and side["output"] == "probabilities"

    # Reference probabilities from another model: the same check must fail, and say so.
    row, failure = ondevice.build_variant(source, tmp_path, reference[:, ::-1], pixels, targets, 2)
    assert failure is not None and "tflite-ondevice" in str(failure) and row["passed"] is False


def test_refuses_inputs_it_cannot_make_sense_of(tmp_path, tiny_model_path, ondevice_path):
    data = tiny_model_path.read_bytes()
    with pytest.raises(ConversionError, match="already ends in a softmax"):
        ondevice.append_softmax(ondevice_path.read_bytes())
    with pytest.raises(ConversionError, match="already carries"):
        ondevice.add_metadata(ondevice_path.read_bytes(), TINY_LABELS)
    with pytest.raises(ConversionError, match="3 outputs but 2 labels"):
        ondevice.add_metadata(data, TINY_LABELS[:2])
    with pytest.raises(ConversionError, match="Not a TFLite model"):
        ondevice.append_softmax(b"PK\x03\x04 not a model")
    with pytest.raises(ConversionError, match="does not output logits"):
        ondevice.make_ondevice(ondevice_path, tmp_path / "twice.tflite")
    stranger = tmp_path / "stranger.tflite"
    stranger.write_bytes(data + b"\0")
    shutil.copy(tiny_model_path.with_suffix(".json"), stranger.with_suffix(".json"))
    with pytest.raises(SidecarError, match="does not match its metadata"):
        ondevice.make_ondevice(stranger, tmp_path / "out.tflite")


def test_cli_writes_the_file_or_says_why_not(tmp_path, tiny_model_path, capsys):
    assert ondevice.main([str(tiny_model_path), str(tmp_path / "m.tflite")]) == 0
    assert "3 labels, softmax output" in capsys.readouterr().out
    assert ondevice.main([str(tmp_path / "missing.tflite"), str(tmp_path / "n.tflite")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "n.tflite").exists()

"""The resize mode a model's sidecar names, and flip test-time augmentation, through the real runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lambda_function.classifier import Classifier
from lambda_function.errors import ServingError
from lambda_function.service import classify_bytes
from tests.fixtures.images import RED, encode, solid

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sidecar_copy(tmp_path, tiny_model_path):
    """Write the tiny model with a sidecar changed by ``edit``; return the model path."""

    def make(edit) -> object:
        model = tmp_path / "m.tflite"
        shutil.copy(tiny_model_path, model)
        meta = json.loads(tiny_model_path.with_suffix(".json").read_text())
        edit(meta)
        (tmp_path / "m.json").write_text(json.dumps(meta))
        return model

    return make


def test_a_sidecar_without_resize_is_served_as_squash(tiny_model_path, tiny_classifier):
    meta = json.loads(tiny_model_path.with_suffix(".json").read_text())
    assert "resize" not in meta["input"]  # the fixture predates the key, like the models in the wild
    assert tiny_classifier.resize == "squash"


def test_the_sidecar_resize_mode_reaches_preprocessing(sidecar_copy):
    squash = Classifier.from_path(sidecar_copy(lambda m: m["input"].update(resize="squash")), num_threads=1)
    boxed = Classifier.from_path(sidecar_copy(lambda m: m["input"].update(resize="letterbox")), num_threads=1)
    assert boxed.resize == "letterbox"
    tall_red = encode(Image.new("RGB", (40, 160), RED), "PNG")
    # Squashed, the photo is all red; letterboxed, three quarters of the input are grey padding.
    red_squash = classify_bytes(tall_red, squash, 3)["scores"]["red"]
    red_boxed = classify_bytes(tall_red, boxed, 3)["scores"]["red"]
    assert red_squash > 0.999 and red_boxed < red_squash - 0.01
    # A square photo is the same in every mode.
    square = solid(RED, size=(32, 32))
    assert classify_bytes(square, boxed, 3)["scores"] == classify_bytes(square, squash, 3)["scores"]


def test_an_unknown_resize_mode_is_a_model_error(sidecar_copy):
    model = sidecar_copy(lambda m: m["input"].update(resize="stretch"))
    with pytest.raises(ServingError) as info:
        Classifier.from_path(model, num_threads=1)
    assert (info.value.status, info.value.code) == (500, "model_unavailable")
    assert "'stretch'" in info.value.message and "letterbox" in info.value.message


def test_an_unknown_tta_mode_is_refused(tiny_model_path):
    with pytest.raises(ValueError, match="none, flip"):
        Classifier.from_path(tiny_model_path, num_threads=1, tta="five-crop")


@pytest.fixture(scope="module")
def left_half_model(tmp_path_factory):
    """A real .tflite that looks only at the left half of the image: not mirror-invariant."""
    pytest.importorskip("tensorflow")
    import keras

    from tests.fixtures.make_tiny_model import export_tflite, sidecar

    size = 16
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Cropping2D(((0, 0), (0, size // 2)))(x)  # drop the right half
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, name="logits")
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    dense.set_weights([4.0 * (1.5 * np.eye(3, dtype=np.float32) - 0.5), np.zeros(3, np.float32)])
    data = export_tflite(model)
    folder = tmp_path_factory.mktemp("left_half")
    path = folder / "left.tflite"
    path.write_bytes(data)
    meta = sidecar(data)
    meta["input"].update(height=size, width=size)
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def test_flip_tta_averages_the_image_and_its_mirror(left_half_model):
    plain = Classifier.from_path(left_half_model, num_threads=1)
    flip = Classifier.from_path(left_half_model, num_threads=1, tta="flip")
    assert (plain.tta, flip.tta) == ("none", "flip")
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :8] = RED  # red left half, blue right half
    pixels[:, 8:] = (0, 0, 255)
    alone = plain.predict(pixels)
    mirrored = plain.predict(np.ascontiguousarray(pixels[:, ::-1]))
    assert alone.argmax() == 0 and mirrored.argmax() == 2  # the model does tell the halves apart
    both = flip.predict(pixels)
    np.testing.assert_allclose(both, (alone + mirrored) / 2, atol=1e-6)
    assert abs(both[0] - both[2]) < 1e-5 and both.dtype == np.float32


def test_the_cli_takes_tta_flip(left_half_model, tmp_path):
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = RED
    image[:, 8:] = (0, 0, 255)
    path = tmp_path / "halves.png"
    path.write_bytes(encode(Image.fromarray(image), "PNG"))

    def scores(*extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
        result = subprocess.run(
            [sys.executable, "-m", "lambda_function.predict", str(path), "--model", str(left_half_model)]
            + ["--json", *extra],
            cwd=REPO,
            env={**env, "NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["scores"]

    plain, flipped = scores(), scores("--tta", "flip")
    assert plain["red"] > 0.9
    assert abs(flipped["red"] - flipped["blue"]) < 1e-4  # the mirror's vote made it a tie

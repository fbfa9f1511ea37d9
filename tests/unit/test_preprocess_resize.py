"""Resize modes of lambda_function.preprocess: squash, letterbox, crop, on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lambda_function.preprocess import (
    DEFAULT_RESIZE,
    PAD_COLOUR,
    RESIZE_MODES,
    load_image_file,
    preprocess,
    resize_image,
)
from tests.fixtures.images import BLUE, GREEN, RED, encode

SIZE = (64, 64)  # (height, width)


def bands(width: int, height: int, colours: tuple) -> Image.Image:
    """Horizontal bands of equal height, top to bottom."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    step = height / len(colours)
    for i, colour in enumerate(colours):
        draw.rectangle([0, round(i * step), width, round((i + 1) * step) - 1], fill=colour)
    return image


def square_mark(width: int, height: int, side: int) -> Image.Image:
    """White canvas with a black square of ``side`` pixels in the middle."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    left, top = (width - side) // 2, (height - side) // 2
    ImageDraw.Draw(image).rectangle([left, top, left + side - 1, top + side - 1], fill=(0, 0, 0))
    return image


def dark_box(pixels: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the dark pixels."""
    rows, cols = np.nonzero(pixels.max(axis=2) < 64)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def close(pixel, expected, tol=8) -> bool:
    return bool(np.max(np.abs(np.subtract(pixel, expected, dtype=np.int64))) <= tol)


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_every_mode_gives_the_requested_shape(mode):
    for source in ((100, 300), (300, 100), (64, 64), (7, 500)):
        out = np.asarray(resize_image(Image.new("RGB", source, RED), (48, 80), mode))
        assert out.shape == (48, 80, 3)


def test_squash_is_the_default():
    assert DEFAULT_RESIZE == "squash"
    image = bands(100, 300, (BLUE, RED, GREEN))
    default = np.asarray(resize_image(image, SIZE))
    assert np.array_equal(default, np.asarray(resize_image(image, SIZE, "squash")))
    # Squash keeps every band: the top rows are blue, the bottom rows green.
    assert close(default[1, 32], BLUE) and close(default[-2, 32], GREEN)


def test_letterbox_pads_the_sides_of_a_tall_image_with_grey():
    out = np.asarray(resize_image(Image.new("RGB", (100, 200), RED), SIZE, "letterbox"))
    # 100x200 fits as 32x64: 16 grey columns on each side, the image in the middle, rows untouched.
    assert all(close(out[r, c], PAD_COLOUR, 0) for r in (0, 32, 63) for c in (0, 15, 48, 63))
    assert all(close(out[r, c], RED) for r in (0, 32, 63) for c in (17, 32, 46))


def test_letterbox_pads_above_and_below_a_wide_image():
    out = np.asarray(resize_image(Image.new("RGB", (200, 100), BLUE), SIZE, "letterbox"))
    assert all(close(out[r, c], PAD_COLOUR, 0) for r in (0, 15, 48, 63) for c in (0, 32, 63))
    assert all(close(out[r, c], BLUE) for r in (17, 32, 46) for c in (0, 32, 63))


def test_letterbox_keeps_the_proportions_of_a_tall_image_and_squash_does_not():
    image = square_mark(200, 600, 120)  # a square garment on a tall photo
    height, width = dark_box(np.asarray(resize_image(image, SIZE, "letterbox")))
    assert abs(height - width) <= 1  # still a square
    height, width = dark_box(np.asarray(resize_image(image, SIZE, "squash")))
    assert width >= 2.5 * height  # squashed to a flat bar


def test_crop_keeps_the_centre_and_proportions():
    out = np.asarray(resize_image(bands(100, 300, (BLUE, RED, GREEN)), SIZE, "crop"))
    # The centred 100x100 square of a 100x300 photo is the red middle band: no blue, no green (the
    # outermost rows blend a little with the bands next to the box, as any antialiased resize does).
    assert all(close(out[r, c], RED) for r in (2, 32, 61) for c in (0, 32, 63))
    height, width = dark_box(np.asarray(resize_image(square_mark(600, 200, 100), SIZE, "crop")))
    assert abs(height - width) <= 1


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_an_image_of_the_input_size_is_left_alone(mode):
    image = bands(64, 64, (BLUE, RED))
    assert np.array_equal(np.asarray(resize_image(image, SIZE, mode)), np.asarray(image))


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="squash, letterbox, crop"):
        resize_image(Image.new("RGB", (10, 20)), SIZE, "stretch")


def test_preprocess_and_load_image_file_apply_the_mode(tmp_path):
    data = encode(Image.new("RGB", (100, 200), RED), "PNG")
    path = tmp_path / "tall.png"
    path.write_bytes(data)
    boxed = preprocess(data, SIZE, "letterbox")
    assert boxed.dtype == np.uint8 and boxed.shape == (64, 64, 3)
    assert close(boxed[32, 0], PAD_COLOUR, 0)
    assert np.array_equal(load_image_file(path, SIZE, "letterbox"), boxed)
    assert close(preprocess(data, SIZE)[32, 0], RED)  # the default stays squash

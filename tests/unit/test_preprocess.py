"""Decoding edge cases of lambda_function.preprocess: valid oddities become correct RGB, bad data a 4xx."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from lambda_function.errors import ServingError
from lambda_function.preprocess import decode_image, load_image_file, preprocess
from tests.fixtures.images import BLUE, GREEN, RED, WHITE, encode, raw_png, solid


def assert_close(pixel, expected, tol=6):
    assert np.max(np.abs(np.subtract(pixel, expected))) <= tol, f"{pixel} is not ~{expected}"


def decode_pixels(data: bytes) -> np.ndarray:
    image = decode_image(data)
    assert image.mode == "RGB"
    return np.asarray(image)


# ---------------------------------------------------------------- valid edge cases


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_allowed_formats_decode_to_the_right_colour(fmt):
    pixels = decode_pixels(solid(GREEN, fmt=fmt))
    assert_close(pixels[5, 5], GREEN)


def test_cmyk_jpeg_becomes_rgb():
    # No cyan, full magenta and yellow, no black: red.
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_close(decode_pixels(data)[8, 8], RED)


def test_16bit_grey_png_keeps_its_brightness():
    # A quarter of 16-bit full scale must become ~64, not white (what a naive 8-bit clip gives).
    data = encode(Image.fromarray(np.full((8, 8), 16384, np.uint16)), "PNG")
    assert_close(decode_pixels(data)[0, 0], (64, 64, 64), tol=1)


def test_16bit_rgb_png_keeps_its_colour():
    rows = [struct.pack(">HHH", 65535, 0, 32768) * 4] * 4
    assert_close(decode_pixels(raw_png(4, 4, 16, 2, rows))[2, 2], (255, 0, 128), tol=1)


def test_16bit_grey_png_with_transparent_key_goes_white():
    # Fixed in preprocess.py: a tRNS key on 16-bit grey used to be ignored.
    rows = [struct.pack(">HH", 0, 65535 // 2) * 2] * 4
    pixels = decode_pixels(raw_png(4, 4, 16, 0, rows, trns=struct.pack(">H", 0)))
    assert_close(pixels[0, 0], WHITE, tol=0)
    assert_close(pixels[0, 1], (127, 127, 127), tol=1)


@pytest.mark.parametrize(
    ("bit_depth_mode", "rows", "trns", "kept"),
    [
        ("L", [bytes([7, 200]) * 2] * 4, struct.pack(">H", 7), (200, 200, 200)),
        ("RGB", [bytes([10, 20, 30, 0, 0, 255]) * 2] * 4, struct.pack(">HHH", 10, 20, 30), BLUE),
    ],
    ids=["L", "RGB"],
)
def test_8bit_png_with_transparent_key_goes_white(bit_depth_mode, rows, trns, kept):
    # Fixed in preprocess.py: RGB and L images with a tRNS key came back with the key colour.
    color_type = {"L": 0, "RGB": 2}[bit_depth_mode]
    pixels = decode_pixels(raw_png(4, 4, 8, color_type, rows, trns=trns))
    assert_close(pixels[0, 0], WHITE, tol=0)
    assert_close(pixels[0, 1], kept, tol=0)


def test_rgba_png_is_composited_on_white():
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((7, 7), (255, 0, 0, 255))
    image.putpixel((0, 7), (0, 0, 255, 128))
    pixels = decode_pixels(encode(image, "PNG"))
    assert_close(pixels[0, 0], WHITE, tol=0)
    assert_close(pixels[7, 7], RED, tol=0)
    assert_close(pixels[7, 0], (127, 127, 255), tol=2)  # half blue over white


def test_la_png_is_composited_on_white():
    image = Image.new("LA", (4, 4), (0, 0))
    image.putpixel((3, 3), (0, 255))
    pixels = decode_pixels(encode(image, "PNG"))
    assert_close(pixels[0, 0], WHITE, tol=0)
    assert_close(pixels[3, 3], (0, 0, 0), tol=0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((7, 7), 1)
    pixels = decode_pixels(encode(image, fmt, transparency=0))
    assert_close(pixels[0, 0], WHITE, tol=0)  # index 0 (red) is the transparent one
    assert_close(pixels[7, 7], GREEN, tol=0)


def test_exif_orientation_6_is_applied():
    # Stored 20 wide x 10 high, left half red, right half blue. Orientation 6 = rotate 90 degrees
    # clockwise to display: the upright image is 10 wide x 20 high, red on top, blue at the bottom.
    image = Image.new("RGB", (20, 10), RED)
    image.paste(BLUE, (10, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = decode_pixels(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert pixels.shape == (20, 10, 3)
    assert_close(pixels[2, 5], RED, tol=12)
    assert_close(pixels[17, 5], BLUE, tol=12)


def test_one_pixel_image_is_resized():
    pixels = preprocess(solid(BLUE, size=(1, 1)), (32, 24))
    assert pixels.shape == (32, 24, 3)
    assert (pixels == BLUE).all()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_image_uses_its_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert_close(decode_pixels(data)[4, 4], RED, tol=0)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel_become_rgb(mode):
    pixels = decode_pixels(solid(255, size=(4, 4), mode=mode))
    assert_close(pixels[1, 1], WHITE, tol=0)


def test_preprocess_returns_a_writable_uint8_array_of_height_width():
    pixels = preprocess(solid(RED, size=(50, 20)), (30, 40))
    assert pixels.dtype == np.uint8
    assert pixels.shape == (30, 40, 3)
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    assert_close(pixels[15, 20], RED, tol=0)


def test_load_image_file_matches_preprocess(tmp_path):
    data = solid(GREEN, fmt="JPEG")
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_image_file(path, (16, 16)), preprocess(data, (16, 16)))


# ---------------------------------------------------------------- bad input


def expect_error(data: bytes, status: int, code: str, **kwargs) -> ServingError:
    with pytest.raises(ServingError) as info:
        decode_image(data, **kwargs)
    assert (info.value.status, info.value.code) == (status, code)
    return info.value


def test_empty_is_422():
    expect_error(b"", 422, "empty_image")


def test_random_bytes_are_415():
    expect_error(np.random.default_rng(0).bytes(2048), 415, "unsupported_media_type")


def test_html_is_415():
    expect_error(b"<!doctype html><html><body>Not found</body></html>", 415, "unsupported_media_type")


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO"])
def test_formats_outside_the_allow_list_are_415(fmt):
    expect_error(solid(RED, size=(16, 16), fmt=fmt), 415, "unsupported_media_type")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image_is_422(fmt):
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, fmt)
    expect_error(data[: len(data) // 2], 422, "invalid_image")


def test_jpeg_missing_only_its_last_bytes_is_422():
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, "JPEG")
    expect_error(data[:-10], 422, "invalid_image")


def test_png_header_claiming_30000x30000_is_422_without_decoding():
    # No pixel data at all: if the size check did not come first this would be an invalid_image.
    data = raw_png(30000, 30000, 8, 2, rows=None)
    expect_error(data, 422, "image_too_large")


def test_image_over_our_pixel_limit_is_422():
    error = expect_error(solid(RED, size=(20, 10)), 422, "image_too_large", max_pixels=199)
    assert "20x10" in error.message


def test_decompression_bomb_warning_is_an_error(monkeypatch):
    # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; we refuse either way.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expect_error(solid(RED, size=(12, 12)), 422, "image_too_large")  # 144 px: warning range
    expect_error(solid(RED, size=(20, 20)), 422, "image_too_large")  # 400 px: error range


def test_errors_carry_no_traceback_text():
    error = expect_error(b"\xff\xd8\xff\xe0garbage", 422, "invalid_image")
    assert "Traceback" not in error.message and 'File "' not in error.message

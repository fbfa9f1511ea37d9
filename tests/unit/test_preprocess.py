"""Decoding edge cases of lambda_function.preprocess: valid oddities become correct RGB, bad data a 4xx."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from lambda_function import preprocess as preprocess_module
from lambda_function.errors import ServingError
from lambda_function.image_budget import MAX_CONTAINER_PARTS, MAX_JPEG_MARKERS, MAX_JPEG_SCANS, jpeg_layout
from lambda_function.preprocess import decode_image, load_image_file, preprocess
from tests.fixtures.bombs import (
    exif_jpeg,
    gif_with_empty_extensions,
    grey16_png,
    jpeg_with_empty_comments,
    mpo_jpeg,
    png_with_empty_chunks,
    progressive_jpeg_bomb,
    webp_claiming,
)
from tests.fixtures.images import BLUE, GREEN, RED, WHITE, encode, png_chunk, raw_png, solid


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


# ---------------------------------------------------------------- hostile images (issue 12)


def test_jpeg_with_more_scans_than_the_cap_is_422_before_decoding():
    # 1 DC scan + MAX_JPEG_SCANS AC scans: one over. Refused from the markers, so the code is ours.
    error = expect_error(progressive_jpeg_bomb(64, 64, MAX_JPEG_SCANS), 422, "image_too_complex")
    assert str(MAX_JPEG_SCANS) in error.message


@pytest.mark.parametrize(("comments", "refused"), [(MAX_JPEG_MARKERS - 20, False), (MAX_JPEG_MARKERS, True)])
def test_jpeg_marker_segments_are_capped_before_pillow_parses_them(comments, refused):
    # Empty COM segments, 4 bytes each: a 10 MB file of them took seconds of Python-level parsing.
    data = jpeg_with_empty_comments(comments)
    if refused:
        expect_error(data, 422, "image_too_complex")
    else:
        assert_close(decode_pixels(data)[5, 5], BLUE)


@pytest.mark.parametrize(
    "build",
    [
        lambda n: png_with_empty_chunks(n),
        lambda n: png_with_empty_chunks(n, after_pixels=True),
        lambda n: gif_with_empty_extensions(n),
    ],
    ids=["png-before-idat", "png-after-idat", "gif-sub-blocks"],
)
def test_png_chunks_and_gif_blocks_are_capped_before_pillow_parses_them(build):
    # Pillow parses each in Python: 800k empty PNG chunks (9.6 MB) took 3 s of CPU.
    decode_pixels(build(MAX_CONTAINER_PARTS - 10))
    expect_error(build(MAX_CONTAINER_PARTS), 422, "image_too_complex")


def test_jpeg_with_scans_at_the_cap_decodes():
    pixels = decode_pixels(progressive_jpeg_bomb(64, 64, MAX_JPEG_SCANS - 1))
    assert pixels.shape == (64, 64, 3)


def test_scan_count_of_real_encoders():
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert jpeg_layout(encode(noise, "JPEG")).scans == 1
    assert jpeg_layout(encode(noise, "JPEG", restart_marker_blocks=1)).scans == 1  # RSTn belong to the scan
    progressive = jpeg_layout(encode(noise, "JPEG", progressive=True))
    assert (progressive.scans, progressive.progressive) == (10, True)


def test_scans_hidden_behind_garbage_between_segments_are_counted():
    # libjpeg skips bytes that are not a marker ("extraneous bytes"): the walk must skip them too.
    bomb = progressive_jpeg_bomb(16, 16, MAX_JPEG_SCANS)
    first_ac = bomb.index(b"\xff\xda\x00\x08\x01\x01\x00\x01\x3f")
    hidden = bomb[:first_ac] + b"garbage\x00\xff\x00" + bomb[first_ac:]
    assert jpeg_layout(hidden).scans == MAX_JPEG_SCANS + 1


def test_scan_walk_stops_at_the_first_end_of_image():
    bomb = progressive_jpeg_bomb(16, 16, 3)
    assert jpeg_layout(bomb + progressive_jpeg_bomb(16, 16, 200)).scans == 4


def test_progressive_coefficient_buffer_is_estimated_from_the_frame_header():
    layout = jpeg_layout(progressive_jpeg_bomb(7000, 7000, 1))
    assert (layout.width, layout.height, layout.sampling) == (7000, 7000, ((1, 1),))
    assert layout.coefficient_bytes() == 875 * 875 * 64 * 2


@pytest.mark.parametrize(
    "data",
    [raw_png(7071, 7071, 16, 0, None), raw_png(7071, 7071, 8, 6, None), webp_claiming(7071, 7071)],
    ids=["16-bit-grey-png", "rgba-png", "lossless-webp"],
)
def test_images_under_the_pixel_cap_but_over_the_decode_bytes_cap_are_422(data):
    # 7071 x 7071 < 50 Mpx, so only the decode-bytes estimate can refuse these. Headers only: had the
    # decoder started, the missing pixel data would have made it an invalid_image instead.
    error = expect_error(data, 422, "image_too_large")
    assert "MB" in error.message


def test_decode_bytes_cap_is_a_parameter():
    data = grey16_png(100, 100)
    decode_image(data, max_decode_bytes=100 * 100 * 8)
    expect_error(data, 422, "image_too_large", max_decode_bytes=100 * 100 * 6)


def test_16bit_grey_is_scaled_exactly_in_integers():
    # Every 16-bit value once: the result equals rint(v * 255 / 65535), what the float formula gave.
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    pixels = decode_pixels(encode(Image.fromarray(values), "PNG"))
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 0], expected)
    np.testing.assert_array_equal(pixels[..., 2], expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_band_by_band_conversion_matches_the_whole_image(monkeypatch, mode):
    rng = np.random.default_rng(4)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (23, 17), dtype=np.uint16))
        whole = np.rint(np.asarray(image, np.float64) * 255 / 65535).astype(np.uint8)
        whole = np.repeat(whole[..., None], 3, axis=2)
        data = encode(image, "PNG")
    else:
        rgba = Image.fromarray(rng.integers(0, 255, (23, 17, 4), dtype=np.uint8), "RGBA")
        image = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").quantize(16)
        params = {"transparency": 3} if mode == "P" else {}
        data = encode(image, "PNG", **params)
        reopened = Image.open(io.BytesIO(data)).convert("RGBA")
        canvas = Image.new("RGB", reopened.size, WHITE)
        canvas.paste(reopened, mask=reopened.getchannel("A"))
        whole = np.asarray(canvas)
    monkeypatch.setattr(preprocess_module, "BAND_PIXELS", 40)  # 2 rows a band
    np.testing.assert_array_equal(decode_pixels(data), whole)


def test_mpo_is_decoded_as_its_first_jpeg_frame_with_draft():
    data = mpo_jpeg((2400, 2400))
    assert Image.open(io.BytesIO(data), formats=["JPEG"]).format == "MPO"
    image = decode_image(data)
    assert image.size == (1200, 1200)  # draft() decoded it at half scale, as for any JPEG
    assert_close(np.asarray(image)[600, 600], RED, tol=8)  # the first frame, not the blue second one


@pytest.mark.parametrize(
    "extra",
    [
        {0x0128: (2, b"2\x00")},  # ResolutionUnit as ASCII: Pillow's EXIF writer raises struct.error
        {0x010F: (5, struct.pack("<II", 1, 1))},  # Make as RATIONAL: AttributeError
        {0x9286: (7, b"\xff" * 40)},  # UserComment of raw bytes
    ],
    ids=["resolution-unit-ascii", "make-rational", "user-comment-bytes"],
)
def test_mistyped_exif_tags_do_not_stop_orientation(extra):
    pixels = decode_pixels(exif_jpeg(6, extra))
    assert pixels.shape == (20, 10, 3)
    assert_close(pixels[2, 5], RED, tol=12)
    assert_close(pixels[17, 5], BLUE, tol=12)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillows_exif_transpose(orientation):
    # Our own reader replaced ImageOps.exif_transpose: on well-formed EXIF the pixels are the same.
    data = exif_jpeg(orientation, size=(24, 16))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    np.testing.assert_array_equal(decode_pixels(data), np.asarray(expected))


def test_orientation_from_imagemagicks_png_text_profile():
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    text = f"\nexif\n{len(raw):8d}\n{raw.hex()}\n"
    image = Image.new("RGB", (20, 10), RED)
    image.paste(BLUE, (10, 0, 20, 10))
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text, zip=True)
    pixels = decode_pixels(encode(image, "PNG", pnginfo=info))
    assert pixels.shape == (20, 10, 3)
    assert_close(pixels[2, 5], RED, tol=0)


@pytest.mark.parametrize(
    "tag",
    [(2, b"6\x00"), (5, struct.pack("<II", 6, 1)), (3, struct.pack("<H", 9)), (3, struct.pack("<H", 0))],
    ids=["ascii", "rational", "nine", "zero"],
)
def test_malformed_orientation_is_ignored(tag):
    pixels = decode_pixels(exif_jpeg(1, {0x0112: tag}))
    assert pixels.shape == (10, 20, 3)


def test_pillow_internal_text_never_reaches_the_client():
    # A zTXt chunk inflating past Pillow's MAX_TEXT_CHUNK: Pillow's message names that constant.
    text = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"x" * (2 * 1024 * 1024)))
    png = raw_png(4, 4, 8, 2, [b"\x00" * 12] * 4)
    error = expect_error(png[:33] + text + png[33:], 422, "invalid_image")
    assert "PngImagePlugin" not in error.message and "MAX_TEXT_CHUNK" not in error.message


def test_unexpected_decoder_error_is_a_logged_422(monkeypatch):
    def broken(image):
        raise KeyError("bad operand type for abs(): 'str'")

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("lambda_function.preprocess")
    log.addHandler(handler)
    monkeypatch.setattr(preprocess_module, "_to_rgb", broken)
    try:
        error = expect_error(solid(RED), 422, "invalid_image")
    finally:
        log.removeHandler(handler)
    assert "abs()" not in error.message
    assert [r.error_type for r in records] == ["KeyError"]


def test_next_decode_works_after_each_bomb():
    for data in (progressive_jpeg_bomb(64, 64, 200), raw_png(7071, 7071, 16, 0, None), b"\xff\xd8\xff"):
        with pytest.raises(ServingError):
            decode_image(data)
        assert_close(decode_pixels(solid(GREEN))[0, 0], GREEN)

"""Image bytes -> RGB pixel array of the model's input size. The single source of truth for pixels.

Serving (handler, CLI) and training (``train.data``) both call :func:`preprocess`, so the model is
trained on exactly the pixels it will be served. Only numpy and Pillow: this module ships to Lambda.

The array returned is ``uint8`` of shape ``(height, width, 3)`` holding RGB values 0-255; scaling to the
network's range happens inside the model, so no caller repeats it.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

from lambda_function.errors import ServingError
from lambda_function.image_budget import (
    MAX_CONTAINER_PARTS,
    MAX_DECODE_BYTES,
    MAX_JPEG_MARKERS,
    MAX_JPEG_SCANS,
    JpegLayout,
    container_parts,
    decode_bytes,
    jpeg_layout,
)

# Formats we decode; Pillow is never asked to try any other plugin (smaller attack surface).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# Largest image we agree to decode (width * height). 50 Mpx covers every phone camera; a PNG header
# claiming 30000x30000 is refused before any pixel is decoded.
MAX_PIXELS = 50_000_000
# One interpolation for training and serving. Pillow's BILINEAR also antialiases when shrinking.
RESAMPLE = Image.Resampling.BILINEAR
# Transparent pixels are composited on white, like a product photo on a page.
BACKGROUND = (255, 255, 255)

# Conversions of large images go this many pixels at a time, so no full-size temporary is made.
BAND_PIXELS = 1 << 18
# EXIF orientation -> the transpose that makes the image upright (what ImageOps.exif_transpose does).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
EXIF_ORIENTATION = 0x0112
XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
GREY16_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

# A truncated file is an error, never an image with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False

logger = logging.getLogger(__name__)


def decode_image(
    data: bytes, max_pixels: int = MAX_PIXELS, max_decode_bytes: int = MAX_DECODE_BYTES
) -> Image.Image:
    """Decode ``data`` to an upright RGB image, or raise ServingError (415 or 422).

    The cost is bounded before any pixel is decoded (see :mod:`lambda_function.image_budget`): JPEG
    scans and marker segments, PNG chunks and GIF blocks (422 ``image_too_complex``), pixels
    (``max_pixels``) and the peak bytes of the arrays decoding and conversion need
    (``max_decode_bytes``; both 422 ``image_too_large``). Any other decoder failure is a 422
    ``invalid_image`` whose message is ours, never Pillow's.
    """
    if not data:
        raise ServingError(422, "empty_image", "The image is empty (0 bytes).")
    try:
        # Before Pillow parses it: Pillow's own header loops are as slow per segment as ours.
        layout = _check_jpeg_layout(data) if data[:2] == b"\xff\xd8" else None
        if container_parts(data) > MAX_CONTAINER_PARTS:
            raise ServingError(
                422,
                "image_too_complex",
                f"The image has more than {MAX_CONTAINER_PARTS} chunks or blocks; real ones have far fewer.",
            )
        with warnings.catch_warnings():
            # Pillow only warns for images a little over its own limit; for us that is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            fmt = _opened_format(image)
            width, height = image.size
            if width * height > max_pixels:
                raise ServingError(
                    422,
                    "image_too_large",
                    f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels.",
                )
            coefficient_bytes = 0
            if fmt == "JPEG":
                coefficient_bytes = layout.coefficient_bytes() if layout else 0
                # Let libjpeg decode at a reduced scale when the photo is much larger than we need:
                # faster and far less memory, and identical for training and serving.
                image.draft(None, (1024, 1024))
            orientation = _exif_orientation(image)
            _check_decode_bytes(image, fmt, orientation, coefficient_bytes, max_decode_bytes)
            image.seek(0)  # first frame of an animated GIF / WebP
            image.load()
            if orientation == 1:
                # A PNG's eXIf chunk may come after the pixels: only now is it known.
                orientation = _exif_orientation(image)
                _check_decode_bytes(image, fmt, orientation, 0, max_decode_bytes)
            image = _to_rgb(image)
            return _apply_orientation(image, orientation)
    except ServingError:
        raise
    except Image.UnidentifiedImageError:
        raise _unsupported() from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServingError(
            422, "image_too_large", "The image declares too many pixels to decode safely."
        ) from None
    except MemoryError:
        raise ServingError(422, "image_too_large", "The image needs too much memory to decode.") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
        # Pillow signals truncated or corrupt data with any of these. Its messages name its own
        # internals (plugin constants, Python operators), so the client gets a sentence of ours.
        raise _undecodable() from None
    except Exception as exc:
        # A decoder bug or a case Pillow does not expect: still the image's fault, never a 500.
        logger.warning(
            "unexpected image decoder error", extra={"error_type": type(exc).__name__, "detail": str(exc)}
        )
        raise _undecodable() from None


def _unsupported() -> ServingError:
    allowed = ", ".join(ALLOWED_FORMATS)
    return ServingError(
        415, "unsupported_media_type", f"The data is not an image of an allowed type ({allowed})."
    )


def _undecodable() -> ServingError:
    return ServingError(422, "invalid_image", "The image could not be decoded: it is corrupt or truncated.")


def _opened_format(image: Image.Image) -> str:
    """The allowed format Pillow actually opened, checked on the object rather than the request.

    Pillow's JPEG opener returns an MPO (a JPEG followed by more JPEGs, indexed by an MPF segment:
    phone HDR gain maps, stereo pairs) when it sees that index. We decode it as the JPEG it starts
    with: its first frame only, with draft(), scans counted; the other frames are never decoded.
    """
    if isinstance(image, JpegImagePlugin.JpegImageFile):
        return "JPEG"
    if image.format not in ALLOWED_FORMATS:
        raise _unsupported()
    return image.format


def _check_jpeg_layout(data: bytes) -> JpegLayout:
    """Refuse a JPEG with more scans or marker segments than a photo has, before decoding it."""
    layout = jpeg_layout(data, MAX_JPEG_SCANS, MAX_JPEG_MARKERS)
    if layout.scans > MAX_JPEG_SCANS:
        raise ServingError(
            422,
            "image_too_complex",
            f"The JPEG has more than {MAX_JPEG_SCANS} scans; real photos have at most a few dozen.",
        )
    if layout.markers > MAX_JPEG_MARKERS:
        raise ServingError(
            422,
            "image_too_complex",
            f"The JPEG has more than {MAX_JPEG_MARKERS} marker segments; real photos have a few dozen.",
        )
    return layout


def _check_decode_bytes(
    image: Image.Image, fmt: str, orientation: int, coefficient_bytes: int, max_decode_bytes: int
) -> None:
    needed = decode_bytes(
        fmt,
        image.mode,
        image.size,  # after draft(): the size libjpeg will actually produce
        alpha=_has_alpha(image),
        rotated=orientation in ORIENTATION_TRANSPOSE,
        coefficient_bytes=coefficient_bytes,
    )
    if needed > max_decode_bytes:
        width, height = image.size
        raise ServingError(
            422,
            "image_too_large",
            f"Decoding this {width}x{height} {fmt} image would need about {needed >> 20} MB; "
            f"the limit is {max_decode_bytes >> 20} MB.",
        )


def _exif_orientation(image: Image.Image) -> int:
    """EXIF Orientation 1-8, or 1 for none or anything malformed; never loads pixels, never raises.

    ImageOps.exif_transpose also rewrites the EXIF block, which raises on any mistyped tag
    (ResolutionUnit as ASCII, Make as RATIONAL): browsers show such photos, so we only read one tag.
    """
    value = None
    raw = image.info.get("exif")
    if raw is None and "Raw profile type exif" in image.info:
        # ImageMagick's PNG text chunk, hex after three header lines (Pillow's getexif reads it too).
        try:
            raw = bytes.fromhex("".join(str(image.info["Raw profile type exif"]).split("\n")[3:]))
        except ValueError:
            return 1
    if raw:
        try:
            exif = Image.Exif()
            exif.load(raw if isinstance(raw, bytes) else bytes(raw))
            value = exif.get(EXIF_ORIENTATION)
        except Exception:
            return 1
    if value is None:
        # Like Pillow's getexif(): an XMP tiff:Orientation counts when EXIF has none.
        xmp = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
        found = XMP_ORIENTATION.search(xmp if isinstance(xmp, bytes) else str(xmp).encode("utf-8", "replace"))
        value = int(found[2]) if found else 1
    return value if isinstance(value, int) and value in ORIENTATION_TRANSPOSE else 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    method = ORIENTATION_TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


def _has_alpha(image: Image.Image) -> bool:
    # A PNG tRNS chunk (or a GIF's transparent index) makes one colour transparent without an alpha band.
    keyed = image.info.get("transparency") is not None and image.mode in ("P", "L", "RGB", "1")
    return keyed or image.mode in ALPHA_MODES


def _row_bands(image: Image.Image):
    """(top, bottom) row ranges of about BAND_PIXELS pixels each, covering the image."""
    width, height = image.size
    rows = max(1, BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(height, top + rows)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and not _has_alpha(image):
        return image
    if mode in GREY16_MODES:
        return _grey16_to_rgb(image)
    if _has_alpha(image):
        return _composite_on_white(image)
    # CMYK (Pillow undoes Adobe's inverted CMYK), palette, L, 1, YCbCr, LAB...
    return image.convert("RGB")


def _grey16_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit) greyscale -> RGB, scaled to 0-255; a tRNS key becomes the white background.

    Pillow's convert("L") would clip at 255 and turn most pixels white. Done a band of rows at a time
    in integers: round(v * 255 / 65535) == (v + 128) // 257 exactly (v / 257 is never a half).
    """
    width, height = image.size
    high = image.getextrema()[1]
    full_scale = image.mode.startswith("I;16") or high > 255
    transparent = image.info.get("transparency")
    grey = np.empty((height, width), np.uint8)
    for top, bottom in _row_bands(image):
        band = np.asarray(image.crop((0, top, width, bottom)))
        if band.dtype.kind == "f":  # mode F: float32, rounded like the integers below
            scale = 255.0 / 65535.0 if full_scale else 1.0
            values = np.rint(np.clip(band, 0, 65535 if full_scale else 255) * np.float32(scale))
        else:
            values = np.clip(band, 0, 65535 if full_scale else 255).astype(np.uint32)  # I;16 or I
            if full_scale:
                values = (values + 128) // 257
        grey[top:bottom] = values.astype(np.uint8)
        if isinstance(transparent, int):
            grey[top:bottom][band == transparent] = BACKGROUND[0]  # white: the same in grey and RGB
    return Image.fromarray(grey).convert("RGB")  # 2-D uint8: mode L


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Alpha (or a transparent key) composited on BACKGROUND, a band at a time: no full-size RGBA copy."""
    canvas = Image.new("RGB", image.size, BACKGROUND)
    width = image.size[0]
    for top, bottom in _row_bands(image):
        box = (0, top, width, bottom)
        band = image.crop(box)  # keeps the palette and the transparency key
        if band.mode != "RGBA":
            band = band.convert("RGBA")
        canvas.paste(band, box, mask=band)  # an RGBA mask means "use its alpha band"
    return canvas


# How a photo of any shape becomes the model's (usually square) input. The mode a model was trained
# with is recorded in its sidecar ("input": {"resize": ...}) and served the same way.
#   squash:    stretch to the input size, ignoring aspect ratio (Keras's load_img; every model trained
#              before the sidecar named a mode was trained so, hence the default).
#   letterbox: shrink to fit inside, keeping proportions, and pad the rest with PAD_COLOUR.
#   crop:      shrink until the shorter side fits, keeping proportions, and cut the centre out.
RESIZE_MODES = ("squash", "letterbox", "crop")
DEFAULT_RESIZE = "squash"
# Letterbox padding is mid-grey, not white or black: the model scales pixels with x / 127.5 - 1, so 128
# becomes ~0, the value Xception's own zero padding shows its filters at every border; white or black
# would be a strong edge, and repeating the edge pixels would stretch the garment's outline.
PAD_COLOUR = (128, 128, 128)


def check_resize_mode(mode: str) -> str:
    """``mode`` if it is one of RESIZE_MODES, else ValueError naming the choices."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return mode


def resize_image(image: Image.Image, size: tuple[int, int], mode: str = DEFAULT_RESIZE) -> Image.Image:
    """Resize to ``size`` = (height, width) by ``mode`` (see RESIZE_MODES)."""
    height, width = size
    check_resize_mode(mode)
    if image.size == (width, height):
        return image
    if mode == "squash":
        return image.resize((width, height), RESAMPLE)
    src_w, src_h = image.size
    if mode == "crop":
        # The largest centred box of the target's proportions, resized in one step (box= avoids a copy).
        scale = max(width / src_w, height / src_h)
        box_w, box_h = width / scale, height / scale
        left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
        return image.resize((width, height), RESAMPLE, box=(left, top, left + box_w, top + box_h))
    scale = min(width / src_w, height / src_h)
    fit_w = min(width, max(1, round(src_w * scale)))
    fit_h = min(height, max(1, round(src_h * scale)))
    canvas = Image.new("RGB", (width, height), PAD_COLOUR)
    canvas.paste(image.resize((fit_w, fit_h), RESAMPLE), ((width - fit_w) // 2, (height - fit_h) // 2))
    return canvas


def preprocess(data: bytes, size: tuple[int, int], resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """Bytes of an image file -> ``uint8`` array ``(height, width, 3)``, RGB, 0-255."""
    image = resize_image(decode_image(data), size, resize)
    return np.asarray(image, dtype=np.uint8).copy()


def load_image_file(path: str | Path, size: tuple[int, int], resize: str = DEFAULT_RESIZE) -> np.ndarray:
    """:func:`preprocess` for a file on disk (the training data loader uses this)."""
    return preprocess(Path(path).read_bytes(), size, resize)

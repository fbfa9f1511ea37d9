"""Image bytes -> RGB pixel array of the model's input size. The single source of truth for pixels.

Serving (handler, CLI) and training (``train.data``) both call :func:`preprocess`, so the model is
trained on exactly the pixels it will be served. Only numpy and Pillow: this module ships to Lambda.

The array returned is ``uint8`` of shape ``(height, width, 3)`` holding RGB values 0-255; scaling to the
network's range happens inside the model, so no caller repeats it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from lambda_function.errors import ServingError

# Formats we decode; Pillow is never asked to try any other plugin (smaller attack surface).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# Largest image we agree to decode (width * height). 50 Mpx covers every phone camera; a PNG header
# claiming 30000x30000 is refused before any pixel is decoded.
MAX_PIXELS = 50_000_000
# One interpolation for training and serving. Pillow's BILINEAR also antialiases when shrinking.
RESAMPLE = Image.Resampling.BILINEAR
# Transparent pixels are composited on white, like a product photo on a page.
BACKGROUND = (255, 255, 255)

# A truncated file is an error, never an image with a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``data`` to an upright RGB image, or raise ServingError (415 or 422)."""
    if not data:
        raise ServingError(422, "empty_image", "The image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            # Pillow only warns for images a little over its own limit; for us that is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ServingError(
                    422,
                    "image_too_large",
                    f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels.",
                )
            if image.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the photo is much larger than we need:
                # faster and far less memory, and identical for training and serving.
                image.draft(None, (1024, 1024))
            image.seek(0)  # first frame of an animated GIF / WebP
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ServingError:
        raise
    except Image.UnidentifiedImageError:
        allowed = ", ".join(ALLOWED_FORMATS)
        raise ServingError(
            415, "unsupported_media_type", f"The data is not an image of an allowed type ({allowed})."
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServingError(
            422, "image_too_large", "The image declares too many pixels to decode safely."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow signals truncated or corrupt data with any of these.
        raise ServingError(422, "invalid_image", f"The image could not be decoded: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    # A PNG tRNS chunk (or a GIF's transparent index) makes one colour transparent without an alpha band.
    keyed = image.info.get("transparency") is not None and mode in ("P", "L", "RGB", "1")
    if mode == "RGB" and not keyed:
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit greyscale: Pillow's convert("L") would clip at 255 and turn most pixels white.
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if pixels.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        grey = np.clip(np.rint(pixels * (255.0 / peak)), 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):
            rgb[pixels == transparent] = BACKGROUND
        return Image.fromarray(rgb)
    has_alpha = keyed or mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    # CMYK (Pillow undoes Adobe's inverted CMYK), palette, L, 1, YCbCr, LAB...
    return image.convert("RGB")


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

"""Training-time image views: flips, random shear / zoom or "photo" views of uint8 RGB arrays (numpy, Pillow).

The frozen base runs once per view and its features are cached, so a "view" here is a fixed, seeded
copy of the training image, not a fresh random draw per epoch.

Out-of-image pixels are filled by extending the edge pixels (Keras ImageDataGenerator's default
``fill_mode="nearest"``, which the seed recipe used): product photos have plain backgrounds, so the edge
colour continues the background, whereas a constant white or black fill would add artificial borders
that never occur at serving time.

Two styles of random view (``TrainConfig.view_style``): ``affine`` is the seed recipe's shear and zoom;
``photo`` imitates another person's photo of the same garment (issue 10): a random resized crop (framing),
a small rotation (a phone held askew), and colour and lighting jitter (another room, another camera's
white balance), each drawn independently, plus a 50% mirror.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SHEAR_DEG = 10.0  # the seed's shear_range=10 (degrees)
ZOOM = 0.1  # the seed's zoom_range=0.1: scale drawn from [1 - ZOOM, 1 + ZOOM] per axis
RESAMPLE = Image.Resampling.BILINEAR
VIEW_STYLES = ("affine", "photo")
# "photo" view ranges (torchvision's RandomResizedCrop / ColorJitter vocabulary). The crop keeps at least
# half the area, so the garment, which fills most of these photos, stays mostly in view.
CROP_AREA = (0.5, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
ROTATE_DEG = 10.0
BRIGHTNESS = 0.25  # factor drawn from [1 - b, 1 + b]
CONTRAST = 0.25
SATURATION = 0.3
WHITE_BALANCE = 0.08  # per-channel gain drawn from [1 - w, 1 + w]


def hflip(arr: np.ndarray) -> np.ndarray:
    """Mirror an (H, W, C) image left-right."""
    return np.ascontiguousarray(arr[:, ::-1])


def _affine(arr: np.ndarray, matrix: np.ndarray, shift=(0.0, 0.0)) -> np.ndarray:
    """Resample ``arr`` so that output pixel p (about the centre) shows input pixel
    centre + shift + matrix @ p (``shift``: x, y in pixels)."""
    height, width = arr.shape[:2]
    centre = np.array([width / 2.0, height / 2.0])
    shift = np.asarray(shift, dtype=np.float64)
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64) - centre
    reach = np.abs(corners @ matrix.T + shift).max(axis=0)  # how far outside the image sources can go
    pad = int(math.ceil(max(reach[0] - width / 2.0, reach[1] - height / 2.0, 0.0))) + 2
    # Edge padding first, so every source pixel exists: this is the "nearest" fill.
    padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    offset = centre + pad + shift - matrix @ centre
    (a, b), (d, e) = matrix
    data = (a, b, offset[0], d, e, offset[1])
    image = Image.fromarray(padded).transform((width, height), Image.Transform.AFFINE, data, RESAMPLE)
    return np.asarray(image, dtype=np.uint8).copy()


def random_affine(
    arr: np.ndarray,
    rng: np.random.Generator,
    shear_deg: float = SHEAR_DEG,
    zoom: float = ZOOM,
    flip: bool = True,
) -> np.ndarray:
    """A random shear (+-shear_deg), per-axis zoom (1 +- zoom) and, if ``flip``, a 50% left-right flip."""
    shear = math.radians(rng.uniform(-shear_deg, shear_deg))
    zx, zy = rng.uniform(1.0 - zoom, 1.0 + zoom, size=2)
    do_flip = flip and rng.random() < 0.5
    # Keras's shear matrix [[1, -sin], [0, cos]] times per-axis zoom; >1 shows more of the image.
    matrix = np.array([[1.0, -math.sin(shear)], [0.0, math.cos(shear)]]) @ np.diag([zx, zy])
    out = _affine(arr, matrix)
    return hflip(out) if do_flip else out


def random_framing(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random resized crop (CROP_AREA of the area, CROP_ASPECT) turned by up to ROTATE_DEG, at full size.

    One affine resample does both, so the photo is interpolated once; corners that the rotation brings
    in from outside the photo get the edge fill, as in random_affine.
    """
    height, width = arr.shape[:2]
    area = rng.uniform(*CROP_AREA)
    aspect = math.exp(rng.uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    scale_x = min(math.sqrt(area * aspect), 1.0)  # crop width / image width
    scale_y = min(math.sqrt(area / aspect), 1.0)
    shift = (
        rng.uniform(-1.0, 1.0) * (1.0 - scale_x) * width / 2.0,  # anywhere the crop still fits
        rng.uniform(-1.0, 1.0) * (1.0 - scale_y) * height / 2.0,
    )
    angle = math.radians(rng.uniform(-ROTATE_DEG, ROTATE_DEG))
    rotate = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return _affine(arr, rotate @ np.diag([scale_x, scale_y]), shift)


def jitter_colour(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and per-channel gain (white balance), clipped to uint8."""
    x = arr.astype(np.float32)
    x *= rng.uniform(1.0 - WHITE_BALANCE, 1.0 + WHITE_BALANCE, size=3).astype(np.float32)
    x *= np.float32(rng.uniform(1.0 - BRIGHTNESS, 1.0 + BRIGHTNESS))
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
    mean = np.float32((x @ luma).mean())
    x = mean + (x - mean) * np.float32(rng.uniform(1.0 - CONTRAST, 1.0 + CONTRAST))
    grey = x @ luma  # saturation mixes each pixel with its own grey, after the contrast change
    x = grey[..., None] + (x - grey[..., None]) * np.float32(rng.uniform(1.0 - SATURATION, 1.0 + SATURATION))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_photo(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another person's photo of the same garment, roughly: framing, colour, and a 50% mirror."""
    do_flip = rng.random() < 0.5
    out = jitter_colour(random_framing(arr, rng), rng)
    return hflip(out) if do_flip else out


def make_view(
    arr: np.ndarray,
    view: int,
    rng: np.random.Generator,
    shear_deg: float = SHEAR_DEG,
    zoom: float = ZOOM,
    style: str = "affine",
) -> np.ndarray:
    """View ``view`` of one image: 0 = itself, 1 = its mirror, 2.. = random draws from ``rng`` in
    ``style`` (random_affine or random_photo)."""
    if view == 0:
        return arr
    if view == 1:
        return hflip(arr)
    if style == "photo":
        return random_photo(arr, rng)
    if style != "affine":
        raise ValueError(f"view style must be one of {VIEW_STYLES}, got {style!r}")
    return random_affine(arr, rng, shear_deg=shear_deg, zoom=zoom)


def make_views(arr: np.ndarray, n_views: int, rng: np.random.Generator, **kwargs) -> list[np.ndarray]:
    """The first ``n_views`` views of one image (see make_view)."""
    return [make_view(arr, v, rng, **kwargs) for v in range(n_views)]


def view_rng(seed: int, view: int) -> np.random.Generator:
    """The generator for one whole view of a split: the same seed and view always give the same images."""
    return np.random.default_rng([seed, view])

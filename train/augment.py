"""Training-time image views: flips and random shear / zoom, on uint8 RGB arrays (numpy + Pillow only).

The frozen base runs once per view and its features are cached, so a "view" here is a fixed, seeded
copy of the training image, not a fresh random draw per epoch.

Out-of-image pixels are filled by extending the edge pixels (Keras ImageDataGenerator's default
``fill_mode="nearest"``, which the seed recipe used): product photos have plain backgrounds, so the edge
colour continues the background, whereas a constant white or black fill would add artificial borders
that never occur at serving time.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

SHEAR_DEG = 10.0  # the seed's shear_range=10 (degrees)
ZOOM = 0.1  # the seed's zoom_range=0.1: scale drawn from [1 - ZOOM, 1 + ZOOM] per axis
RESAMPLE = Image.Resampling.BILINEAR


def hflip(arr: np.ndarray) -> np.ndarray:
    """Mirror an (H, W, C) image left-right."""
    return np.ascontiguousarray(arr[:, ::-1])


def _affine(arr: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Resample ``arr`` so that output pixel p (about the centre) shows input pixel centre + matrix @ p."""
    height, width = arr.shape[:2]
    centre = np.array([width / 2.0, height / 2.0])
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64) - centre
    reach = np.abs(corners @ matrix.T).max(axis=0)  # how far outside the image the sources can go
    pad = int(math.ceil(max(reach[0] - width / 2.0, reach[1] - height / 2.0, 0.0))) + 2
    # Edge padding first, so every source pixel exists: this is the "nearest" fill.
    padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    offset = centre + pad - matrix @ centre
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


def make_view(
    arr: np.ndarray,
    view: int,
    rng: np.random.Generator,
    shear_deg: float = SHEAR_DEG,
    zoom: float = ZOOM,
) -> np.ndarray:
    """View ``view`` of one image: 0 = itself, 1 = its mirror, 2.. = random_affine draws from ``rng``."""
    if view == 0:
        return arr
    if view == 1:
        return hflip(arr)
    return random_affine(arr, rng, shear_deg=shear_deg, zoom=zoom)


def make_views(arr: np.ndarray, n_views: int, rng: np.random.Generator, **kwargs) -> list[np.ndarray]:
    """The first ``n_views`` views of one image (see make_view)."""
    return [make_view(arr, v, rng, **kwargs) for v in range(n_views)]


def view_rng(seed: int, view: int) -> np.random.Generator:
    """The generator for one whole view of a split: the same seed and view always give the same images."""
    return np.random.default_rng([seed, view])

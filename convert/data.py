"""Images for calibration and validation, always through the serving preprocessing.

``DATA_DIR/<split>/<class>/*.jpg``. Every pixel goes through
``lambda_function.preprocess.load_image_file``, so calibration sees exactly what the Lambda will see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.errors import DataError
from lambda_function.preprocess import DEFAULT_RESIZE
from train import data as dataset
from train.errors import DataError as DatasetError

CALIBRATION_SPLIT = "train"
SEED = 42


@dataclass(frozen=True)
class ImageSet:
    pixels: np.ndarray  # uint8 (N, H, W, 3)
    targets: np.ndarray  # int64 (N,), index into labels; -1 when unknown
    paths: list[str]
    resize: str = DEFAULT_RESIZE  # how the photos were made square (lambda_function.preprocess)

    def __len__(self) -> int:
        return len(self.paths)

    def key(self) -> str:
        """Identity of the image list (for the Keras reference cache)."""
        digest = hashlib.sha256()
        for path in self.paths:
            digest.update(path.encode() + b"\0")
        digest.update(str(self.pixels.shape).encode())
        if self.resize != DEFAULT_RESIZE:  # only then, so caches from before resize modes stay valid
            digest.update(self.resize.encode())
        return digest.hexdigest()


def list_split(data_dir: str | Path, split: str, labels: list[str]) -> list[tuple[Path, int]]:
    """(path, class index) for every image of ``split``, sorted; every class folder must be in ``labels``.

    The listing is training's (train/data.py: hidden files skipped, empty classes refused).
    """
    try:
        paths, targets = dataset.list_split(data_dir, split, labels, subset=True, reference="labels.json")
    except DatasetError as exc:
        raise DataError(str(exc)) from None
    if not paths:
        raise DataError(f"No images under {Path(data_dir) / split}")
    return list(zip(paths, targets.tolist(), strict=True))


def has_split(data_dir: str | Path | None, split: str) -> bool:
    return data_dir is not None and (Path(data_dir) / split).is_dir()


def stratified_sample(
    items: list[tuple[Path, int]], n: int | None, seed: int = SEED
) -> list[tuple[Path, int]]:
    """Up to ``n`` items, classes interleaved so that a small ``n`` still covers every class."""
    if n is None or n >= len(items):
        return items
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[Path, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    queues = []
    for cls in sorted(by_class):
        members = by_class[cls]
        queues.append([members[i] for i in rng.permutation(len(members))])
    picked: list[tuple[Path, int]] = []
    depth = 0
    while len(picked) < n:
        for queue in queues:
            if depth < len(queue) and len(picked) < n:
                picked.append(queue[depth])
        depth += 1
    return sorted(picked, key=lambda item: (item[1], str(item[0])))


def load_images(
    items: list[tuple[Path, int]], size: tuple[int, int], desc: str = "images", resize: str = DEFAULT_RESIZE
) -> ImageSet:
    """Decode ``items`` as training does: unreadable images are skipped and named, above 5% it stops."""
    try:
        pixels, kept, _ = dataset.load_split([path for path, _ in items], size, desc=desc, resize=resize)
    except DatasetError as exc:
        raise DataError(str(exc)) from None
    targets = np.array([items[i][1] for i in kept], dtype=np.int64)
    return ImageSet(pixels, targets, [str(items[i][0]) for i in kept], resize)


def load_split(
    data_dir: str | Path,
    split: str,
    labels: list[str],
    size: tuple[int, int],
    limit: int | None = None,
    resize: str = DEFAULT_RESIZE,
) -> ImageSet:
    items = stratified_sample(list_split(data_dir, split, labels), limit)
    return load_images(items, size, desc=f"{split} images", resize=resize)


def synthetic_images(n: int, size: tuple[int, int], seed: int = SEED) -> ImageSet:
    """Smooth random images for validation when no data directory is given (shape check only)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 8, 8, 3))
    # Blocky upsampling: smooth content activates a CNN more like a photo than white noise does.
    up_h, up_w = -(-size[0] // 8), -(-size[1] // 8)
    pixels = coarse.repeat(up_h, axis=1).repeat(up_w, axis=2)[:, : size[0], : size[1]]
    return ImageSet(
        pixels.astype(np.uint8), np.full(n, -1, dtype=np.int64), [f"synthetic:{i}" for i in range(n)]
    )


def calibration_batches(images: ImageSet, flips: bool = True):
    """A representative-dataset generator: ``[batch]`` per image (+ its mirror), batch float32 (1, H, W, 3).

    TFLite wants a list of input arrays per step; the ONNX reader unwraps it.
    """

    def generate():
        for pixels in images.pixels:
            batch = pixels[None].astype(np.float32)
            yield [batch]
            if flips:
                # Training used horizontal flips; mirrored shots widen the activation ranges seen.
                yield [batch[:, :, ::-1, :].copy()]

    return generate

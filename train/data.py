"""Find the dataset on disk and load its pixels with the serving code's preprocessing.

Layout: ``DIR/{train,validation,test}/<class>/<image>``. Class names are the sorted folder names of
``train``; the other splits must have exactly the same folders. :func:`list_split` is the one listing of
this layout (conversion and the model card use it too). Only numpy and Pillow at import (tqdm when
loading), so the model card can list a split with the runtime requirements alone.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lambda_function.errors import ServingError
from lambda_function.preprocess import DEFAULT_RESIZE, load_image_file
from train.errors import DataError

SPLITS = ("train", "validation", "test")
# Optional table next to a LABEL/IMAGE folder (clothing-dataset-extra has one): image, label, kids, sender_id.
IMAGE_TABLE = "images.csv"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
# Above this share of undecodable files in a split, something is wrong with the data, not one file.
MAX_UNREADABLE_FRACTION = 0.05


@dataclass
class Split:
    name: str
    paths: list[Path]
    labels: np.ndarray  # int class index per path

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    root: Path
    class_names: list[str]
    splits: dict[str, Split] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "classes": self.class_names,
            "counts": {
                name: {c: int((s.labels == i).sum()) for i, c in enumerate(self.class_names)}
                for name, s in self.splits.items()
            },
        }


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_split(
    data_dir: str | Path,
    split: str,
    class_names: list[str],
    *,
    limit_per_class: int | None = None,
    subset: bool = False,
    reference: str = "train's",
) -> tuple[list[Path], np.ndarray]:
    """Every image of ``DATA_DIR/split/<class>/`` in ``class_names`` order, and its class index.

    Hidden files and folders are skipped; a class folder without images is an error. The split's class
    folders must be exactly ``class_names``, or with ``subset`` any of them (a model's labels may name a
    class that a small split lacks); ``reference`` names where ``class_names`` came from in messages.
    """
    split_dir = Path(data_dir) / split
    if not split_dir.is_dir():
        raise DataError(f"Split folder not found: {split_dir}")
    found = _class_dirs(split_dir)
    extra = sorted(set(found) - set(class_names))
    lacking = [] if subset else sorted(set(class_names) - set(found))
    if extra or lacking:
        raise DataError(
            f"Class folders of {split_dir} differ from {reference}: "
            f"missing {lacking or 'none'}, unexpected {extra or 'none'}."
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        if name not in found:
            continue
        files = sorted(p for p in (split_dir / name).iterdir() if _is_image(p))
        if not files:
            raise DataError(f"Class folder {split_dir / name} has no images ({', '.join(IMAGE_EXTENSIONS)}).")
        if limit_per_class is not None:
            files = files[:limit_per_class]
        paths.extend(files)
        labels.extend([index] * len(files))
    return paths, np.asarray(labels, dtype=np.int64)


def discover(data_dir: str | Path, limit_per_class: int | None = None) -> Dataset:
    """Index every split of ``data_dir``; raise DataError with a clear message if it is unusable."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"Data directory not found: {root}")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise DataError(
            f"Data directory {root} has no {', '.join(missing)} folder(s); "
            f"expected {'/'.join(SPLITS)}/<class>/<image> inside it."
        )
    class_names = _class_dirs(root / "train")
    if len(class_names) < 2:
        raise DataError(f"{root / 'train'} needs at least 2 class folders, found {len(class_names)}.")
    dataset = Dataset(root=root, class_names=class_names)
    for split in SPLITS:
        paths, labels = list_split(root, split, class_names, limit_per_class=limit_per_class)
        dataset.splits[split] = Split(split, paths, labels)
    return dataset


def discover_folder(folder: str | Path, class_names: list[str], name: str = "extra") -> Split:
    """A ``LABEL/IMAGE`` folder as one split labelled with ``class_names`` (the model's classes).

    Every class folder must be one of ``class_names``; a class may be missing (a small folder need not
    hold all ten). Raise DataError otherwise.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"Image folder not found: {root}")
    found = _class_dirs(root)
    unknown = sorted(set(found) - set(class_names))
    if unknown:
        raise DataError(f"{root} has class folders the model does not know: {unknown}; known: {class_names}")
    paths: list[Path] = []
    labels: list[int] = []
    for index, label in enumerate(class_names):
        if label in found:
            files = sorted(p for p in (root / label).iterdir() if _is_image(p))
            paths.extend(files)
            labels.extend([index] * len(files))
    if not paths:
        raise DataError(f"{root} holds no LABEL/IMAGE files ({', '.join(IMAGE_EXTENSIONS)}).")
    return Split(name, paths, np.asarray(labels, dtype=np.int64))


def read_image_table(folder: str | Path) -> dict[str, dict[str, str]]:
    """``images.csv`` of a folder as {image id (file stem): row}, or {} when the folder has none."""
    path = Path(folder) / IMAGE_TABLE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["image"]: row for row in csv.DictReader(handle) if row.get("image")}


@dataclass
class Skipped:
    path: str
    code: str
    message: str


def load_split(
    paths: list[Path],
    size: tuple[int, int],
    desc: str = "load",
    max_unreadable_fraction: float = MAX_UNREADABLE_FRACTION,
    resize: str = DEFAULT_RESIZE,
) -> tuple[np.ndarray, np.ndarray, list[Skipped]]:
    """Decode and resize ``paths`` -> (uint8 (N,H,W,3), indices of the kept paths, skipped files).

    Undecodable files are skipped with a printed warning (never silently); if more than
    ``max_unreadable_fraction`` of the split is undecodable, DataError is raised instead.
    """
    from tqdm import tqdm  # here, not at the top: listing a split needs the runtime requirements only

    height, width = size
    images = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[Skipped] = []
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img")):
        try:
            images[len(kept)] = load_image_file(path, size, resize)
        except ServingError as exc:
            skipped.append(Skipped(str(path), exc.code, exc.message))
            tqdm.write(f"WARNING: skipping unreadable image {path}: {exc.code}: {exc.message}")
            continue
        except OSError as exc:  # permission denied, vanished file...
            skipped.append(Skipped(str(path), "unreadable_file", str(exc)))
            tqdm.write(f"WARNING: skipping unreadable file {path}: {exc}")
            continue
        kept.append(i)
    if paths and len(skipped) / len(paths) > max_unreadable_fraction:
        raise DataError(
            f"{len(skipped)} of {len(paths)} images in {desc} could not be read "
            f"(more than {max_unreadable_fraction:.0%}); first: {skipped[0].path}: {skipped[0].message}"
        )
    return images[: len(kept)], np.asarray(kept, dtype=np.int64), skipped

"""Contributor-grouped folds of a LABEL/IMAGE folder (the extra photos), so that no contributor's photos
are ever on both sides of a split: the honest estimate for photos by people the model has never seen."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.data import read_image_table

# Contributors whose photos must share a fold. clothing-dataset-extra: senders 61 and 352 photograph the
# same garments on the same cloth (the shared data's README), so apart they would leak into each other.
JOINED_CONTRIBUTORS = {"352": "61"}


def grouped_folds(groups: list[str], folds: int) -> list[np.ndarray]:
    """Held-out index arrays with every group in exactly one fold; folds balanced by image count.

    Largest groups first, each to the fold holding the fewest images so far (ties: lowest fold):
    deterministic, and no contributor's photos are on both sides of a split.
    """
    names, counts = np.unique(np.asarray(groups), return_counts=True)
    if len(names) < folds:
        raise ValueError(f"{len(names)} groups cannot fill {folds} folds")
    sizes = [0] * folds
    members: list[list[int]] = [[] for _ in range(folds)]
    for name, count in sorted(zip(names, counts, strict=True), key=lambda nc: (-nc[1], nc[0])):
        fold = sizes.index(min(sizes))
        sizes[fold] += int(count)
        members[fold].extend(i for i, g in enumerate(groups) if g == name)
    return [np.asarray(sorted(m), dtype=np.int64) for m in members]


def contributors_and_kids(
    extra_dir: Path, paths: list[Path], kept: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """For the ``kept`` photos of an extra folder: each one's contributor (``sender_id`` in its images.csv,
    joined per :data:`JOINED_CONTRIBUTORS`; the photo itself when unknown, so it forms a group of one) and
    whether it is kids' clothing."""
    table = read_image_table(extra_dir)
    rows = [table.get(paths[i].stem, {}) for i in kept]
    groups = [r.get("sender_id", paths[i].stem) for r, i in zip(rows, kept, strict=True)]
    groups = [JOINED_CONTRIBUTORS.get(g, g) for g in groups]
    return groups, np.asarray([r.get("kids", "") == "True" for r in rows])

"""Milliseconds per photo of each resize mode (after decoding), and the photos' aspect ratios.

python -m studies.resize_cost ../shared/data/clothing-dataset-extra [--size 352]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lambda_function.preprocess import RESIZE_MODES, decode_image, resize_image  # noqa: E402
from train.data import IMAGE_EXTENSIONS  # noqa: E402

REPEATS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a folder of photos (searched recursively)")
    parser.add_argument("--size", type=int, default=352, help="square input side")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    decode_ms, images = [], []
    for path in paths:
        data = path.read_bytes()
        started = time.perf_counter()
        images.append(decode_image(data))
        decode_ms.append((time.perf_counter() - started) * 1000.0)
    result = {"photos": len(images), "decode_ms_median": round(float(np.median(decode_ms)), 2)}
    # Modes interleaved per photo and repeated, so that a busy moment of a shared CPU hits them alike.
    times: dict[str, list[float]] = {mode: [] for mode in RESIZE_MODES}
    for _ in range(REPEATS):
        for image in images:
            for mode in RESIZE_MODES:
                started = time.perf_counter()
                np.asarray(resize_image(image, (args.size, args.size), mode))
                times[mode].append((time.perf_counter() - started) * 1000.0)
    for mode in RESIZE_MODES:
        result[f"{mode}_ms_median"] = round(float(np.median(times[mode])), 2)
    ratios = np.array([image.size[0] / image.size[1] for image in images])
    result["width_over_height_p5_p50_p95"] = np.percentile(ratios, [5, 50, 95]).round(2).tolist()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

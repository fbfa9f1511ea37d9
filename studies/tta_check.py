"""What flip test-time augmentation buys a served model, and what it costs: accuracy and latency.

Runs a .tflite model through the serving code (``Classifier`` + ``preprocess``, the sidecar's resize
mode) on a LABEL/IMAGE folder, once on each photo and once on its mirror, and reports top-1 accuracy
without TTA and with flip TTA (the mean of both probabilities: exactly what ``--tta flip`` serves), kids'
and adults' photos apart when the folder has an images.csv. Latency: ``Classifier.predict`` timed
with ``tta="none"`` and ``tta="flip"`` on the first few photos. No TensorFlow needed.

    python -m studies.tta_check --images-dir ../shared/data/clothing-dataset-extra [--model PATH]

Use it only on photos the model did not train on (the bundled model never saw clothing-dataset-extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lambda_function.classifier import DEFAULT_MODEL_PATH, Classifier  # noqa: E402
from lambda_function.preprocess import load_image_file  # noqa: E402
from train.data import discover_folder, read_image_table  # noqa: E402

LATENCY_IMAGES = 10
LATENCY_REPEATS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-dir", type=Path, required=True, help="LABEL/IMAGE folder")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="a .tflite with its sidecar")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: all CPUs)")
    parser.add_argument("--latency-images", type=int, default=LATENCY_IMAGES)
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    classifier = Classifier.from_path(args.model, num_threads=args.threads)
    flipper = Classifier.from_path(args.model, num_threads=args.threads, tta="flip")
    split = discover_folder(args.images_dir, list(classifier.labels))
    table = read_image_table(args.images_dir)
    plain, flipped, pixels_kept = [], [], []
    for i, path in enumerate(split.paths):
        pixels = load_image_file(path, classifier.input_size, classifier.resize)
        p0 = classifier.predict(pixels)
        p1 = classifier.predict(np.ascontiguousarray(pixels[:, ::-1]))
        plain.append(p0)
        flipped.append((p0.astype(np.float64) + p1) / 2)
        if len(pixels_kept) < args.latency_images:
            pixels_kept.append(pixels)
        print(f"\r{i + 1}/{len(split.paths)} photos", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    labels = split.labels
    kids = np.asarray([table.get(p.stem, {}).get("kids") == "True" for p in split.paths])

    def accuracy(probs: list, rows: np.ndarray | None = None) -> float:
        hits = np.asarray(probs).argmax(axis=1) == labels
        return float(hits[rows].mean() if rows is not None else hits.mean())

    def latency_ms(model: Classifier) -> float:
        model.predict(pixels_kept[0])  # warm-up
        times = []
        for _ in range(LATENCY_REPEATS):
            for pixels in pixels_kept:
                started = time.perf_counter()
                model.predict(pixels)
                times.append((time.perf_counter() - started) * 1000.0)
        return float(np.median(times))

    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": classifier.model_id,
        "resize": classifier.resize,
        "images": len(labels),
        "top1_no_tta": accuracy(plain),
        "top1_tta_flip": accuracy(flipped),
        "latency_ms_median_no_tta": latency_ms(classifier),
        "latency_ms_median_tta_flip": latency_ms(flipper),
        "latency_images": len(pixels_kept),
    }
    if table:
        for name, rows in (("kids", kids), ("adults", ~kids)):
            result[f"{name}_images"] = int(rows.sum())
            result[f"{name}_no_tta"] = accuracy(plain, rows)
            result[f"{name}_tta_flip"] = accuracy(flipped, rows)
    print(json.dumps(result, indent=2))
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

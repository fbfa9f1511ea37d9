"""Bulk throughput of one function instance: images/second through the Distributed Map path.

Real photos from the test split go into a moto S3 server on 127.0.0.1; every batch then takes the path
a deployed child workflow takes: ``lambda_handler({"Items": [...], "BatchInput": ...})`` reads each object
from S3 (boto3 via AWS_ENDPOINT_URL_S3), classifies it with the bundled model and writes its JSON line back
to S3. One batch at a time, like one Lambda instance. Loopback S3 is faster than S3 in a region
(~10-30 ms per GET/PUT there), so the figure is an upper bound on what S3 latency allows; reads run
ahead of the classifier (FETCH_WORKERS) precisely so that latency hides behind inference.

    nice -n 10 python -m bench.bulk --data-dir ../shared/data/clothing-dataset-small --images 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import record  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "lambda_function" / "model" / "model.tflite"
INPUT_BUCKET, RESULTS_BUCKET, PREFIX = "bench-photos", "bench-results", "test/"


def pick_images(split_dir: Path, count: int) -> list[Path]:
    """``count`` images, round-robin over the class folders so every class is in the sample."""
    classes = [
        sorted(p for p in d.iterdir() if p.is_file()) for d in sorted(split_dir.iterdir()) if d.is_dir()
    ]
    picked: list[Path] = []
    while len(picked) < count and any(classes):
        for files in classes:
            if files and len(picked) < count:
                picked.append(files.pop(0))
    return picked


def upload(s3, images: list[Path], bucket: str, prefix: str) -> dict[str, str]:
    """Put each image at ``<prefix><folder>/<name>``; {key: folder name} (the label, for the test split)."""
    keys = {}
    for path in images:
        key = f"{prefix}{path.parent.name}/{path.name}"
        content_type = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ContentType=content_type)
        keys[key] = path.parent.name
    return keys


def draw(figure, report: dict) -> None:
    axes = figure.subplots()
    runs = report["runs"]
    record.bars(
        axes,
        [f"{run['num_threads']} thread(s)" for run in runs],
        [run["images_per_s"] for run in runs],
        "images/s",
    )
    axes.set_title(
        f"bulk path, {report['images']} photos from moto S3 on loopback, one batch at a time", fontsize=9
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "clothing-dataset-small")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="NUM_THREADS values to run")
    parser.add_argument("--items-per-batch", type=int, default=20)
    parser.add_argument(
        "--result-objects",
        choices=("auto", "all"),
        default="auto",
        help="per-image result objects (auto: the default, none for a Map batch; all: one PUT each)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import boto3

    from deploy.classify_bucket import run_local
    from lambda_function import fetch
    from lambda_function.service import classify_bytes
    from tests.fixtures.moto_s3 import moto_s3_server, s3_env

    images = pick_images(args.data_dir / args.split, args.images)
    if not images:
        raise SystemExit(f"no images under {args.data_dir / args.split}")
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible",
        "model": str(
            args.model.relative_to(REPO_ROOT) if args.model.is_relative_to(REPO_ROOT) else args.model
        ),
        "images": len(images),
        "bytes": sum(p.stat().st_size for p in images),
        "items_per_batch": args.items_per_batch,
        "result_objects": args.result_objects,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as config_dir, moto_s3_server() as endpoint:
        os.environ.update(s3_env(endpoint, config_dir))
        os.environ.update(
            MODEL_PATH=str(args.model),
            RESULTS_BUCKET=RESULTS_BUCKET,
            RESULTS_PREFIX="classifications/",
            RESULT_OBJECTS=args.result_objects,
        )
        s3 = boto3.client("s3")
        for bucket in (INPUT_BUCKET, RESULTS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        truth = upload(s3, images, INPUT_BUCKET, PREFIX)
        from lambda_function import app

        for threads in args.threads:
            os.environ["NUM_THREADS"] = str(threads)
            app.reset_for_tests()
            fetch._s3_client.cache_clear()
            started = time.perf_counter()
            app.get_classifier()  # Lambda's init phase: not part of the per-image figure
            load_s = time.perf_counter() - started
            run_local(INPUT_BUCKET, PREFIX, args.items_per_batch, log=lambda _msg: None)  # warm-up pass
            run = run_local(INPUT_BUCKET, PREFIX, args.items_per_batch, log=lambda _msg: None)
            classifier = app.get_classifier()
            in_memory = [p.read_bytes() for p in images]
            started = time.perf_counter()
            for data in in_memory:
                classify_bytes(data, classifier, 3)
            classify_only_s = time.perf_counter() - started
            written = s3.list_objects_v2(Bucket=RESULTS_BUCKET)["KeyCount"]
            correct = sum(r.get("label") == truth[r["key"]] for r in run.results)
            figures = {
                "num_threads": threads,
                "model_load_s": round(load_s, 3),
                "seconds": round(run.seconds, 2),
                "images_per_s": round(run.images / run.seconds, 2),
                "ms_per_image": round(1000 * run.seconds / run.images, 1),
                "classify_only_ms_per_image": round(1000 * classify_only_s / len(in_memory), 1),
                "summary": run.summary,
                "result_objects_written": written,
                "top1_matches_folder": f"{correct}/{run.images}",
            }
            report["runs"].append(figures)
            print(json.dumps(figures), flush=True)
    if args.json:
        record.write(args.json, report, draw)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The in-browser page in headless Chromium: model load time, time per photo, agreement with our CLI.

    python -m bench.web --json build/web/bench.json --screenshot build/web/screenshot.png \\
        [--data-dir ../shared/data/clothing-dataset-small --limit 40]

Each framing of the page (``page``: resized in the page like training; ``mediapipe``: MediaPipe
resizes) gets a fresh page: the load time is the page's own figure (WASM + 22 MB model from loopback,
until the classifier is ready), the first photo is reported apart (warm-up), then the median of the
rest. The top-1 label shown is compared with our CLI (lambda_function) on the same files. The PNG is
the page after it classified samples/pants.jpg, for a person to look at.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tqdm import tqdm

from bench import record
from convert.data import has_split, list_split, stratified_sample
from lambda_function.classifier import Classifier
from lambda_function.preprocess import preprocess
from local import web_page

REPO = web_page.REPO
FRAMINGS = ("page", "mediapipe")


def photos(data_dir: Path | None, split: str, limit: int | None, labels: list[str]) -> list[Path]:
    files = sorted((REPO / "samples").glob("*.jpg"))
    if has_split(data_dir, split):
        files += [path for path, _ in stratified_sample(list_split(data_dir, split, labels), limit)]
    elif data_dir is not None:
        print(f"note: no {split} split under {data_dir}; samples/ only")
    return files


def run(files: list[Path], screenshot: Path | None) -> dict:
    cli = Classifier.from_path(REPO / "lambda_function" / "model" / "model.tflite")
    cli_top1 = {
        f: cli.labels[int(cli.predict(preprocess(f.read_bytes(), cli.input_size, cli.resize)).argmax())]
        for f in files
    }
    result: dict = {"images": len(files), "framings": {}}
    with web_page.serve() as url, web_page.browser() as browser:
        result["browser"] = browser.version
        for framing in FRAMINGS:
            page = web_page.open_page(browser, url, f"?framing={framing}")
            load_ms = float(page.get_attribute("#timing", "data-load-ms"))
            times, agree = [], 0
            for path in tqdm(files, desc=f"framing={framing}", unit="photo"):
                shown = web_page.classify(page, path)
                times.append(shown["ms"])
                agree += shown["results"][0]["label"] == cli_top1[path]
            result["framings"][framing] = {
                "load_ms": load_ms,
                "first_photo_ms": times[0],
                "median_ms": statistics.median(times[1:]) if len(times) > 1 else times[0],
                "top1_agreement_with_cli": agree / len(files),
            }
            if screenshot is not None and framing == "page":
                web_page.classify(page, REPO / "samples" / "pants.jpg")
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            page.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="also classify images of this dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=40, help="dataset images, classes interleaved")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args(argv)
    missing = web_page.missing_parts()
    if missing:
        print("error: missing " + ", ".join(missing))
        return 2
    labels = list(Classifier.from_path(REPO / "lambda_function" / "model" / "model.tflite").labels)
    result = run(photos(args.data_dir, args.split, args.limit, labels), args.screenshot)
    print(json.dumps(result, indent=2))
    if args.json:
        record.write(args.json, result)  # the page's own picture is the screenshot
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

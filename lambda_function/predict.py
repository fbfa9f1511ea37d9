"""Classify images on this machine with the same code path as the Lambda handler.

    python -m lambda_function.predict IMAGE_OR_URL... [--model PATH] [--top-k N] [--json] [--tta flip]

Inputs are local files or http(s):// / s3:// URLs (fetched with the handler's safe fetcher, so
loopback and private addresses are refused unless listed in env FETCH_ALLOWED_HOSTS).
Exit status: 0 if every input was classified, 1 if any failed, 2 if the model could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from lambda_function.classifier import DEFAULT_MODEL_PATH, TTA_MODES, Classifier
from lambda_function.errors import ServingError
from lambda_function.events import DEFAULT_TOP_K, parse_top_k
from lambda_function.service import classify_bytes, classify_url

URL_SCHEMES = ("http://", "https://", "s3://")
EXIT_OK, EXIT_INPUT_FAILED, EXIT_MODEL_FAILED = 0, 1, 2


def classify_input(source: str, classifier: Classifier, top_k: int) -> dict:
    """The handler's body for one file path or URL (an ``{"error": ...}`` body if it failed)."""
    try:
        if source.lower().startswith(URL_SCHEMES):
            return classify_url(source, classifier, top_k)
        started = time.perf_counter()
        data = _read_file(source)
        return classify_bytes(data, classifier, top_k, fetch_ms=(time.perf_counter() - started) * 1000.0)
    except ServingError as err:
        return err.to_body()


def format_table(source: str, body: dict) -> str:
    """A few aligned lines for people: the input, then label / score rows."""
    lines = [f"{source}  (model {body['model']}, {body['timings_ms']['inference']} ms)"]
    width = max(len(p["label"]) for p in body["predictions"])
    lines += [f"  {p['label']:<{width}}  {p['score']:.4f}" for p in body["predictions"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lambda_function.predict", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_URL", help="image files or URLs")
    parser.add_argument(
        "--model",
        default=os.environ.get("MODEL_PATH") or str(DEFAULT_MODEL_PATH),
        help="a .tflite file, its .json sidecar next to it (default: env MODEL_PATH, else the bundled one)",
    )
    parser.add_argument("--top-k", type=int, default=None, help=f"labels to show (default {DEFAULT_TOP_K})")
    parser.add_argument("--json", action="store_true", help="one JSON line per input on stdout")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: 'flip' averages the image and its mirror (2x inference time)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        classifier = Classifier.from_path(args.model, tta=args.tta)
        top_k = parse_top_k(args.top_k, len(classifier.labels))
    except ServingError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return EXIT_MODEL_FAILED

    failed = 0
    for source in args.inputs:
        try:
            body = classify_input(source, classifier, top_k)
        except Exception as exc:  # a bug, not bad input: say what, without a traceback
            body = ServingError(500, "internal_error", f"{type(exc).__name__}: {exc}").to_body()
        if "error" in body:
            failed += 1
            error = body["error"]
            print(f"{source}: error {error['status']} {error['code']}: {error['message']}", file=sys.stderr)
        if args.json:
            print(json.dumps({"input": source, **body}, ensure_ascii=False), flush=True)
        elif "error" not in body:
            print(format_table(source, body), flush=True)
    return EXIT_INPUT_FAILED if failed else EXIT_OK


def _read_file(source: str) -> bytes:
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ServingError(400, "file_not_found", f"No such file: {source}") from None
    except IsADirectoryError:
        raise ServingError(400, "invalid_input", f"{source} is a directory, not an image file.") from None
    except OSError as exc:
        raise ServingError(400, "invalid_input", f"{source} could not be read: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())

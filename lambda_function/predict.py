"""Classify images on this machine with the same code path as the Lambda handler.

    clothes-classify IMAGE_OR_URL... [--model PATH] [--top-k N] [--min-confidence T] [--json] [--tta flip]
    python -m lambda_function.predict ...   (the same CLI, from a checkout)

Inputs are local files or http(s):// / s3:// URLs (fetched with the handler's safe fetcher, so
loopback and private addresses are refused unless listed in env FETCH_ALLOWED_HOSTS).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from lambda_function.classifier import TTA_MODES, Classifier, model_path
from lambda_function.errors import ServingError
from lambda_function.events import DEFAULT_TOP_K, parse_min_confidence
from lambda_function.fetch import ALLOWED_HOSTS_ENV
from lambda_function.native_log import native_info_hidden
from lambda_function.service import classify_bytes, classify_url

# The name pyproject.toml gives the console script.
CONSOLE_SCRIPT = "clothes-classify"
# Anything that looks like "scheme://" is a URL: fetch.py names the schemes it refuses (ftp://...).
URL_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
EXIT_OK, EXIT_INPUT_FAILED, EXIT_MODEL_FAILED = 0, 1, 2
EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}  every input was classified ("not sure" answers included)
  {EXIT_INPUT_FAILED}  at least one input failed (each failure is a line on stderr; the others still ran)
  {EXIT_MODEL_FAILED}  bad arguments, or the model could not be loaded"""
# Said after a refused URL: for a server on this machine or network, the one switch there is.
REFUSED_HINT = (
    f"(if the host is on this machine or your network, list its host:port in env {ALLOWED_HOSTS_ENV}, "
    f"e.g. {ALLOWED_HOSTS_ENV}=127.0.0.1:8000; for local testing only)"
)


def classify_input(
    source: str, classifier: Classifier, top_k: int, min_confidence: float | None = None
) -> dict:
    """The handler's body for one file path or URL (an ``{"error": ...}`` body if it failed)."""
    try:
        if URL_PATTERN.match(source):
            return classify_url(source, classifier, top_k, min_confidence=min_confidence)
        started = time.perf_counter()
        data = _read_file(source)
        fetch_ms = (time.perf_counter() - started) * 1000.0
        return classify_bytes(data, classifier, top_k, fetch_ms=fetch_ms, min_confidence=min_confidence)
    except ServingError as err:
        return err.to_body()


def format_table(source: str, body: dict) -> str:
    """A few aligned lines for people: the input, then label / score rows (and a "not sure" line)."""
    lines = [f"{source}  (model {body['model']}, {body['timings_ms']['inference']} ms)"]
    width = max(len(p["label"]) for p in body["predictions"])
    lines += [f"  {p['label']:<{width}}  {p['score']:.4f}" for p in body["predictions"]]
    if body.get("confident") is False:
        lines.append(f"  -> not sure: no label reaches --min-confidence {body['min_confidence']:g}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    prog = CONSOLE_SCRIPT if Path(sys.argv[0]).name == CONSOLE_SCRIPT else "python -m lambda_function.predict"
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_URL", help="image files or URLs")
    parser.add_argument(
        "--model",
        default=None,
        help="a .tflite or .onnx file, its .json sidecar next to it (default: env MODEL_PATH, else the"
        " bundled model env MODEL_BACKEND names, tflite or onnx; else the bundled TFLite model)",
    )
    parser.add_argument(
        "--top-k",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"labels to show, 1 to the model's number of labels (default {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--min-confidence",
        type=_threshold,
        default=None,
        metavar="T",
        help='answer "not sure" (no label) when the top score is under T, 0 < T <= 1 (default: off)',
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per input on stdout")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: 'flip' averages the image and its mirror (2x inference time)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show the TFLite runtime's INFO lines while loading"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # bad flags exit 2 here, before the model loads
    try:
        model = args.model or model_path()  # as the handler chooses: MODEL_PATH, else MODEL_BACKEND's
        with native_info_hidden(not args.verbose):
            classifier = Classifier.from_path(model, tta=args.tta)
    except ServingError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return EXIT_MODEL_FAILED
    top_k = args.top_k or min(DEFAULT_TOP_K, len(classifier.labels))
    if top_k > len(classifier.labels):
        print(
            f"error: --top-k {top_k} is more than the model's {len(classifier.labels)} labels.",
            file=sys.stderr,
        )
        return EXIT_MODEL_FAILED

    failed = 0
    for source in args.inputs:
        try:
            body = classify_input(source, classifier, top_k, args.min_confidence)
        except Exception as exc:  # a bug, not bad input: say what, without a traceback
            body = ServingError(500, "internal_error", f"{type(exc).__name__}: {exc}").to_body()
        if "error" in body:
            failed += 1
            error = body["error"]
            hint = f" {REFUSED_HINT}" if error["code"] == "url_refused" else ""
            print(
                f"{source}: error {error['status']} {error['code']}: {error['message']}{hint}",
                file=sys.stderr,
            )
        if args.json:
            print(json.dumps({"input": source, **body}, ensure_ascii=False), flush=True)
        elif "error" not in body:
            print(format_table(source, body), flush=True)
    return EXIT_INPUT_FAILED if failed else EXIT_OK


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.strip().isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return int(text)


def _threshold(text: str) -> float:
    try:
        return parse_min_confidence(text)
    except ServingError:
        raise argparse.ArgumentTypeError(
            f"must be a number greater than 0 and at most 1 (e.g. 0.8), not {text!r}"
        ) from None


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

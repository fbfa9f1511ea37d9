"""`make demo`: classify the sample photos through the real Lambda handler, over a loopback HTTP server.

The true label of each sample is its file name (``samples/pants.jpg`` is a pair of pants). Runs with the
runtime requirements only: no TensorFlow.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lambda_function.native_log import native_info_hidden  # noqa: E402
from local.loopback import LoopbackServer, QuietHandler  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


class QuietFileHandler(QuietHandler, SimpleHTTPRequestHandler):
    """Files of one folder, no request log."""


def serve(directory: Path) -> LoopbackServer:
    return LoopbackServer(functools.partial(QuietFileHandler, directory=str(directory)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, nargs="?", default=Path("samples"))
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)

    images = sorted(p for p in args.samples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        print(f"no images in {args.samples}", file=sys.stderr)
        return 2
    server = serve(args.samples)
    # The handler refuses loopback addresses unless the exact host:port is allowed: this is that opt-in.
    os.environ["FETCH_ALLOWED_HOSTS"] = server.host
    # The handler's one-JSON-line-per-request log is for CloudWatch; here it would bury the table.
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    started = time.perf_counter()
    with native_info_hidden():  # LiteRT's "INFO: Created ... XNNPACK delegate" line is not for this table
        from lambda_function import app  # loads the bundled model, as a Lambda cold start would

    print(f"cold start (import + model load): {(time.perf_counter() - started) * 1000:.0f} ms")
    print(f"{'image':<16} {'true':<11} {'top-' + str(args.top_k) + ' predictions':<52} {'ms':>6}")
    correct = 0
    for path in images:
        truth = path.stem
        started = time.perf_counter()
        body = app.lambda_handler({"url": server.url(f"/{path.name}"), "top_k": args.top_k}, None)
        elapsed = (time.perf_counter() - started) * 1000
        if "error" in body:
            print(f"{path.name:<16} {truth:<11} ERROR {body['error']['code']}: {body['error']['message']}")
            continue
        predictions = body["predictions"]
        hit = predictions[0]["label"] == truth
        correct += hit
        shown = "  ".join(f"{p['label']} {p['score']:.2f}" for p in predictions)
        print(f"{path.name:<16} {truth:<11} {shown:<52} {elapsed:6.0f} {'ok' if hit else 'MISS'}")
    server.close()
    print(f"{correct}/{len(images)} correct (model {body.get('model', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark: the Lambda handler vs the bare model (LiteRT, or ONNX Runtime for a .onnx), cold
start, and memory growth.

All in one run, on one model and one real photo served from a loopback HTTP server:

* warm latency p50/p95 of ``lambda_handler({"url": ...})`` (fetch, decode, resize, invoke, softmax,
  JSON log line) and of a bare ``set_tensor + invoke + get_tensor`` on the same pre-processed pixels,
  interleaved request by request so background load on the machine hits both alike;
* cold start: a fresh interpreter importing ``lambda_function.app`` and loading the model (what
  Lambda's init phase does), median of several;
* resident memory after the first few and after all handler requests.

A script, not a test: figures depend on the machine. ``make bench-serve`` runs it on the bundled model.

    python -m bench.serve --model lambda_function/model/model.tflite --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

from bench import record  # noqa: E402
from lambda_function.classifier import backend_for  # noqa: E402
from lambda_function.sidecar import read_sidecar  # noqa: E402
from local.loopback import LoopbackServer, QuietHandler  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "lambda_function" / "model" / "model.tflite"
# A real CC0 photo from the dataset's test split (samples/README.md); else the first test image.
DEFAULT_IMAGES = (REPO_ROOT / "samples" / "pants.jpg",)
DATASET_TEST_DIRS = (REPO_ROOT / "data" / "clothing-dataset-small" / "test",)
DEFAULT_REQUESTS = 1000
# Requests before the "early" memory reading; they also warm caches and are left out of percentiles.
EARLY_REQUESTS = 10
DEFAULT_COLD_RUNS = 5
# Targets for the bundled dynamic-range model on a 2-core machine (docs/benchmarks.md).
TARGET_OVERHEAD = 0.15
TARGET_COLD_START_S = 0.6
TARGET_RSS_GROWTH_MB = 10.0

# The libraries first, then the app module, whose import loads the model (Lambda's init phase).
COLD_START_CHILD = """
import sys, time
started = time.perf_counter()
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
import numpy, PIL.Image, {runtime}
libraries = time.perf_counter()
import lambda_function.app as app
classifier = app.get_classifier()
ready = time.perf_counter()
print("COLD", libraries - started, ready - libraries, classifier.model_id)
"""


# The runtime library a backend's cold start imports before the app (backend_for: by file suffix).
RUNTIME_MODULES = {"tflite": "ai_edge_litert.interpreter", "onnx": "onnxruntime"}


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (bad model, image or handler failure); the message says why."""


@dataclass
class Result:
    model: str
    model_bytes: int
    variant: str | None
    backend: str
    image: str
    image_bytes: int
    threads: int
    requests: int
    bare_p50_ms: float
    bare_p95_ms: float
    handler_p50_ms: float
    handler_p95_ms: float
    handler_overhead: float
    handler_fetch_p50_ms: float
    handler_preprocess_p50_ms: float
    handler_inference_p50_ms: float
    cold_start_median_s: float
    cold_libraries_median_s: float
    cold_app_median_s: float
    cold_start_runs_s: list[float]
    cold_start_from: str
    rss_early_mb: float
    rss_final_mb: float
    rss_growth_mb: float
    peak_rss_mb: float
    cpu_count: int
    python: str
    machine: str


# ---------------------------------------------------------------- pieces


def find_image(explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise BenchError(f"--image {explicit} does not exist")
        return explicit
    for candidate in DEFAULT_IMAGES:
        if candidate.is_file():
            return candidate
    for folder in DATASET_TEST_DIRS:
        photos = sorted(folder.glob("*/*.jpg"))
        if photos:
            return photos[0]
    raise BenchError("no test photo found: pass --image PATH")


@contextlib.contextmanager
def serve_bytes(data: bytes, content_type: str = "image/jpeg"):
    """Serve ``data`` at ``http://127.0.0.1:PORT/image`` for the duration of the block; yield the URL."""

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with LoopbackServer(Handler) as server:
        yield server.url("/image")


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc/self/status."""
    return record.proc_status_kb("VmRSS") / 1024.0, record.proc_status_kb("VmHWM") / 1024.0


class BareInvoke:
    """The model on its own engine (LiteRT, or ONNX Runtime for a .onnx): what inference costs with
    nothing around it; the same engine API the handler's Classifier drives."""

    def __init__(self, model: Path, threads: int, pixels_for):
        from lambda_function.classifier import load_engine  # the handler's own loader

        self.engine = load_engine(model, threads)
        self.backend = self.engine.backend
        self.pixels = pixels_for((int(self.engine.input_shape[1]), int(self.engine.input_shape[2])))

    def __call__(self) -> np.ndarray:
        return self.engine.run(self.pixels)


def cold_starts(model: Path, threads: int, runs: int, artifact: Path | None) -> list[tuple[float, float]]:
    """(library import seconds, app import + model load seconds) of ``runs`` fresh interpreters."""
    env = {k: v for k, v in os.environ.items() if k != "FETCH_ALLOWED_HOSTS"}
    env.update(MODEL_PATH=str(model.resolve()), NUM_THREADS=str(threads), LOG_LEVEL="WARNING")
    child = COLD_START_CHILD.format(runtime=RUNTIME_MODULES[backend_for(model)])
    if artifact is not None:
        artifact = artifact.resolve()  # the child runs from another folder
        # Like Lambda: only the artifact on the path, and no bytecode cache written (read-only /var/task).
        command = [sys.executable, "-I", "-S", "-B", "-c", child, str(artifact)]
        cwd = artifact.parent
    else:
        command = [sys.executable, "-c", child]
        cwd = REPO_ROOT
    timings = []
    for _ in tqdm(range(runs), desc="cold starts", unit="run", leave=False):
        result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
        lines = [line for line in result.stdout.splitlines() if line.startswith("COLD ")]
        if result.returncode != 0 or not lines:
            raise BenchError(f"cold-start child failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        _, imported, loaded, _model_id = lines[-1].split()
        timings.append((float(imported), float(loaded)))
    return timings


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---------------------------------------------------------------- the run


def run_benchmark(
    model: Path,
    image: Path | None = None,
    requests: int = DEFAULT_REQUESTS,
    threads: int | None = None,
    cold_runs: int = DEFAULT_COLD_RUNS,
    artifact: Path | None = None,
) -> Result:
    model = model.resolve()
    if not model.is_file() or not model.with_suffix(".json").is_file():
        raise BenchError(f"{model} and its sidecar {model.with_suffix('.json').name} must both exist")
    if requests <= EARLY_REQUESTS:
        raise BenchError(f"--requests must be more than {EARLY_REQUESTS}")
    photo = find_image(image)
    data = photo.read_bytes()
    threads = threads or int(os.environ.get("NUM_THREADS") or os.cpu_count() or 1)

    # Cold starts first, while this process has not yet warmed anything for the children.
    cold = cold_starts(model, threads, cold_runs, artifact)

    with serve_bytes(data) as url:
        os.environ.update(
            MODEL_PATH=str(model), NUM_THREADS=str(threads), FETCH_ALLOWED_HOSTS=url.split("/")[2]
        )
        handler_ms, bare_ms, parts = [], [], []
        rss_early = None
        with open(os.devnull, "w") as devnull:
            with contextlib.redirect_stdout(devnull):  # the "model loaded" log lines
                from lambda_function import app
                from lambda_function.preprocess import preprocess

                app.reset_for_tests()
                app.get_classifier()
            bare = BareInvoke(model, threads, lambda size: preprocess(data, size))
            event = {"url": url, "top_k": 3}
            for i in tqdm(range(requests), desc="requests", unit="req"):
                with contextlib.redirect_stdout(devnull):  # the JSON log line is built, then dropped
                    started = time.perf_counter()
                    body = app.lambda_handler(event, None)
                    handler_ms.append((time.perf_counter() - started) * 1000.0)
                if "error" in body:
                    raise BenchError(f"the handler answered an error: {body['error']}")
                parts.append(body["timings_ms"])
                started = time.perf_counter()
                bare()
                bare_ms.append((time.perf_counter() - started) * 1000.0)
                if i + 1 == EARLY_REQUESTS:
                    rss_early = rss_mb()[0]
        rss_final, rss_peak = rss_mb()

    warm = slice(EARLY_REQUESTS, None)
    meta = read_sidecar(model)
    handler_p50, bare_p50 = percentile(handler_ms[warm], 50), percentile(bare_ms[warm], 50)
    totals = [a + b for a, b in cold]
    return Result(
        model=str(model),
        model_bytes=model.stat().st_size,
        variant=meta.get("variant"),
        backend=bare.backend,
        image=str(photo),
        image_bytes=len(data),
        threads=threads,
        requests=requests,
        bare_p50_ms=bare_p50,
        bare_p95_ms=percentile(bare_ms[warm], 95),
        handler_p50_ms=handler_p50,
        handler_p95_ms=percentile(handler_ms[warm], 95),
        handler_overhead=handler_p50 / bare_p50 - 1.0,
        handler_fetch_p50_ms=percentile([p["fetch"] for p in parts[warm]], 50),
        handler_preprocess_p50_ms=percentile([p["preprocess"] for p in parts[warm]], 50),
        handler_inference_p50_ms=percentile([p["inference"] for p in parts[warm]], 50),
        cold_start_median_s=float(np.median(totals)),
        cold_libraries_median_s=float(np.median([a for a, _ in cold])),
        cold_app_median_s=float(np.median([b for _, b in cold])),
        cold_start_runs_s=[round(t, 4) for t in totals],
        cold_start_from=f"artifact {artifact} (-I -S -B)" if artifact else "source tree",
        rss_early_mb=rss_early,
        rss_final_mb=rss_final,
        rss_growth_mb=rss_final - rss_early,
        peak_rss_mb=rss_peak,
        cpu_count=os.cpu_count() or 0,
        python=platform.python_version(),
        machine=platform.machine(),
    )


def markdown(r: Result) -> str:
    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [
        ("bare invoke p50 / p95", f"{r.bare_p50_ms:.1f} / {r.bare_p95_ms:.1f} ms", "", ""),
        ("handler p50 / p95 (loopback URL)", f"{r.handler_p50_ms:.1f} / {r.handler_p95_ms:.1f} ms", "", ""),
        (
            "handler p50 over bare p50",
            f"{r.handler_overhead:+.1%}",
            f"< {TARGET_OVERHEAD:.0%}",
            verdict(r.handler_overhead < TARGET_OVERHEAD),
        ),
        (
            "handler parts p50: fetch / preprocess / inference",
            f"{r.handler_fetch_p50_ms:.1f} / {r.handler_preprocess_p50_ms:.1f} / "
            f"{r.handler_inference_p50_ms:.1f} ms",
            "",
            "",
        ),
        (
            f"cold start: libraries + app import with model load (median of {len(r.cold_start_runs_s)})",
            f"{r.cold_start_median_s:.3f} s ({r.cold_libraries_median_s:.3f} + {r.cold_app_median_s:.3f})",
            f"< {TARGET_COLD_START_S} s",
            verdict(r.cold_start_median_s < TARGET_COLD_START_S),
        ),
        (
            f"RSS after {EARLY_REQUESTS} / {r.requests} requests",
            f"{r.rss_early_mb:.1f} / {r.rss_final_mb:.1f} MB ({r.rss_growth_mb:+.1f} MB)",
            f"growth < {TARGET_RSS_GROWTH_MB:.0f} MB",
            verdict(r.rss_growth_mb < TARGET_RSS_GROWTH_MB),
        ),
        ("peak RSS (handler + bare interpreter)", f"{r.peak_rss_mb:.1f} MB", "", ""),
    ]
    head = (
        f"Model `{Path(r.model).name}` ({r.variant}, {r.backend}, {r.model_bytes / 1e6:.1f} MB), image "
        f"`{Path(r.image).name}` ({r.image_bytes / 1e3:.0f} kB), {r.threads} threads, {r.cpu_count} CPUs, "
        f"Python {r.python} {r.machine}; cold start from the {r.cold_start_from}.\n\n"
    )
    table = ["| measure | value | target | met |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return head + "\n".join(table)


def draw(figure, r: dict) -> None:
    latency, cold = figure.subplots(1, 2, width_ratios=(2, 1))
    shown = {
        "bare invoke p50": "bare_p50_ms",
        "handler p50": "handler_p50_ms",
        "handler p95": "handler_p95_ms",
        "  fetch p50": "handler_fetch_p50_ms",
        "  preprocess p50": "handler_preprocess_p50_ms",
        "  inference p50": "handler_inference_p50_ms",
    }
    record.bars(latency, list(shown), [r[key] for key in shown.values()], "ms")
    latency.set_title(
        f"{Path(r['model']).name}: {r['requests']} requests, {r['threads']} threads", fontsize=9
    )
    record.bars(
        cold,
        ["libraries", "app + model", "cold start"],
        [r["cold_libraries_median_s"], r["cold_app_median_s"], r["cold_start_median_s"]],
        "s",
        TARGET_COLD_START_S,
    )
    cold.set_title("cold start (median)", fontsize=9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="a .tflite or .onnx with its .json sidecar"
    )
    parser.add_argument("--image", type=Path, help="the photo to serve (default: samples/pants.jpg)")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--threads", type=int, help="interpreter threads (default: env NUM_THREADS or CPUs)")
    parser.add_argument("--cold-runs", type=int, default=DEFAULT_COLD_RUNS)
    parser.add_argument(
        "--artifact",
        type=Path,
        help="time cold starts from this built artifact (build_artifact.py --platform local)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run_benchmark(
            args.model, args.image, args.requests, args.threads, args.cold_runs, args.artifact
        )
    except BenchError as exc:
        print(f"bench_serve: error: {exc}", file=sys.stderr)
        return 1
    print(markdown(result))
    if args.json:
        record.write(args.json, asdict(result), draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hostile-input benchmark: every bomb of issue 12 through ``lambda_handler``, each in a fresh process.

For each case a child process imports the handler, warms it with one small image of each format,
builds the hostile event, then measures one request: its status and code, CPU seconds
(``time.process_time``, the whole process: for the HTTP cases that includes the loopback server
thread writing the flood), wall seconds, and peak RSS growth (Linux: VmHWM after resetting it through
/proc/self/clear_refs, minus VmRSS before the request; elsewhere ru_maxrss, which cannot be reset and
only shows growth past the warm-up's peak). It then checks that exactly one "request" log line was
written and that the next ordinary request still answers 200.

A script, not a test: the figures depend on the machine. ``make bench-bombs`` runs every case.

    python -m bench.bombs --json build/bench_bombs.json
    python -m bench.bombs --case jpeg_scans_10000 --case png16_7071
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import io
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

from bench import record  # noqa: E402

DEFAULT_MODEL = REPO_ROOT / "tests" / "fixtures" / "tiny_model.tflite"
# The "done when": each bomb answers its 4xx in well under a second of CPU, under 150 MB.
TARGET_CPU_S = 1.0
TARGET_RSS_GROWTH_MB = 150.0
CHILD_TIMEOUT_S = 300
FLOOD_BLOCK = 64 * 1024
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@dataclass
class Case:
    name: str
    what: str
    expect: tuple[int, str | None]  # (status, error code or None for a success)
    build: Callable[[], object]  # -> the event; HTTP cases get the loopback URL through serve()
    # (prefix, unit, bytes offered) for a raw loopback HTTP server, or a function returning them.
    flood: tuple[bytes, bytes, int] | Callable[[], tuple[bytes, bytes, int]] | None = None
    batch: int = 0  # ask for the flood's URL this many times in one batch event


def _proxy(body: str, *, b64: bool = False, content_type: str = "application/json") -> dict:
    from tests.fixtures.proxy_events import v2_event

    return v2_event(body, b64=b64, headers={"content-type": content_type})


def _inline(data: bytes) -> dict:
    return _proxy(base64.b64encode(data).decode("ascii"), b64=True, content_type="application/octet-stream")


def _bombs():
    from tests.fixtures import bombs

    return bombs


def _largest_square(fmt: str, mode: str, alpha: bool) -> int:
    """The side of the largest square image of this kind the decode budget accepts."""
    from lambda_function.image_budget import MAX_DECODE_BYTES, decode_bytes

    low, high = 1, 7071
    while low < high:
        mid = (low + high + 1) // 2
        if decode_bytes(fmt, mode, (mid, mid), alpha=alpha) <= MAX_DECODE_BYTES:
            low = mid
        else:
            high = mid - 1
    return low


def _largest_progressive_side() -> int:
    from lambda_function.image_budget import MAX_DECODE_BYTES

    # Grey progressive: 2 bytes of coefficients per pixel, plus the 1/4-scale draft output as RGB.
    return min(7000, int((MAX_DECODE_BYTES / (2 + 5 / 16)) ** 0.5) // 8 * 8)


def _jpeg_at_cap() -> dict:
    from lambda_function.image_budget import MAX_JPEG_SCANS

    side = _largest_progressive_side()
    return _inline(_bombs().progressive_jpeg_bomb(side, side, MAX_JPEG_SCANS - 1))


def _square(builder: str, fmt: str, mode: str, alpha: bool) -> Callable[[], dict]:
    def build() -> dict:
        side = _largest_square(fmt, mode, alpha)
        return _inline(getattr(_bombs(), builder)(side, side))

    return build


def _served_jpeg_at_cap() -> tuple[bytes, bytes, int]:
    from lambda_function.image_budget import MAX_JPEG_SCANS

    side = _largest_progressive_side()
    jpeg = _bombs().progressive_jpeg_bomb(side, side, MAX_JPEG_SCANS - 1)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
    return head, jpeg, len(jpeg)


def _surrogate_host() -> dict:
    return {"url": "http://\ud800example.com/x.jpg"}


CASES = [
    Case(
        "jpeg_scans_1500",
        "progressive JPEG 7000x7000, 1500 AC scans of EOB runs",
        (422, "image_too_complex"),
        lambda: _inline(_bombs().progressive_jpeg_bomb(7000, 7000, 1500)),
    ),
    Case(
        "jpeg_scans_10000",
        "the same with 10000 scans (~0.9 MB)",
        (422, "image_too_complex"),
        lambda: _inline(_bombs().progressive_jpeg_bomb(7000, 7000, 10000)),
    ),
    Case(
        "jpeg_scans_at_cap",
        "largest accepted: progressive grey JPEG at the byte cap, scans at the cap",
        (200, None),
        _jpeg_at_cap,
    ),
    Case(
        "jpeg_markers_1m",
        "JPEG with a million empty COM segments (4 MB)",
        (422, "image_too_complex"),
        lambda: _inline(_bombs().jpeg_with_empty_comments(1_000_000)),
    ),
    Case(
        "png_chunks_400k",
        "PNG with 400,000 empty chunks before IDAT (4.8 MB)",
        (422, "image_too_complex"),
        lambda: _inline(_bombs().png_with_empty_chunks(400_000)),
    ),
    Case(
        "gif_sub_blocks_2m",
        "GIF with a comment of 2 million one-byte sub-blocks (4 MB)",
        (422, "image_too_complex"),
        lambda: _inline(_bombs().gif_with_empty_extensions(2_000_000)),
    ),
    Case(
        "png16_7071",
        "16-bit grey PNG 7071x7071 of zero rows",
        (422, "image_too_large"),
        lambda: _inline(_bombs().grey16_png(7071, 7071)),
    ),
    Case(
        "png16_at_cap",
        "largest accepted 16-bit grey PNG",
        (200, None),
        _square("grey16_png", "PNG", "I;16", False),
    ),
    Case(
        "webp_lossless_7071",
        "lossless WebP 7071x7071 of one colour",
        (422, "image_too_large"),
        lambda: _inline(_bombs().lossless_webp(7071, 7071)),
    ),
    Case(
        "webp_at_cap",
        "largest accepted lossless WebP",
        (200, None),
        _square("lossless_webp", "WEBP", "RGB", False),
    ),
    Case(
        "png_rgba_7071",
        "RGBA PNG 7071x7071 of zero rows",
        (422, "image_too_large"),
        lambda: _inline(_bombs().rgba_png(7071, 7071)),
    ),
    Case(
        "png_rgba_at_cap", "largest accepted RGBA PNG", (200, None), _square("rgba_png", "PNG", "RGBA", True)
    ),
    Case(
        "mpo_7071",
        "JPEG with an MPF index (MPO), 7071x7071, two frames",
        (200, None),
        lambda: _inline(_bombs().mpo_jpeg((7071, 7071))),
    ),
    Case(
        "exif_mistyped",
        "JPEG, Orientation 6 and ResolutionUnit stored as ASCII",
        (200, None),
        lambda: _inline(_bombs().exif_jpeg(6, {0x0128: (2, b"2\x00")})),
    ),
    Case(
        "top_k_5000_digits",
        "top_k as a 5000-digit string",
        (400, "invalid_top_k"),
        lambda: {"url": "http://example.com/x.jpg", "top_k": "9" * 5000},
    ),
    Case(
        "json_5000_digit_int",
        "proxy JSON body with a 5000-digit top_k",
        (400, "invalid_json"),
        lambda: _proxy('{"url": "http://example.com/x.jpg", "top_k": ' + "9" * 5000 + "}"),
    ),
    Case(
        "json_deep",
        "proxy JSON body nested 100000 deep",
        (400, "invalid_json"),
        lambda: _proxy("[" * 100_000 + "]" * 100_000),
    ),
    Case(
        "surrogate_path",
        "URL path with a lone surrogate",
        (400, "invalid_url"),
        lambda: {"url": "http://example.com/a\ud800.jpg"},
    ),
    Case(
        "surrogate_host",
        "URL host with a lone surrogate (its log line used to be lost)",
        (400, "invalid_url"),
        _surrogate_host,
    ),
    Case(
        "surrogate_body",
        "proxy text body with a lone surrogate",
        (400, "invalid_body"),
        lambda: _proxy('{"url": "\ud800"}'),
    ),
    Case(
        "http_chunk_minus_one",
        "chunk size -1, then 200 MB",
        (502, "upstream_error"),
        None,
        (CHUNKED_HEAD + b"-1\r\n", b"x", 200 << 20),
    ),
    Case(
        "http_trailers",
        "a 4-byte chunked body, then 300 MB of trailers",
        (413, "image_too_large_bytes"),
        None,
        (CHUNKED_HEAD + b"4\r\nabcd\r\n0\r\n", b"X-T: 0123456789\r\n", 300 << 20),
    ),
    Case(
        "http_batch_16x10mb",
        "a batch of 16 URLs, each a 10 MB body at the byte cap (not an image): the most a batch holds",
        (200, None),
        None,
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n", b"\x00" * 4096, 10 << 20),
        batch=16,
    ),
    Case(
        "http_batch_16_jpeg_at_cap",
        "a batch of 16 URLs, each the largest accepted progressive JPEG: the slowest batch to decode",
        (200, None),
        None,
        _served_jpeg_at_cap,
        batch=16,
    ),
    Case(
        "http_100_continue",
        "100 MB of '100 Continue' responses",
        (413, "image_too_large_bytes"),
        None,
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n", 100 << 20),
    ),
]


# ---------------------------------------------------------------- the child: one case, measured


@contextlib.contextmanager
def serve_flood(prefix: bytes, unit: bytes, total: int):
    """A raw loopback HTTP server answering every connection with ``prefix`` then ``unit`` repeated."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    block = unit * max(1, FLOOD_BLOCK // len(unit))

    def answer(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request
                conn.sendall(prefix)
                for _ in range(total // len(block)):
                    if stop.is_set():
                        return
                    conn.sendall(block)
            except OSError:
                pass  # the client hung up: the point of the case

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _reset_peak() -> str:
    """Reset the kernel's peak-RSS mark; returns how peaks are measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_kb(method: str) -> int:
    if method == "VmHWM":
        return record.proc_status_kb("VmHWM") or 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _warm(app) -> dict:
    from PIL import Image

    from tests.fixtures.bombs import mpo_jpeg
    from tests.fixtures.images import encode

    image = Image.new("RGB", (64, 48), (200, 30, 30))
    for data in [encode(image, fmt) for fmt in ("PNG", "JPEG", "WEBP", "GIF")] + [mpo_jpeg()]:
        app.lambda_handler(_inline(data), SimpleNamespace(aws_request_id="warm"))
    return _inline(encode(image, "PNG"))


def _status_of(response: dict) -> tuple[int, str | None]:
    body = json.loads(response["body"]) if "statusCode" in response else response
    if "error" in body:
        return body["error"]["status"], body["error"]["code"]
    return 200, None


def run_child(name: str, model: Path) -> dict:
    case = next(c for c in CASES if c.name == name)
    os.environ.update(MODEL_PATH=str(model), NUM_THREADS="1")
    import lambda_function.app as app

    ordinary = _warm(app)
    with contextlib.ExitStack() as stack:
        if case.flood is not None:
            flood = case.flood() if callable(case.flood) else case.flood
            host = stack.enter_context(serve_flood(*flood))
            os.environ["FETCH_ALLOWED_HOSTS"] = host
            url = f"http://{host}/image.jpg"
            event = {"urls": [url] * case.batch} if case.batch else {"url": url}
        else:
            event = case.build()
        event_bytes = len(json.dumps(event, ensure_ascii=True))
        gc.collect()
        method = _reset_peak()
        rss_before = record.proc_status_kb("VmRSS") or _peak_kb(method)
        captured = io.StringIO()
        cpu, wall = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(captured):  # the handler's log lines
            response = app.lambda_handler(event, SimpleNamespace(aws_request_id="bomb"))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak = _peak_kb(method)
    status, code = _status_of(response)
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]
    with contextlib.redirect_stdout(io.StringIO()):
        next_status = _status_of(app.lambda_handler(ordinary, SimpleNamespace(aws_request_id="next")))[0]
    return {
        "case": name,
        "what": case.what,
        "event_bytes": event_bytes,
        "expected": f"{case.expect[0]} {case.expect[1] or ''}".strip(),
        "got": f"{status} {code or ''}".strip(),
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "peak_rss_growth_mb": round(max(0, peak - rss_before) / 1024, 1),
        "request_log_lines": sum(1 for line in lines if line.get("message") == "request"),
        "next_request_status": next_status,
        "peak_method": method,
    }


# ---------------------------------------------------------------- the parent: one process per case


@dataclass
class Row:
    case: str
    what: str
    event_bytes: int
    expected: str
    got: str
    cpu_s: float
    wall_s: float
    peak_rss_growth_mb: float
    request_log_lines: int
    next_request_status: int
    peak_method: str

    @property
    def ok(self) -> bool:
        refused = not self.expected.startswith("200")
        within = not refused or (self.cpu_s < TARGET_CPU_S and self.peak_rss_growth_mb < TARGET_RSS_GROWTH_MB)
        return (
            self.got == self.expected
            and within
            and self.request_log_lines == 1
            and self.next_request_status == 200
        )


def run_case(name: str, model: Path) -> Row:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--model", str(model)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=REPO_ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return Row(**json.loads(line[len("RESULT ") :]))
    raise RuntimeError(f"case {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def print_table(rows: list[Row]) -> None:
    header = f"{'case':<26} {'expected':<26} {'got':<26} {'cpu s':>6} {'wall s':>7} {'+RSS MB':>8}"
    header += f" {'logs':>4} {'next':>4}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.case:<26} {r.expected:<26} {r.got:<26} {r.cpu_s:>6.3f} {r.wall_s:>7.3f} "
            f"{r.peak_rss_growth_mb:>8.1f} {r.request_log_lines:>4} {r.next_request_status:>4}"
            + ("" if r.ok else "  <-- FAIL")
        )


def draw(figure, report: dict) -> None:
    cpu, rss = figure.subplots(1, 2, sharey=True)
    rows = report["rows"]
    names = [row["case"] for row in rows]
    record.bars(cpu, names, [row["cpu_s"] for row in rows], "CPU s per request", TARGET_CPU_S)
    record.bars(
        rss, names, [row["peak_rss_growth_mb"] for row in rows], "peak RSS growth, MB", TARGET_RSS_GROWTH_MB
    )
    cpu.set_title("what each hostile input cost before it was refused", fontsize=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=[c.name for c in CASES], help="run only these")
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="a .tflite (default: the tiny test model)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and limits here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args.child, args.model)), flush=True)
        return 0

    from lambda_function.events import MAX_BATCH_URLS, MAX_INLINE_IMAGE_BYTES
    from lambda_function.fetch import FetchLimits
    from lambda_function.image_budget import (
        MAX_CONTAINER_PARTS,
        MAX_DECODE_BYTES,
        MAX_JPEG_MARKERS,
        MAX_JPEG_SCANS,
    )
    from lambda_function.preprocess import MAX_PIXELS

    rows = []
    for case in [c for c in CASES if not args.case or c.name in args.case]:
        print(f"{case.name}: {case.what}", file=sys.stderr, flush=True)
        rows.append(run_case(case.name, args.model))
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        limits = {
            "max_pixels": MAX_PIXELS,
            "max_jpeg_scans": MAX_JPEG_SCANS,
            "max_jpeg_markers": MAX_JPEG_MARKERS,
            "max_container_parts": MAX_CONTAINER_PARTS,
            "max_decode_bytes": MAX_DECODE_BYTES,
            "max_inline_image_bytes": MAX_INLINE_IMAGE_BYTES,
            "max_batch_urls": MAX_BATCH_URLS,
            "fetch": asdict(FetchLimits()),
        }
        report = {
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "limits": limits,
            "targets": {"cpu_s": TARGET_CPU_S, "peak_rss_growth_mb": TARGET_RSS_GROWTH_MB},
            "rows": [asdict(r) | {"ok": r.ok} for r in rows],
        }
        record.write(args.json, report, draw)
        print(f"wrote {args.json}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

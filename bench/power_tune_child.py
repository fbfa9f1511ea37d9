"""One Lambda instance for ``bench.power_tune``: init (import the app, load the model), then events.

Started by power_tune inside a cgroup of one Lambda memory size, with MODEL_PATH, NUM_THREADS and the
loopback HTTP / moto S3 environment set. argv[1] is JSON: {"events": [...], "images_per_event": n}.
The first event answers the cold start (power_tune times it from the process start); the others are the
warm figures. Protocol lines on stdout start with PROTOCOL_PREFIX (the handler's own log lines go there
too); "first" right after the first answer, "done" with every warm duration at the end.
"""

from __future__ import annotations

import json
import sys
import time

from bench import record

PROTOCOL_PREFIX = "POWER-TUNE "


def succeeded(answer: dict, images: int) -> bool:
    """True when ``answer`` classified all ``images``: a direct call's labels, a Map batch's summary."""
    if "summary" in answer:
        return answer["summary"].get("Succeeded") == images
    return "error" not in answer and bool(answer.get("predictions") or answer.get("labels"))


def emit(kind: str, **fields) -> None:
    print(PROTOCOL_PREFIX + json.dumps({"kind": kind, **fields}), flush=True)


def peak_rss_mb() -> float:
    return (record.proc_status_kb("VmHWM") or 0) / 1024


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    spec = json.loads(argv[1])
    events, per_event = spec["events"], spec["images_per_event"]
    from lambda_function.app import lambda_handler  # Lambda's init phase: libraries and the model

    init_s = time.perf_counter() - started
    answer = lambda_handler(events[0])
    emit("first", init_s=round(init_s, 3), ok=succeeded(answer, per_event))
    durations_ms, failures = [], 0
    for event in events[1:]:
        began = time.perf_counter()
        answer = lambda_handler(event)
        durations_ms.append(round((time.perf_counter() - began) * 1000, 2))
        failures += not succeeded(answer, per_event)
    emit("done", durations_ms=durations_ms, failures=failures, peak_rss_mb=round(peak_rss_mb(), 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

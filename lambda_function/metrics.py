"""CloudWatch Embedded Metric Format (EMF) for the request log line.

The handler logs one JSON line per request; adding an ``_aws`` block to it makes CloudWatch Logs turn
that line into metrics, with no API call, no extra latency and no permission beyond writing logs.
Metrics (namespace :data:`NAMESPACE`):

* by ``ModelId`` and ``EventKind``: ``Requests``, ``Errors`` (requests answered with status >= 400),
  ``Latency`` (the whole handler) and, when the request got that far, ``FetchLatency``,
  ``PreprocessLatency``, ``InferenceLatency``; for batches ``BatchItems`` and ``BatchItemErrors``;
  when a confidence threshold was in force (MIN_CONFIDENCE or a request's ``min_confidence``),
  ``LowConfidence``: the images answered "not sure" (0 when every one was confident);
* by ``EventKind`` and ``StatusCode``: ``Requests``;
* by ``EventKind`` and ``ErrorCode`` (error responses only): ``Errors``.

Every dimension value is bounded (a custom metric costs money per distinct combination): the model id
is a 12-character hash prefix (one per deployed model), the rest must match a short token pattern or
become ``"other"``. Nothing from the request itself (hosts, URLs) is ever a dimension.
"""

from __future__ import annotations

import re
import time

EMF_KEY = "_aws"
NAMESPACE = "EdgeClothingClassifier"
OTHER = "other"
# ModelId when no model is loaded (the request failed with model_unavailable).
NO_MODEL = "unavailable"
_MODEL_ID = re.compile(r"[0-9a-f]{6,64}")
# Event kinds and error codes are identifiers the code defines (events.py, ServingError codes).
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,39}")
_STATUS = re.compile(r"[1-5][0-9]{2}")
# Phase timings the handler logs (service.classify_bytes: timings_ms) -> metric names.
PHASES = {"fetch": "FetchLatency", "preprocess": "PreprocessLatency", "inference": "InferenceLatency"}


def bounded(value: object, pattern: re.Pattern = _TOKEN) -> str:
    """``value`` as a dimension value if it matches ``pattern``, else :data:`OTHER`."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return text if pattern.fullmatch(text) else OTHER


def request_metrics(fields: dict, now_ms: int | None = None) -> dict:
    """The EMF members for the request log line described by ``fields`` (see app.lambda_handler).

    Returns top-level members to merge into the line: ``_aws``, the dimension values and the metric
    values. Uses ``kind``, ``status``, ``code``, ``model``, ``duration_ms``, ``timings_ms``, ``statuses``,
    ``low_confidence``.
    """
    status = fields.get("status", 500)
    failed = not isinstance(status, int) or status >= 400  # a status we cannot read is not a success
    model = fields.get("model")
    members: dict = {
        "ModelId": bounded(model, _MODEL_ID) if model else NO_MODEL,
        "EventKind": bounded(fields.get("kind")),
        "StatusCode": bounded(status, _STATUS),
        "Requests": 1,
        "Errors": 1 if failed else 0,
    }
    main = [("Requests", "Count"), ("Errors", "Count")]
    if isinstance(fields.get("duration_ms"), int | float):
        members["Latency"] = fields["duration_ms"]
        main.append(("Latency", "Milliseconds"))
    timings = fields.get("timings_ms")
    for phase, name in PHASES.items():
        if isinstance(timings, dict) and isinstance(timings.get(phase), int | float):
            members[name] = timings[phase]
            main.append((name, "Milliseconds"))
    statuses = fields.get("statuses")
    if isinstance(statuses, list):
        members["BatchItems"] = len(statuses)
        members["BatchItemErrors"] = sum(1 for s in statuses if s != 200)
        main += [("BatchItems", "Count"), ("BatchItemErrors", "Count")]
    low = fields.get("low_confidence")
    if isinstance(low, int) and not isinstance(low, bool):
        members["LowConfidence"] = low
        main.append(("LowConfidence", "Count"))

    directives = [
        _directive([["ModelId", "EventKind"]], main),
        _directive([["EventKind", "StatusCode"]], [("Requests", "Count")]),
    ]
    if failed:
        members["ErrorCode"] = bounded(fields.get("code"))
        directives.append(_directive([["EventKind", "ErrorCode"]], [("Errors", "Count")]))
    timestamp = int(time.time() * 1000) if now_ms is None else now_ms
    return {EMF_KEY: {"Timestamp": timestamp, "CloudWatchMetrics": directives}, **members}


def _directive(dimensions: list[list[str]], metrics: list[tuple[str, str]]) -> dict:
    return {
        "Namespace": NAMESPACE,
        "Dimensions": dimensions,
        "Metrics": [{"Name": name, "Unit": unit} for name, unit in metrics],
    }

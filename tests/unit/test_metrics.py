"""The request log line carries CloudWatch metrics (EMF) with bounded dimensions."""

from __future__ import annotations

import json
import logging

from lambda_function import logging_json
from lambda_function.metrics import NAMESPACE, OTHER, request_metrics
from tests.fixtures.emf import parse_emf

CONTEXT = type("Context", (), {"aws_request_id": "req-emf"})()


def request_line(capsys) -> dict:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (line,) = [line for line in lines if line["message"] == "request"]
    return line


def test_a_successful_request_reports_latency_per_phase(app, allowed_server, red_png, capsys):
    url = allowed_server.add("/red.png", red_png)
    capsys.readouterr()

    app.lambda_handler({"url": url}, CONTEXT)

    line = request_line(capsys)
    metrics = parse_emf(line)
    model = app.get_classifier().model_id
    by_model = (("ModelId", model), ("EventKind", "direct"))
    assert metrics[("Requests", by_model)] == 1 and metrics[("Errors", by_model)] == 0
    assert metrics[("Latency", by_model)] == line["duration_ms"]
    for phase, name in (
        ("fetch", "FetchLatency"),
        ("preprocess", "PreprocessLatency"),
        ("inference", "InferenceLatency"),
    ):
        assert metrics[(name, by_model)] == line["timings_ms"][phase]
    assert metrics[("Requests", (("EventKind", "direct"), ("StatusCode", "200")))] == 1
    assert "ErrorCode" not in line
    assert {d["Namespace"] for d in line["_aws"]["CloudWatchMetrics"]} == {NAMESPACE}
    # The line keeps its own fields next to the metrics.
    assert line["request_id"] == "req-emf" and line["status"] == 200 and line["model"] == model


def test_an_error_is_counted_by_its_code(app, capsys):
    capsys.readouterr()

    app.lambda_handler({"top_k": 2}, CONTEXT)

    line = request_line(capsys)
    metrics = parse_emf(line)
    assert metrics[("Errors", (("EventKind", "direct"), ("ErrorCode", "missing_url")))] == 1
    assert metrics[("Requests", (("EventKind", "direct"), ("StatusCode", "400")))] == 1
    assert metrics[("Errors", (("ModelId", line["model"]), ("EventKind", "direct")))] == 1
    assert not any(name.endswith("Latency") and name != "Latency" for name, _ in metrics)


def test_a_batch_counts_its_failed_items(app, allowed_server, red_png, capsys):
    good = allowed_server.add("/red.png", red_png)
    missing = allowed_server.url("/missing.png")
    capsys.readouterr()

    app.lambda_handler({"urls": [good, missing, good]}, CONTEXT)

    line = request_line(capsys)
    metrics = parse_emf(line)
    by_model = (("ModelId", line["model"]), ("EventKind", "batch"))
    assert metrics[("BatchItems", by_model)] == 3 and metrics[("BatchItemErrors", by_model)] == 1
    assert metrics[("Errors", by_model)] == 0  # the invocation itself succeeded


def test_without_a_model_the_model_dimension_says_so(app, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "gone.tflite"))
    app.reset_for_tests()
    capsys.readouterr()

    app.lambda_handler({"url": "https://example.com/x.jpg"}, CONTEXT)

    metrics = parse_emf(request_line(capsys))
    assert metrics[("Errors", (("ModelId", "unavailable"), ("EventKind", "direct")))] == 1
    assert metrics[("Errors", (("EventKind", "direct"), ("ErrorCode", "model_unavailable")))] == 1


def test_dimension_values_stay_bounded():
    hostile = {
        "kind": "direct\n" + "x" * 5000,
        "status": "999",
        "code": "Robert'); DROP TABLE",
        "model": "not-a-hash",
        "duration_ms": 1.5,
        "timings_ms": {"fetch": "fast"},
    }

    members = request_metrics(hostile)

    assert members["EventKind"] == OTHER and members["StatusCode"] == OTHER
    assert members["ErrorCode"] == OTHER and members["ModelId"] == OTHER
    assert "FetchLatency" not in members
    parse_emf(members)


def test_lambda_json_log_format_hands_records_to_the_runtime(monkeypatch):
    assert logging_json.lambda_json_logs({"AWS_LAMBDA_LOG_FORMAT": "JSON"})
    assert not logging_json.lambda_json_logs({"AWS_LAMBDA_LOG_FORMAT": "Text"})
    assert not logging_json.lambda_json_logs({})

    records: list[logging.LogRecord] = []

    class Runtime(logging.Handler):  # stands in for the runtime's root handler (awslambdaric's)
        def emit(self, record):
            records.append(record)

    runtime = Runtime()
    root = logging.getLogger()
    root.addHandler(runtime)
    monkeypatch.setenv("AWS_LAMBDA_LOG_FORMAT", "JSON")
    try:
        logger = logging_json.get_logger("json_format_probe")  # outside our logger tree
        logger.info("request", extra=request_metrics({"kind": "direct", "status": 200}))
    finally:
        root.removeHandler(runtime)

    assert logger.propagate and not logger.handlers
    (record,) = records
    assert record.EventKind == "direct" and record._aws["CloudWatchMetrics"]

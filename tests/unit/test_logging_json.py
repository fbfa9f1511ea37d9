"""lambda_function.logging_json: one ASCII JSON line per record, whatever the record holds."""

from __future__ import annotations

import json
import logging
import os

import pytest

from lambda_function.logging_json import JsonFormatter, get_logger


def formatted(msg: str = "request", args: tuple = (), **extra) -> str:
    record = logging.makeLogRecord({"msg": msg, "args": args, "levelname": "INFO", **extra})
    return JsonFormatter().format(record)


def deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def test_non_ascii_and_lone_surrogates_are_escaped():
    line = formatted(hosts=["\ud800example", "b\u00e9"])
    assert line.isascii() and "\n" not in line
    assert json.loads(line)["hosts"] == ["\ud800example", "b\u00e9"]


@pytest.mark.parametrize(
    ("field", "value"), [("top_k", 10**5000), ("nested", deep(100_000))], ids=["huge-int", "deep-list"]
)
def test_a_field_that_cannot_be_written_is_replaced_not_the_line_lost(field, value):
    entry = json.loads(formatted(status=400, **{field: value}))
    assert entry["message"] == "request" and entry["status"] == 400
    assert entry[field].startswith("<unloggable")


def test_a_bad_format_string_keeps_its_template():
    assert json.loads(formatted("value %d", ("not a number",)))["message"] == "value %d"


def test_under_lambdas_json_log_format_a_lone_surrogate_does_not_lose_the_line(tmp_path, monkeypatch):
    # The runtime's own formatter and framed log sink (awslambdaric, as on Lambda with LogFormat JSON):
    # it keeps non-ASCII text and encodes each frame as strict UTF-8.
    from awslambdaric.bootstrap import FramedTelemetryLogSink, LambdaLoggerHandlerWithFrameType
    from awslambdaric.lambda_runtime_log_utils import JsonFormatter as RuntimeJsonFormatter

    telemetry = tmp_path / "telemetry"
    root = logging.getLogger()
    with FramedTelemetryLogSink(os.open(telemetry, os.O_WRONLY | os.O_CREAT)) as sink:
        handler = LambdaLoggerHandlerWithFrameType(sink)
        handler.setFormatter(RuntimeJsonFormatter())
        root.addHandler(handler)
        monkeypatch.setenv("AWS_LAMBDA_LOG_FORMAT", "JSON")
        try:
            get_logger("surrogate_probe").info(
                "request", extra={"hosts": ["\ud800example", "b\u00e9"], "status": 400}
            )
        finally:
            root.removeHandler(handler)

    data = telemetry.read_bytes()
    length = int.from_bytes(data[4:8], "big")  # frame: type (4 bytes), length (4), timestamp (8), message
    assert len(data) == 16 + length, "exactly one frame"
    entry = json.loads(data[16:].decode("utf-8"))
    assert (entry["message"], entry["status"]) == ("request", 400)
    assert entry["hosts"] == ["\\ud800example", "b\u00e9"]

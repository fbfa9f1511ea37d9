"""lambda_function.logging_json: one ASCII JSON line per record, whatever the record holds."""

from __future__ import annotations

import json
import logging

import pytest

from lambda_function.logging_json import JsonFormatter


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

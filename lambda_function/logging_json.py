"""One JSON object per log line, so CloudWatch Logs Insights can filter on fields (status, code, ...).

Our logger writes to stdout with its own handler and does not propagate: the Lambda runtime's root
handler would otherwise wrap each line in its own text format. Under Lambda's JSON log format
(template.yaml ``LoggingConfig``) the runtime's own JSON handler writes our records instead, with its
request id: see :func:`lambda_json_logs`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback

LOGGER_NAME = "lambda_function"
# Env LOG_LEVEL (DEBUG, INFO, WARNING, ERROR); INFO logs one line per request.
DEFAULT_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
# Attributes every LogRecord has; anything else was passed through ``extra=`` and becomes a field.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# The one underscore field kept: CloudWatch's Embedded Metric Format block (metrics.py).
_KEPT_PRIVATE = frozenset({"_aws"})
# How deep Utf8SafeFilter looks into a field's lists and dicts (ours are two levels deep at most).
_MAX_SAFE_DEPTH = 8


def lambda_json_logs(environ: os._Environ | dict = os.environ) -> bool:
    """True when the Lambda runtime formats logs itself as JSON (``LoggingConfig: LogFormat: JSON``).

    The runtime then writes each record as one JSON object with its own fields (timestamp, level,
    requestId) plus our ``extra=`` fields, so our handler steps aside and records propagate to it.
    """
    return environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"


class JsonFormatter(logging.Formatter):
    """One line of JSON per record, pure ASCII, whatever the record's strings hold.

    ASCII because a client's URL can carry a lone surrogate ("\\ud800" in JSON): written as UTF-8 it
    makes the stream raise, logging swallows the error and the request's line is lost. And any field
    that cannot be serialised at all is replaced rather than losing the whole line.
    """

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format: keep the template
            message = _serialisable(record.msg if isinstance(record.msg, str) else repr(record.msg))
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": message,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and (not key.startswith("_") or key in _KEPT_PRIVATE):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            entry["error_type"] = exc_type.__name__
            entry["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            return json.dumps(entry, default=str, ensure_ascii=True)
        except Exception:  # e.g. an int over 4300 digits, a structure nested too deep, a failing __str__
            return json.dumps({key: _serialisable(value) for key, value in entry.items()}, ensure_ascii=True)


def _serialisable(value: object) -> object:
    try:
        json.dumps(value, default=str)
    except Exception:
        return f"<unloggable {type(value).__name__}>"
    return value


class Utf8SafeFilter(logging.Filter):
    """Makes every string a record carries encodable as UTF-8, for handlers that are not ours.

    The Lambda runtime's JSON formatter keeps non-ASCII text and its log sink encodes each line as
    strict UTF-8: one lone surrogate from a client's URL ("\\ud800") and the request's line is lost.
    A filter on our logger runs before the record propagates to the runtime's handler, so it can
    escape them (as ``\\ud800`` text) in the message, its arguments and every ``extra=`` field.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in list(vars(record).items()):
            if key == "msg" or key == "args" or key not in _STANDARD_ATTRS:
                setattr(record, key, _utf8_safe(value))
        return True


def _utf8_safe(value: object, depth: int = 0) -> object:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if depth > _MAX_SAFE_DEPTH:  # a structure this deep is replaced by the formatter anyway
        return value
    if isinstance(value, list | tuple):
        return type(value)(_utf8_safe(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return {_utf8_safe(k, depth + 1): _utf8_safe(v, depth + 1) for k, v in value.items()}
    return value


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a test's capture, the CLI's redirect)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


def get_logger(name: str = LOGGER_NAME, level: int | str = DEFAULT_LEVEL) -> logging.Logger:
    """The package logger, configured once (safe to call at every import).

    Under Lambda's JSON log format (and once its runtime has set up the root logger) records go to the
    runtime's handler; elsewhere (CLI, tests, Lambda's text format) to stdout through JsonFormatter.
    """
    logger = logging.getLogger(name)
    if lambda_json_logs() and logging.getLogger().handlers:
        known = isinstance(level, int) or level in logging.getLevelNamesMapping()
        logger.setLevel(level if known else "INFO")
        logger.propagate = True
        if not any(isinstance(f, Utf8SafeFilter) for f in logger.filters):
            logger.addFilter(Utf8SafeFilter())
        return logger
    if not any(isinstance(h, StdoutHandler) for h in logger.handlers):
        handler = StdoutHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        known = isinstance(level, int) or level in logging.getLevelNamesMapping()
        logger.setLevel(level if known else "INFO")
        logger.propagate = False
    return logger

"""One JSON object per log line, so CloudWatch Logs Insights can filter on fields (status, code, ...).

Our logger writes to stdout with its own handler and does not propagate: the Lambda runtime's root
handler would otherwise wrap each line in its own text format.
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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            entry["error_type"] = exc_type.__name__
            entry["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
        return json.dumps(entry, default=str, ensure_ascii=False)


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
    """The package logger, configured once (safe to call at every import)."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, StdoutHandler) for h in logger.handlers):
        handler = StdoutHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        known = isinstance(level, int) or level in logging.getLevelNamesMapping()
        logger.setLevel(level if known else "INFO")
        logger.propagate = False
    return logger

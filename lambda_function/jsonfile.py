"""The small JSON files that travel with a model: its metadata sidecar and labels.json.

The runtime, the converter and the exporter all read them; this module decides once what a readable
file and a valid label list are, and each caller turns the message into its own error type
(a 500 ``model_unavailable`` when serving, ``SidecarError`` or ``ModelLoadError`` when converting).
"""

from __future__ import annotations

import json
from pathlib import Path


class JSONFileError(ValueError):
    """A JSON file is missing, unreadable, or not the shape asked for; the message names the file."""


def read_json(path: str | Path, what: str) -> object:
    """The parsed contents of ``path``; ``what`` names the file in messages ("Labels file", ...)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JSONFileError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JSONFileError(f"{what} {path} could not be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONFileError(f"{what} {path} is not valid JSON: {exc}") from None


def read_json_object(path: str | Path, what: str, required: tuple[str, ...] = ()) -> dict:
    """``read_json`` for files that must hold one JSON object with at least the ``required`` keys."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise JSONFileError(f"{what} {path} must hold a JSON object, not {type(value).__name__}.")
    missing = [key for key in required if key not in value]
    if missing:
        raise JSONFileError(f"{what} {path} lacks: {', '.join(missing)}.")
    return value


def labels_problem(labels: object) -> str | None:
    """Why ``labels`` is not a usable class list (non-empty, distinct, non-empty strings), or None."""
    if not isinstance(labels, list) or not labels:
        return "labels must be a non-empty list of class names"
    if not all(isinstance(label, str) and label for label in labels):
        return "labels must all be non-empty strings"
    if len(set(labels)) != len(labels):
        return "labels are not unique: a class name is listed twice"
    return None

"""Lambda events -> a :class:`Request`, and response bodies -> the shape each event kind expects.

Pure functions, no I/O. Event kinds:

- ``direct``: ``{"url": "...", "top_k": 3}`` (``aws lambda invoke``, SDKs, other functions)
- ``batch``: ``{"urls": ["...", ...], "top_k": 3}``, at most :data:`MAX_BATCH_URLS`
- ``proxy_v1``: API Gateway REST proxy integration
- ``proxy_v2``: API Gateway HTTP API and Lambda Function URLs (payload format 2.0)

A proxy body is either JSON (``{"url": ...}`` or ``{"urls": [...]}``, optional ``top_k``) or the image
itself, raw or base64 (``isBase64Encoded``). A GET may pass ``?url=...&top_k=...`` instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lambda_function.errors import ServingError

DEFAULT_TOP_K = 3
# Each URL costs a fetch and an inference within one invocation's timeout.
MAX_BATCH_URLS = 16
# Lambda refuses synchronous payloads over 6 MB anyway; an inline image over this is refused early.
MAX_INLINE_IMAGE_BYTES = 6 * 1024 * 1024
# Longer than any URL fetch.py accepts; only bounds what we echo back in messages.
MAX_ECHO_CHARS = 80
# More digits than any top_k can have: int() of a longer string is skipped (Python refuses 4300+).
MAX_TOP_K_DIGITS = 6

DIRECT, BATCH, PROXY_V1, PROXY_V2 = "direct", "batch", "proxy_v1", "proxy_v2"
PROXY_KINDS = frozenset({PROXY_V1, PROXY_V2})
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Request:
    """What to classify: URLs (``urls``) or one inline image (``image``), and how many labels to return."""

    kind: str
    urls: tuple[object, ...] = ()
    image: bytes | None = None
    top_k: int = DEFAULT_TOP_K
    # True when the caller sent a list: the response is {"results": [...]} even for one URL.
    batch: bool = False

    @property
    def is_proxy(self) -> bool:
        return self.kind in PROXY_KINDS


def event_kind(event: object) -> str:
    """Which kind of event this is; never raises, so even a malformed event gets the right response shape."""
    if isinstance(event, dict):
        if event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict):
            return PROXY_V2
        if "httpMethod" in event and "requestContext" in event:
            return PROXY_V1
        if "urls" in event:
            return BATCH
    return DIRECT


def parse_event(event: object, num_labels: int) -> Request:
    """Validate ``event`` and return the :class:`Request`; raise ServingError(400/413) if malformed.

    ``num_labels`` bounds ``top_k``. URLs inside a batch are not validated here: a bad one fails alone.
    """
    kind = event_kind(event)
    if kind in PROXY_KINDS:
        return _parse_proxy(event, kind, num_labels)
    if not isinstance(event, dict):
        raise ServingError(400, "invalid_request", "The event must be a JSON object with a 'url' or 'urls'.")
    return _parse_json_request(event, kind, num_labels)


def check_url(value: object) -> str:
    """``value`` if it is a non-empty string, else ServingError(400); fetch.py checks the rest."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None:
        raise ServingError(400, "missing_url", "The request needs a 'url' (a string).")
    raise ServingError(400, "invalid_url", f"The 'url' must be a non-empty string, not {_describe(value)}.")


def respond(kind: str, status: int, body: dict) -> dict:
    """The handler's return value: the body itself, or an HTTP proxy response wrapping it."""
    if kind not in PROXY_KINDS:
        return body
    return {
        "statusCode": status,
        "headers": dict(JSON_HEADERS),
        "body": json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        "isBase64Encoded": False,
    }


def _parse_json_request(payload: dict, kind: str, num_labels: int) -> Request:
    top_k = parse_top_k(payload.get("top_k"), num_labels)
    has_url, has_urls = "url" in payload, "urls" in payload
    if has_url and has_urls:
        raise ServingError(400, "invalid_request", "Send either 'url' or 'urls', not both.")
    if has_urls:
        urls = payload["urls"]
        if not isinstance(urls, list):
            raise ServingError(
                400, "invalid_urls", f"'urls' must be a list of strings, not {_describe(urls)}."
            )
        if not urls:
            raise ServingError(400, "invalid_urls", f"'urls' is empty: send 1 to {MAX_BATCH_URLS} URLs.")
        if len(urls) > MAX_BATCH_URLS:
            raise ServingError(
                400, "too_many_urls", f"'urls' has {len(urls)} items; the limit is {MAX_BATCH_URLS}."
            )
        return Request(kind=kind, urls=tuple(urls), top_k=top_k, batch=True)
    return Request(kind=kind, urls=(check_url(payload.get("url")),), top_k=top_k)


def parse_top_k(value: object, num_labels: int) -> int:
    """``top_k`` from a request: an integer 1..num_labels; absent -> min(DEFAULT_TOP_K, num_labels)."""
    if value is None:
        return min(DEFAULT_TOP_K, num_labels)
    # Query strings carry text; JSON must carry a number (a bool is not one, though Python says so).
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit() and len(text) <= MAX_TOP_K_DIGITS:
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_labels:
        raise ServingError(
            400,
            "invalid_top_k",
            f"'top_k' must be an integer from 1 to {num_labels}, not {_describe(value)}.",
        )
    return value


def _parse_proxy(event: dict, kind: str, num_labels: int) -> Request:
    headers = event.get("headers")
    headers = {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
    query = event.get("queryStringParameters")
    query = query if isinstance(query, dict) else {}
    body = event.get("body")
    if body is None or body == "":
        if "url" in query:
            payload = {"url": query.get("url"), "top_k": query.get("top_k")}
            return _parse_json_request(payload, kind, num_labels)
        raise ServingError(
            400, "missing_body", "Send an image, a JSON body with a 'url', or a '?url=' query parameter."
        )
    if not isinstance(body, str):
        raise ServingError(400, "invalid_request", "The request body must be a string.")

    data = _decode_body(body, _base64_flag(event.get("isBase64Encoded")))
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if _is_json(content_type, data):
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            # ValueError: bad JSON or UTF-8, or an integer over Python's 4300-digit limit;
            # RecursionError: arrays or objects nested thousands deep.
            raise ServingError(400, "invalid_json", "The request body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise ServingError(400, "invalid_request", "The JSON body must be an object with a 'url'.")
        if "top_k" not in payload and "top_k" in query:
            payload = {**payload, "top_k": query["top_k"]}
        return _parse_json_request(payload, kind, num_labels)
    return Request(kind=kind, image=data, top_k=parse_top_k(query.get("top_k"), num_labels))


def _base64_flag(value: object) -> bool:
    """``isBase64Encoded``: a JSON boolean, absent, or the strings "true"/"false" (any case)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ServingError(
        400, "invalid_request", f"'isBase64Encoded' must be true or false, not {_describe(value)}."
    )


def _decode_body(body: str, is_base64: bool) -> bytes:
    if not is_base64:
        if len(body) > MAX_INLINE_IMAGE_BYTES:
            raise _too_large(len(body))
        # Only text survives a non-base64 proxy body; surrogateescape keeps any odd bytes as they came.
        try:
            return body.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            # A lone surrogate (JSON's "\ud800" in the event's body string): no bytes can carry it.
            raise ServingError(
                400, "invalid_body", "The request body is not valid Unicode (it has a lone surrogate)."
            ) from None
    # 4 base64 characters carry 3 bytes: refuse an oversized body before decoding it.
    if len(body) * 3 // 4 > MAX_INLINE_IMAGE_BYTES + 3:
        raise _too_large(len(body) * 3 // 4)
    import base64
    import binascii

    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(
            400, "invalid_base64", "The body is marked base64 but is not valid base64."
        ) from None
    if len(data) > MAX_INLINE_IMAGE_BYTES:
        raise _too_large(len(data))
    return data


def _is_json(content_type: str, data: bytes) -> bool:
    if content_type == "application/json" or content_type.endswith("+json"):
        return True
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return False
    # No useful Content-Type (curl --data, Function URL tests): a JSON object starts with "{".
    return data.lstrip()[:1] == b"{"


def _too_large(size: int) -> ServingError:
    return ServingError(
        413,
        "image_too_large_bytes",
        f"The inline image is about {size} bytes; the limit is {MAX_INLINE_IMAGE_BYTES} bytes.",
    )


def _describe(value: object) -> str:
    if isinstance(value, str):
        shown = value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "..."
        return repr(shown)
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large integer"  # json.dumps refuses ints over 4300 digits
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")

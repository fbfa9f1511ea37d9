"""Lambda events -> a :class:`Request`, and response bodies -> the shape each event kind expects.

Pure functions, no I/O. Event kinds:

- ``direct``: ``{"url": "...", "top_k": 3}`` (``aws lambda invoke``, SDKs, other functions)
- ``batch``: ``{"urls": ["...", ...], "top_k": 3}``, at most :data:`MAX_BATCH_URLS`
- ``proxy_v1``: API Gateway REST proxy integration
- ``proxy_v2``: API Gateway HTTP API and Lambda Function URLs (payload format 2.0)
- ``s3_notification``, ``s3_batch``, ``map_batch``: S3 objects to classify in bulk (S3 event
  notifications, S3 Batch Operations, a Step Functions Distributed Map batch); parsed into a
  :class:`BulkRequest` by :func:`parse_bulk_event` and answered by bulk.py

A proxy body is either JSON (``{"url": ...}`` or ``{"urls": [...]}``, optional ``top_k`` and
``min_confidence``) or the image itself, raw or base64 (``isBase64Encoded``). A GET may pass
``?url=...&top_k=...&min_confidence=...`` instead.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from lambda_function.errors import ServingError
from lambda_function.fetch import _echo, check_s3_location  # one echo rule for client text

DEFAULT_TOP_K = 3
# Each URL costs a fetch and an inference within one invocation's timeout.
MAX_BATCH_URLS = 16
# Lambda refuses synchronous payloads over 6 MB anyway; an inline image over this is refused early.
MAX_INLINE_IMAGE_BYTES = 6 * 1024 * 1024
# Longer than any URL fetch.py accepts; only bounds what we echo back in messages.
MAX_ECHO_CHARS = 80
# More digits than any top_k can have: int() of a longer string is skipped (Python refuses 4300+).
MAX_TOP_K_DIGITS = 6
# A "not sure" answer: the lowest top-1 score accepted as the answer, 0 < t <= 1, from the request's
# "min_confidence", else env MIN_CONFIDENCE; unset (the default) leaves every response as it was.
MIN_CONFIDENCE_ENV = "MIN_CONFIDENCE"
# Longer than any number a person writes for a threshold; bounds float() on query-string text.
MAX_MIN_CONFIDENCE_CHARS = 32

DIRECT, BATCH, PROXY_V1, PROXY_V2 = "direct", "batch", "proxy_v1", "proxy_v2"
PROXY_KINDS = frozenset({PROXY_V1, PROXY_V2})
S3_NOTIFICATION, S3_BATCH, MAP_BATCH = "s3_notification", "s3_batch", "map_batch"
BULK_KINDS = frozenset({S3_NOTIFICATION, S3_BATCH, MAP_BATCH})
# Objects per bulk event: far more than one invocation can classify in 15 minutes anyway.
MAX_BULK_ITEMS = 1000
S3_BATCH_SCHEMA_VERSIONS = ("1.0", "2.0")
# Batch Operations 1.0 names the bucket by ARN: arn:PARTITION:s3:::BUCKET (region and account empty for
# buckets; some examples fill them in). Anything else is refused, never read as a bucket name.
S3_BUCKET_ARN = re.compile(r"arn:aws(?:-cn|-us-gov)?:s3:[a-z0-9-]*:[0-9]*:(?P<bucket>[^:/]+)")
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
    # The request's own threshold (None: env MIN_CONFIDENCE, else none).
    min_confidence: float | None = None

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
        if "invocationSchemaVersion" in event and "tasks" in event:
            return S3_BATCH
        if isinstance(event.get("Records"), list) or event.get("Event") == "s3:TestEvent":
            return S3_NOTIFICATION
        if "Items" in event:
            return MAP_BATCH
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
    threshold = parse_min_confidence(payload.get("min_confidence"))
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
        return Request(kind=kind, urls=tuple(urls), top_k=top_k, batch=True, min_confidence=threshold)
    return Request(kind=kind, urls=(check_url(payload.get("url")),), top_k=top_k, min_confidence=threshold)


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


def parse_min_confidence(value: object) -> float | None:
    """``min_confidence`` from a request: a number greater than 0 and at most 1; absent -> None (off).

    Query strings carry text; JSON must carry a number (not a bool, not NaN or Infinity, which Python's
    JSON reader accepts).
    """
    if value is None:
        return None
    number = value
    if isinstance(value, str) and len(value) <= MAX_MIN_CONFIDENCE_CHARS:
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or not (isinstance(number, int) or math.isfinite(number))
        or not 0 < number <= 1
    ):
        raise ServingError(
            400,
            "invalid_min_confidence",
            f"'min_confidence' must be a number greater than 0 and at most 1, not {_describe(value)}.",
        )
    return float(number)


def min_confidence_from_env(environ) -> float | None:
    """Env MIN_CONFIDENCE (unset or empty: None); a bad value is the deployment's fault: 500 misconfigured."""
    raw = environ.get(MIN_CONFIDENCE_ENV, "").strip()
    try:
        return parse_min_confidence(raw) if raw else None
    except ServingError:
        raise ServingError(
            500,
            "misconfigured",
            f"The function is misconfigured: {MIN_CONFIDENCE_ENV} must be a number greater than 0 and "
            f"at most 1, not {_describe(raw)}.",
        ) from None


def _parse_proxy(event: dict, kind: str, num_labels: int) -> Request:
    headers = event.get("headers")
    headers = {str(k).lower(): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
    query = event.get("queryStringParameters")
    query = query if isinstance(query, dict) else {}
    body = event.get("body")
    if body is None or body == "":
        if "url" in query:
            payload = {k: query.get(k) for k in ("url", "top_k", "min_confidence")}
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
        # The body's own fields win over the query string's.
        payload = {**{k: query[k] for k in ("top_k", "min_confidence") if k in query}, **payload}
        return _parse_json_request(payload, kind, num_labels)
    return Request(
        kind=kind,
        image=data,
        top_k=parse_top_k(query.get("top_k"), num_labels),
        min_confidence=parse_min_confidence(query.get("min_confidence")),
    )


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


# ---------------------------------------------------------------- bulk: objects already in S3


@dataclass(frozen=True)
class S3Item:
    """One object to classify. ``problem`` is what is wrong with this item alone: it fails, the rest go on."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    task_id: str | None = None  # S3 Batch Operations answers per task
    problem: ServingError | None = None


@dataclass(frozen=True)
class BulkRequest:
    kind: str
    items: tuple[S3Item, ...]
    top_k: int = DEFAULT_TOP_K
    invocation_id: str | None = None  # S3 Batch Operations: echoed back with its schema version
    schema_version: str | None = None
    job_id: str | None = None
    # The job's own threshold (S3 Batch Operations userArguments, Distributed Map BatchInput).
    min_confidence: float | None = None


def parse_bulk_event(event: dict, kind: str, num_labels: int) -> BulkRequest:
    """The objects a bulk event names; ServingError(400) only when the event as a whole is unusable."""
    parser = {S3_NOTIFICATION: _parse_s3_notification, S3_BATCH: _parse_s3_batch, MAP_BATCH: _parse_map_batch}
    return parser[kind](event, num_labels)


def _parse_s3_notification(event: dict, num_labels: int) -> BulkRequest:
    # S3 sends s3:TestEvent (no Records) when a notification is configured: nothing to do.
    records = event.get("Records") or []
    items = []
    for record in _bulk_list(records, "Records"):
        record = record if isinstance(record, dict) else {}
        s3 = record.get("s3")
        if record.get("eventSource") != "aws:s3" or not isinstance(s3, dict):
            raise ServingError(400, "invalid_event", "'Records' must be S3 event notification records.")
        if not str(record.get("eventName", "ObjectCreated:")).startswith("ObjectCreated:"):
            continue  # a deletion or restore notification: no new image to classify
        bucket = _get_path(s3, "bucket", "name")
        obj = s3.get("object") if isinstance(s3.get("object"), dict) else {}
        # Notification keys are URL-encoded with "+" for spaces.
        items.append(_item(bucket, obj.get("key"), obj.get("versionId"), obj.get("eTag"), obj.get("size")))
    return BulkRequest(S3_NOTIFICATION, tuple(items), min(DEFAULT_TOP_K, num_labels))


def _parse_s3_batch(event: dict, num_labels: int) -> BulkRequest:
    version = event.get("invocationSchemaVersion")
    if version not in S3_BATCH_SCHEMA_VERSIONS:
        raise ServingError(
            400, "invalid_event", f"invocationSchemaVersion {_describe(version)} is not one of 1.0, 2.0."
        )
    invocation_id = event.get("invocationId")
    if not isinstance(invocation_id, str) or not invocation_id:
        raise ServingError(400, "invalid_event", "The batch event needs an 'invocationId' (a string).")
    job = event.get("job") if isinstance(event.get("job"), dict) else {}
    arguments = job.get("userArguments") if version == "2.0" else None
    arguments = arguments if isinstance(arguments, dict) else {}
    top_k = parse_top_k(arguments.get("top_k"), num_labels)
    threshold = parse_min_confidence(arguments.get("min_confidence"))
    items = []
    for task in _bulk_list(event.get("tasks"), "tasks"):
        task_id = task.get("taskId") if isinstance(task, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise ServingError(400, "invalid_event", "Every task needs a 'taskId' (a string).")
        problem = None
        if version == "1.0":
            arn = task.get("s3BucketArn")
            match = S3_BUCKET_ARN.fullmatch(arn) if isinstance(arn, str) else None
            bucket = match["bucket"] if match else None
            if match is None:
                shown = _echo(arn) if isinstance(arn, str) else _describe(arn)
                problem = f"{shown!r} is not an S3 bucket ARN (arn:aws:s3:::BUCKET)."
        else:
            bucket = task.get("s3Bucket")
        # Batch Operations passes keys URL-encoded, as they are in its CSV manifest.
        items.append(
            _item(bucket, task.get("s3Key"), task.get("s3VersionId"), task_id=task_id, problem=problem)
        )
    return BulkRequest(
        S3_BATCH,
        tuple(items),
        top_k,
        invocation_id=invocation_id,
        schema_version=version,
        job_id=job.get("id") if isinstance(job.get("id"), str) else None,
        min_confidence=threshold,
    )


def _parse_map_batch(event: dict, num_labels: int) -> BulkRequest:
    # {"Items": [...], "BatchInput": {"bucket": ..., "top_k": ..., "min_confidence": ...}} from an
    # ItemBatcher over s3:listObjectsV2.
    batch_input = event.get("BatchInput") if isinstance(event.get("BatchInput"), dict) else {}
    bucket = batch_input.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        raise ServingError(400, "invalid_event", "A Distributed Map batch needs 'BatchInput.bucket'.")
    top_k = parse_top_k(batch_input.get("top_k"), num_labels)
    threshold = parse_min_confidence(batch_input.get("min_confidence"))
    items = []
    for entry in _bulk_list(event.get("Items"), "Items"):
        entry = entry if isinstance(entry, dict) else {}
        # listObjectsV2 keys are verbatim, not URL-encoded.
        key = entry.get("Key")
        items.append(_item(bucket, key, None, entry.get("Etag"), entry.get("Size"), decode=False))
    return BulkRequest(MAP_BATCH, tuple(items), top_k, min_confidence=threshold)


def _bulk_list(value: object, name: str) -> list:
    if not isinstance(value, list):
        raise ServingError(400, "invalid_event", f"'{name}' must be a list, not {_describe(value)}.")
    if len(value) > MAX_BULK_ITEMS:
        raise ServingError(
            400, "too_many_items", f"'{name}' has {len(value)} items; the limit is {MAX_BULK_ITEMS}."
        )
    return value


def _item(
    bucket: object,
    key: object,
    version_id: object = None,
    etag: object = None,
    size: object = None,
    *,
    task_id: str | None = None,
    decode: bool = True,
    problem: str | None = None,
) -> S3Item:
    """One item; ``problem`` (a message) marks it invalid_s3_location whatever its bucket and key say.
    Everything S3 could not be asked for is decided here, before any request: such an item is a
    PermanentFailure, never retried."""
    if decode and isinstance(key, str):
        key = unquote_plus(key)
    if problem is None:
        try:
            check_s3_location(bucket, key)
        except ServingError as err:
            problem = err.message
    return S3Item(
        bucket=bucket if isinstance(bucket, str) else "",
        key=key if isinstance(key, str) else "",
        version_id=version_id if isinstance(version_id, str) and version_id else None,
        etag=etag.strip('"') if isinstance(etag, str) and etag else None,
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        task_id=task_id,
        problem=ServingError(400, "invalid_s3_location", problem) if problem else None,
    )


def _get_path(value: object, *names: str) -> object:
    for name in names:
        value = value.get(name) if isinstance(value, dict) else None
    return value

"""AWS Lambda entry point: ``lambda_function.app.lambda_handler``.

The model loads once per container, at import (Lambda's init phase), never per request. If it cannot
load, the import still succeeds: the reason is logged and every request gets a 500 model_unavailable.
Env: MODEL_PATH (default: the bundled model the build ships, ``model/model.tflite`` or, in the ONNX build,
``model/onnx/model.onnx``; MODEL_BACKEND=tflite|onnx names one; an ``.onnx`` file is served by ONNX
Runtime), NUM_THREADS (default: CPU count),
FETCH_ALLOWED_HOSTS (local testing only, see fetch.py), LOG_LEVEL, MIN_CONFIDENCE (a "not sure" threshold,
0 < t <= 1, off when unset; a request's "min_confidence" overrides it; a bad value answers every request
with a 500 misconfigured); for bulk events (S3 notifications,
S3 Batch Operations, Distributed Map batches: bulk.py) RESULTS_BUCKET, RESULTS_PREFIX, TAG_OBJECTS.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

from lambda_function.bulk import RetryLater
from lambda_function.bulk import handle as handle_bulk
from lambda_function.classifier import Classifier, model_path
from lambda_function.errors import ServingError
from lambda_function.events import BULK_KINDS, event_kind, min_confidence_from_env, parse_event, respond
from lambda_function.logging_json import get_logger
from lambda_function.metrics import request_metrics
from lambda_function.service import DEFAULT_LIMITS, classify_bytes, classify_url, fetch_timed

# Size cap and deadlines per URL (tests shorten them).
FETCH_LIMITS = DEFAULT_LIMITS
# Batch URLs are fetched concurrently (I/O bound) and classified one by one (one interpreter).
BATCH_FETCH_WORKERS = 4

log = get_logger()

_INTERNAL_ERROR = ServingError(500, "internal_error", "Something went wrong on our side; it has been logged.")
_MODEL_UNAVAILABLE = ServingError(
    500, "model_unavailable", "The model is not available; the function's logs say why."
)
# (MODEL_PATH, MODEL_BACKEND, NUM_THREADS) -> the Classifier, or the ServingError its loading raised
# (not retried).
_loaded: dict[tuple[str, str, str], Classifier | ServingError] = {}
_MODEL_ENV = ("MODEL_PATH", "MODEL_BACKEND", "NUM_THREADS")


def get_classifier() -> Classifier:
    """The container's Classifier for the current MODEL_PATH; raises the 500 model_unavailable error."""
    key = tuple(os.environ.get(name, "") for name in _MODEL_ENV)
    cached = _loaded.get(key)
    if cached is None:
        started = time.perf_counter()
        path = key[0] or "(bundled)"
        try:
            path = str(model_path())
            cached = Classifier.from_path(path)
        except ServingError as err:
            log.error("model load failed", extra={"model_path": path, "reason": err.message})
            cached = _MODEL_UNAVAILABLE
        except Exception:
            log.exception("model load failed", extra={"model_path": path})
            cached = _MODEL_UNAVAILABLE
        else:
            log.info(
                "model loaded",
                extra={
                    "model_path": path,
                    "model": cached.model_id,
                    "backend": cached.backend,
                    "input_size": cached.input_size,
                    "labels": len(cached.labels),
                    "load_ms": round((time.perf_counter() - started) * 1000.0, 1),
                },
            )
        # One model per container: a new MODEL_PATH (tests) replaces the old one.
        _loaded.clear()
        _loaded[key] = cached
    if isinstance(cached, ServingError):
        raise cached
    return cached


def reset_for_tests() -> None:
    """Forget the loaded model so the next request loads MODEL_PATH again."""
    _loaded.clear()


def lambda_handler(event: object, context: object = None) -> dict:
    started = time.perf_counter()
    kind = event_kind(event)
    fields: dict = {"request_id": getattr(context, "aws_request_id", None), "kind": kind}
    try:
        status, body = _handle(event, fields, context)
    except RetryLater as err:
        # Bulk events only: raising is how Lambda's async retries and Step Functions' Retry are asked for.
        duration_ms = round((time.perf_counter() - started) * 1000.0, 1)
        fields.update(status=503, code="retry_later", reason=str(err), duration_ms=duration_ms)
        log.warning("request", extra={**fields, **request_metrics(fields)})
        raise
    except ServingError as err:
        status, body = err.status, err.to_body()
    except Exception:
        log.exception("unhandled error", extra=fields)
        status, body = 500, _INTERNAL_ERROR.to_body()
    fields["status"] = status
    if "error" in body:
        fields["code"] = body["error"]["code"]
    fields["duration_ms"] = round((time.perf_counter() - started) * 1000.0, 1)
    # One line per request, carrying its CloudWatch metrics (EMF) too.
    log.info("request", extra={**fields, **request_metrics(fields)})
    return respond(kind, status, body)


def _handle(event: object, fields: dict, context: object = None) -> tuple[int, dict]:
    if fields["kind"] in BULK_KINDS:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        return 200, handle_bulk(event, fields["kind"], get_classifier, FETCH_LIMITS, fields, remaining)
    classifier = get_classifier()
    fields["model"] = classifier.model_id
    env_threshold = min_confidence_from_env(os.environ)
    request = parse_event(event, len(classifier.labels))
    fields["top_k"] = request.top_k
    threshold = request.min_confidence if request.min_confidence is not None else env_threshold
    if threshold is not None:
        fields["min_confidence"] = threshold
    if request.image is not None:
        fields["source"] = "inline"
        body = classify_bytes(request.image, classifier, request.top_k, min_confidence=threshold)
    elif request.batch:
        fields["hosts"] = [_host(url) for url in request.urls]
        results = _classify_batch(request.urls, classifier, request.top_k, threshold)
        fields["statuses"] = [r["error"]["status"] if "error" in r else 200 for r in results]
        _count_low_confidence(fields, results)
        return 200, {"results": results}
    else:
        fields["hosts"] = [_host(request.urls[0])]
        body = classify_url(
            request.urls[0], classifier, request.top_k, FETCH_LIMITS, min_confidence=threshold
        )
    fields["timings_ms"] = body["timings_ms"]
    _count_low_confidence(fields, [body])
    return 200, body


def _count_low_confidence(fields: dict, bodies: list[dict]) -> None:
    """Images answered "not sure" (the LowConfidence metric); only when a threshold was in force."""
    if "min_confidence" in fields:
        fields["low_confidence"] = sum(1 for body in bodies if body.get("confident") is False)


def _classify_batch(
    urls: tuple[object, ...], classifier: Classifier, top_k: int, min_confidence: float | None = None
) -> list[dict]:
    """One body per URL, in order; a failing URL yields its error body and does not stop the others."""
    from concurrent.futures import ThreadPoolExecutor

    results = []
    with ThreadPoolExecutor(max_workers=min(BATCH_FETCH_WORKERS, len(urls))) as pool:
        futures = [pool.submit(fetch_timed, url, FETCH_LIMITS) for url in urls]
        for i, future in enumerate(futures):
            try:
                data, fetch_ms = future.result()
                results.append(
                    classify_bytes(data, classifier, top_k, fetch_ms=fetch_ms, min_confidence=min_confidence)
                )
            except ServingError as err:
                results.append(err.to_body())
            except Exception:
                log.exception("unhandled error in batch item", extra={"index": i, "host": _host(urls[i])})
                results.append(_INTERNAL_ERROR.to_body())
            finally:
                futures[i] = None  # let this image's bytes go before the next one is classified
    return results


def _host(url: object) -> str | None:
    # Only the host: paths and query strings may carry signed tokens that must not reach the logs.
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        return parts.hostname if parts.scheme != "s3" else f"s3://{parts.netloc}"
    except ValueError:
        return None


# Load during Lambda's init phase so the first request does not pay for it.
try:
    get_classifier()
except ServingError:
    pass

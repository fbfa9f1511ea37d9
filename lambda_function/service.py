"""Image bytes or a URL -> the success body. The one code path the handler and the CLI share."""

from __future__ import annotations

import time

from lambda_function.classifier import Classifier
from lambda_function.events import check_url
from lambda_function.fetch import FetchLimits, fetch
from lambda_function.preprocess import preprocess

# fetch.py's defaults: 10 MB cap, 3 s connect, 5 s read, 10 s for the whole download.
DEFAULT_LIMITS = FetchLimits()
# Timings are for people reading responses and logs; a tenth of a millisecond is plenty.
TIMING_DIGITS = 1


def classify_bytes(
    data: bytes,
    classifier: Classifier,
    top_k: int,
    *,
    fetch_ms: float = 0.0,
    min_confidence: float | None = None,
) -> dict:
    """Decode, resize and classify one image; raise ServingError for bad images.

    With ``min_confidence`` the body opens with the decision (:func:`decision`); without it the body is
    exactly what it was before thresholds existed.
    """
    started = time.perf_counter()
    pixels = preprocess(data, classifier.input_size, classifier.resize)
    decoded = time.perf_counter()
    probs = classifier.predict(pixels)
    done = time.perf_counter()
    predictions = classifier.top_k(probs, top_k)
    return {
        **(decision(predictions, min_confidence) if min_confidence is not None else {}),
        "predictions": predictions,
        "scores": classifier.scores(probs),
        "model": classifier.model_id,
        "timings_ms": {
            "fetch": round(fetch_ms, TIMING_DIGITS),
            "preprocess": _ms(started, decoded),
            "inference": _ms(decoded, done),
        },
    }


def decision(predictions: list[dict], min_confidence: float) -> dict:
    """The answer under a threshold: ``label`` is the top label only if its score (as the response
    shows it) reaches ``min_confidence``, else None with ``confident: false``: "not sure", never a
    label a client could take for an answer. The top-k list stays in the body either way."""
    top = predictions[0]
    confident = top["score"] >= min_confidence
    return {
        "label": top["label"] if confident else None,
        "confident": confident,
        "min_confidence": min_confidence,
    }


def fetch_timed(
    url: object, limits: FetchLimits = DEFAULT_LIMITS, allowed_hosts: frozenset[str] | None = None
) -> tuple[bytes, float]:
    """``(bytes, milliseconds)`` for ``url``; ``allowed_hosts=None`` reads env FETCH_ALLOWED_HOSTS now."""
    url = check_url(url)
    started = time.perf_counter()
    data = fetch(url, limits, allowed_hosts=allowed_hosts)
    return data, (time.perf_counter() - started) * 1000.0


def classify_url(
    url: object,
    classifier: Classifier,
    top_k: int,
    limits: FetchLimits = DEFAULT_LIMITS,
    allowed_hosts: frozenset[str] | None = None,
    min_confidence: float | None = None,
) -> dict:
    data, fetch_ms = fetch_timed(url, limits, allowed_hosts)
    return classify_bytes(data, classifier, top_k, fetch_ms=fetch_ms, min_confidence=min_confidence)


def _ms(start: float, end: float) -> float:
    return round((end - start) * 1000.0, TIMING_DIGITS)

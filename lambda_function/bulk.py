"""Classify objects already in S3: S3 event notifications, S3 Batch Operations, Distributed Map batches.

One path for the three event kinds (events.parse_bulk_event names the objects):

1. read each object with fetch.read_s3_object (the same size cap, content-type check and deadline as an
   ``s3://`` URL), a few downloads ahead of the classifier, never more than FETCH_WORKERS + 1 in memory;
2. classify it (service.classify_bytes, the code path every other request takes);
3. optionally tag the input object with its top label (TAG_OBJECTS=true; existing tags are kept);
4. write one JSON line for it to ``s3://RESULTS_BUCKET/RESULTS_PREFIX<bucket>/<key>.json`` where nothing
   else collects the answer (RESULT_OBJECTS=auto: S3 notifications only; =all: every event kind).
   The result key depends only on the input object, so re-running a job overwrites, never duplicates.

Each failure is sorted into what a retry can fix (TemporaryFailure: throttling, S3 5xx, timeouts, no answer)
and what it cannot (PermanentFailure: missing object, not an image, too large, bad key). Then each caller
is answered the way it expects: S3 Batch Operations gets its ``results[]`` with a resultCode per task;
notifications and Distributed Map batches get a summary, or :class:`RetryLater` is raised when some image
hit a temporary failure, because an exception is how Lambda's async retries and a Step Functions Retry
are asked for (the already classified images are simply written again: same keys).

Env: RESULTS_BUCKET (empty: results are only returned, not written), RESULTS_PREFIX (default
 ``classifications/``), RESULT_OBJECTS (``auto``/``all``), TAG_OBJECTS (``true``/``false``),
MIN_CONFIDENCE (as for every request; a job's own ``min_confidence`` overrides it): under it a line says
``"confident": false, "label": null`` and the input gets no ``classifier-label`` tag. An object under
RESULTS_PREFIX of RESULTS_BUCKET is never classified, so results written next to the inputs cannot
trigger the function again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

from lambda_function.classifier import Classifier
from lambda_function.errors import ServingError
from lambda_function.events import (
    MAP_BATCH,
    S3_BATCH,
    S3_NOTIFICATION,
    BulkRequest,
    S3Item,
    min_confidence_from_env,
    parse_bulk_event,
)
from lambda_function.fetch import (
    S3_MAX_KEY_BYTES,
    FetchLimits,
    S3ReadError,
    read_s3_object,
    s3_client,
    s3_error,
)
from lambda_function.logging_json import get_logger
from lambda_function.service import classify_bytes, decision

SUCCEEDED, TEMPORARY, PERMANENT = "Succeeded", "TemporaryFailure", "PermanentFailure"
OUTCOME_CODES = (SUCCEEDED, TEMPORARY, PERMANENT)
DEFAULT_RESULTS_PREFIX = "classifications/"
# Per-image result objects: "auto" writes them only where no AWS engine collects the answers (S3
# notifications), "all" for every event kind (one S3 PUT per image, $5 per million).
RESULT_OBJECT_MODES = ("auto", "all")
DEFAULT_RESULT_OBJECTS = "auto"
# Downloads in flight ahead of the classifier: S3 latency hides behind inference.
FETCH_WORKERS = 4
# Stop starting new images when less than this is left of the invocation: one more fetch (10 s
# deadline) plus an inference must still fit. The rest are TemporaryFailures, retried later.
SAFETY_MARGIN_MS = 15_000
# resultString goes into the Batch Operations completion report (CSV). The S3 and Lambda documentation
# searched (2026-12-03) states no limit for it, so it is kept short by design; the full result is the
# JSON line in RESULTS_BUCKET, which resultString names.
MAX_RESULT_STRING_CHARS = 1024
# S3 error codes a retry can fix, whatever the HTTP status they came with.
THROTTLING_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
    | {"RequestTimeout", "ServiceUnavailable"}
)
# Our own codes a retry can fix: the network, or a model a fixed deployment will load.
TEMPORARY_CODES = frozenset({"upstream_timeout", "model_unavailable", "deadline"})
# A Distributed Map child's output must stay under Step Functions' 256 KiB payload limit whatever
# MapItemsPerBatch is: past this many bytes the per-image entries are shortened, then cut (counts stay).
MAX_MAP_RESPONSE_BYTES = 200_000
MAX_TAGS = 10  # S3's limit per object
TAG_PREFIX = "classifier-"
# Characters S3 accepts in tag values; anything else becomes "_".
TAG_VALUE_UNSAFE = re.compile(r"[^\w .:/=+\-@]")
OUT_OF_TIME = ServingError(503, "deadline", "The invocation ran out of time before this image.")
INTERNAL_ERROR = ServingError(500, "internal_error", "Something went wrong on our side; it has been logged.")
SKIPPED_OWN_OUTPUT = "own_output"
SKIPPED_FOLDER = "folder_marker"


class RetryLater(Exception):
    """Raised after a notification or Distributed Map batch in which some image hit a temporary failure.

    Its name is the error type Step Functions matches in the state machine's Retry (template.yaml).
    """


@dataclass(frozen=True)
class BulkConfig:
    results_bucket: str = ""
    results_prefix: str = DEFAULT_RESULTS_PREFIX
    tag_objects: bool = False
    result_objects: str = DEFAULT_RESULT_OBJECTS
    min_confidence: float | None = None

    @classmethod
    def from_env(cls, environ=os.environ) -> BulkConfig:
        bucket = environ.get("RESULTS_BUCKET", "").strip()
        prefix = environ.get("RESULTS_PREFIX", DEFAULT_RESULTS_PREFIX).strip()
        tag = environ.get("TAG_OBJECTS", "false").strip().lower()
        objects = (
            environ.get("RESULT_OBJECTS", DEFAULT_RESULT_OBJECTS).strip().lower() or DEFAULT_RESULT_OBJECTS
        )
        if tag not in ("true", "false"):
            raise _misconfigured("TAG_OBJECTS must be true or false")
        if objects not in RESULT_OBJECT_MODES:
            raise _misconfigured(f"RESULT_OBJECTS must be one of {', '.join(RESULT_OBJECT_MODES)}")
        if bucket and not prefix:
            # With no prefix every object of RESULTS_BUCKET would count as a result and be skipped.
            raise _misconfigured("RESULTS_PREFIX is empty")
        return cls(bucket, prefix, tag == "true", objects, min_confidence_from_env(environ))

    def writes_objects(self, kind: str) -> bool:
        """Whether each image of a ``kind`` event gets its own JSON line object (one S3 PUT each).

        ``auto``: only for S3 notifications, whose answer nobody reads; Batch Operations' completion report
        (resultString) and the Distributed Map's ResultWriter already collect every result. ``all``: always.
        """
        return bool(self.results_bucket) and (self.result_objects == "all" or kind == S3_NOTIFICATION)

    def is_own_output(self, item: S3Item) -> bool:
        return (
            bool(self.results_bucket)
            and item.bucket == self.results_bucket
            and item.key.startswith(self.results_prefix)
        )

    def result_key(self, item: S3Item) -> str:
        """Where the JSON line of ``item`` goes: a function of the input object only (idempotent re-runs),
        and a different place for every (bucket, key): a bucket name never contains "/", so
        ``<prefix><bucket>/<key>.json`` names one object; a key too long for that goes under
        ``<prefix>_long-keys/``, which no bucket name can produce (they start with a letter or digit)."""
        key = f"{self.results_prefix}{item.bucket}/{item.key}.json"
        if len(key.encode("utf-8")) <= S3_MAX_KEY_BYTES:
            return key
        digest = hashlib.sha256(item.key.encode("utf-8")).hexdigest()
        return f"{self.results_prefix}_long-keys/{item.bucket}/{digest}.json"


@dataclass
class Outcome:
    """What became of one item: labels, or an error and whether a retry could fix it."""

    item: S3Item
    labels: list[dict] | None = None
    model: str | None = None
    error: ServingError | None = None
    temporary: bool = False
    skipped: str | None = None
    etag: str | None = None
    version_id: str | None = None
    result_uri: str | None = None
    # {"label", "confident", "min_confidence"} when a threshold was in force (service.decision)
    decision: dict | None = None

    @property
    def not_sure(self) -> bool:
        return self.decision is not None and not self.decision["confident"]

    @property
    def code(self) -> str:
        if self.error is None:
            return SUCCEEDED
        return TEMPORARY if self.temporary else PERMANENT

    def record(self) -> dict:
        """The JSON line written for this image."""
        error = None
        if self.error is not None:
            error = {"code": self.error.code, "message": self.error.message, "retryable": self.temporary}
        return {
            "bucket": self.item.bucket,
            "key": self.item.key,
            "version_id": self.version_id or self.item.version_id,
            "etag": self.etag or self.item.etag,
            "model": self.model,
            **(self.decision or {}),
            "labels": self.labels,
            "error": error,
            "classified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def summary(self) -> dict:
        """This image in a notification or Distributed Map response (kept small: Step Functions caps it)."""
        body = {"key": shown_key(self.item.key), "status": "Skipped" if self.skipped else self.code}
        if self.labels:
            body["label"], body["score"] = self.labels[0]["label"], self.labels[0]["score"]
            # The whole answer, compact: with result objects off this entry is where the result lives.
            body["labels"] = [[x["label"], x["score"]] for x in self.labels]
        if self.decision is not None:
            body["label"], body["confident"] = self.decision["label"], self.decision["confident"]
        if self.error is not None:
            body["error"] = self.error.code
        if self.skipped:
            body["reason"] = self.skipped
        if self.result_uri:
            body["result"] = self.result_uri
        return body


def shown_key(key: str) -> str:
    """``key`` as it can be written in a response: a lone surrogate (legal in a JSON event, never in
    UTF-8) becomes its escape, so the runtime can still encode the answer."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def bounded(body: dict, limit: int | None = None) -> dict:
    """``body`` with its per-image entries shortened, then cut from the end, until it is at most
    ``limit`` (default MAX_MAP_RESPONSE_BYTES) bytes of UTF-8 JSON. The counts always stay whole;
    ``results_omitted`` says how many entries were cut (0 when none): their JSON lines are in
    RESULTS_BUCKET (handle() writes them there when result objects are otherwise off)."""
    limit = MAX_MAP_RESPONSE_BYTES if limit is None else limit
    body = {**body, "results_omitted": 0}  # always there: the state machine's ResultSelector reads it
    if _size(body) <= limit:
        return body
    results = [{k: v for k, v in entry.items() if k != "result"} for entry in body["results"]]
    body = {**body, "results": results}  # the result URI is <prefix><bucket>/<key>.json: derivable
    if _size(body) <= limit:
        return body
    budget = limit - _size({**body, "results": [], "results_omitted": len(results)})
    kept = []
    for entry in results:
        cost = _size(entry) + 2  # and its ", "
        if cost > budget:
            break
        kept.append(entry)
        budget -= cost
    return {**body, "results": kept, "results_omitted": len(results) - len(kept)}


def _size(value) -> int:
    # As the Lambda runtime writes it (python3.12+: simplejson, ensure_ascii=False, default separators).
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


def is_temporary(err: ServingError) -> bool:
    """Whether a retry of the same image could succeed."""
    if err.code in TEMPORARY_CODES:
        return True
    if isinstance(err, S3ReadError):
        if err.http_status is None:
            return err.code == "upstream_error"  # no answer from S3 at all: connection reset, DNS...
        return err.http_status >= 500 or err.http_status == 429 or err.s3_code in THROTTLING_CODES
    return False


def handle(
    event: dict,
    kind: str,
    get_classifier: Callable[[], Classifier],
    limits: FetchLimits,
    fields: dict,
    remaining_ms: Callable[[], int] | None = None,
) -> dict:
    """Classify every object ``event`` names; the response body its caller expects (or raise RetryLater)."""
    config = BulkConfig.from_env()
    try:
        classifier: Classifier | None = get_classifier()
        model_error = None
    except ServingError as err:
        classifier, model_error = None, err
    request = parse_bulk_event(event, kind, len(classifier.labels) if classifier else 1_000)
    fields["items"] = len(request.items)
    if request.job_id:
        fields["job_id"] = request.job_id
    if request.min_confidence is not None:
        config = replace(config, min_confidence=request.min_confidence)
    outcomes = classify_items(request, classifier, model_error, config, limits, remaining_ms)
    counts = {code: sum(o.code == code and not o.skipped for o in outcomes) for code in OUTCOME_CODES}
    counts["Skipped"] = sum(bool(o.skipped) for o in outcomes)
    fields["outcomes"] = counts
    if config.min_confidence is not None:
        fields["min_confidence"] = config.min_confidence
        fields["low_confidence"] = sum(o.not_sure for o in outcomes)
    if kind == S3_BATCH:
        return batch_operations_response(request, outcomes)
    if counts[TEMPORARY]:
        codes = sorted({o.error.code for o in outcomes if o.temporary and o.error is not None})
        raise RetryLater(
            f"{counts[TEMPORARY]} of {len(outcomes)} images hit a temporary failure ({', '.join(codes)}); "
            "retry the event: finished images are overwritten, not duplicated."
        )
    body = {"summary": counts, "results": [o.summary() for o in outcomes]}
    if kind == MAP_BATCH and request.items:
        body["bucket"] = request.items[0].bucket
    body = bounded(body)
    omitted = outcomes[len(body["results"]) :]
    if omitted and config.results_bucket and not config.writes_objects(kind):
        # The answer had no room for these: their JSON lines go to RESULTS_BUCKET instead.
        for outcome in omitted:
            if not outcome.skipped and outcome.item.problem is None:
                _finish(outcome, replace(config, tag_objects=False), limits)
    return body


def batch_operations_response(request: BulkRequest, outcomes: list[Outcome]) -> dict:
    return {
        "invocationSchemaVersion": request.schema_version,
        "treatMissingKeysAs": PERMANENT,
        "invocationId": request.invocation_id,
        "results": [
            {"taskId": o.item.task_id, "resultCode": o.code, "resultString": result_string(o)}
            for o in outcomes
        ],
    }


def result_string(outcome: Outcome, limit: int = MAX_RESULT_STRING_CHARS) -> str:
    """Compact JSON for the completion report, never longer than ``limit`` characters."""
    if outcome.skipped:
        return json.dumps({"skipped": outcome.skipped})
    if outcome.error is not None:
        text = f"{outcome.error.code}: {outcome.error.message}"
        return text if len(text) <= limit else text[: limit - 3] + "..."
    body: dict = {"labels": [[x["label"], x["score"]] for x in outcome.labels or []], "model": outcome.model}
    if outcome.decision is not None:
        body["confident"] = outcome.decision["confident"]
    if outcome.result_uri:
        body["result"] = outcome.result_uri
    text = _compact(body)
    # Too long (long labels, a long key in the result URI): drop the URI, then the lowest labels.
    if len(text) > limit:
        body.pop("result", None)
        while len(text := _compact(body)) > limit and len(body["labels"]) > 1:
            body["labels"].pop()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify_items(
    request: BulkRequest,
    classifier: Classifier | None,
    model_error: ServingError | None,
    config: BulkConfig,
    limits: FetchLimits,
    remaining_ms: Callable[[], int] | None = None,
) -> list[Outcome]:
    """One Outcome per item, in order; one item's failure never stops the others."""
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
        writes: list[Future] = []
        downloads = _prefetched(request.items, config, limits, pool)
        for item, download in downloads:
            # The first image is always tried, so a short Timeout cannot make a batch that never progresses.
            if outcomes and remaining_ms is not None and remaining_ms() < SAFETY_MARGIN_MS:
                if download is not None:
                    download.cancel()
                break
            outcome = _classify_one(item, download, classifier, model_error, config, request.top_k)
            # The future holds the image's bytes: let it go before the next download starts, so at most
            # FETCH_WORKERS + 1 images are ever held (the one classified and those read ahead).
            download = None
            outcomes.append(outcome)
            # Temporary failures are retried, so only a final answer is written.
            write = config.writes_objects(request.kind) and not outcome.temporary
            if not outcome.skipped and item.problem is None:
                if write or (config.tag_objects and outcome.error is None):
                    writes.append(pool.submit(_finish, outcome, config, limits, write))
        downloads.close()  # out of time: the downloads not started yet are cancelled
        for item in request.items[len(outcomes) :]:
            outcome = Outcome(item, skipped=_skip_reason(item, config))
            if not outcome.skipped:
                _fail(outcome, item.problem or OUT_OF_TIME)
            outcomes.append(outcome)
        for future in writes:
            future.result()
    return outcomes


def _classify_one(
    item: S3Item,
    download: Future | None,
    classifier: Classifier | None,
    model_error: ServingError | None,
    config: BulkConfig,
    top_k: int,
) -> Outcome:
    outcome = Outcome(item, skipped=_skip_reason(item, config))
    if outcome.skipped:
        return outcome
    try:
        if item.problem is not None:
            raise item.problem
        if model_error is not None:
            raise model_error
        assert classifier is not None and download is not None
        data, meta = download.result()
        outcome.etag, outcome.version_id = _unquote(meta.get("etag")), meta.get("version_id")
        body = classify_bytes(data, classifier, top_k)
        outcome.labels, outcome.model = body["predictions"], body["model"]
        if config.min_confidence is not None:
            outcome.decision = decision(outcome.labels, config.min_confidence)
    except ServingError as err:
        _fail(outcome, err)
    except Exception:
        get_logger().exception("unhandled error in bulk item", extra={"bucket": item.bucket})
        _fail(outcome, INTERNAL_ERROR)
    return outcome


def _prefetched(
    items: tuple[S3Item, ...], config: BulkConfig, limits: FetchLimits, pool: ThreadPoolExecutor
) -> Iterator[tuple[S3Item, Future | None]]:
    """``(item, download)`` in order, with at most FETCH_WORKERS downloads ahead of the consumer."""
    queue: deque[tuple[S3Item, Future | None]] = deque()
    try:
        for item in items:
            download = None
            if item.problem is None and _skip_reason(item, config) is None:
                download = pool.submit(
                    read_s3_object, item.bucket, item.key, limits, version_id=item.version_id
                )
            queue.append((item, download))
            if len(queue) > FETCH_WORKERS:
                yield queue.popleft()
        while queue:
            yield queue.popleft()
    finally:
        for _item, download in queue:
            if download is not None:
                download.cancel()


def _skip_reason(item: S3Item, config: BulkConfig) -> str | None:
    if item.problem is None and config.is_own_output(item):
        return SKIPPED_OWN_OUTPUT
    if item.problem is None and item.key.endswith("/") and not item.size:
        return SKIPPED_FOLDER  # the console's "folder" placeholders, listed like any object
    return None


def _fail(outcome: Outcome, err: ServingError) -> None:
    # A copy without the traceback: the caught error's frames hold the image's bytes, and a batch keeps
    # every outcome to the end (1,000 failed images of 10 MB each would all stay in memory).
    outcome.error = ServingError(err.status, err.code, err.message)
    outcome.temporary = is_temporary(err)
    outcome.labels = outcome.model = outcome.decision = None


def _finish(outcome: Outcome, config: BulkConfig, limits: FetchLimits, write: bool = True) -> None:
    """Tag the input (if asked and classified), then write its JSON line (if ``write``)."""
    client = s3_client(limits)
    item = outcome.item
    if config.tag_objects and outcome.error is None and outcome.labels:
        try:
            _tag(client, item, outcome)
        except ServingError as err:
            _fail(outcome, err)
        except Exception as exc:
            _fail(outcome, s3_error(exc, "the tags of the object"))
    if not write or not config.results_bucket or outcome.temporary:
        return
    key = config.result_key(item)
    line = json.dumps(outcome.record(), ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        client.put_object(
            Bucket=config.results_bucket, Key=key, Body=line.encode("utf-8"), ContentType="application/json"
        )
    except Exception as exc:
        _fail(outcome, s3_error(exc, f"s3://{config.results_bucket}/{key}"))
        return
    outcome.result_uri = f"s3://{config.results_bucket}/{key}"


def _tag(client, item: S3Item, outcome: Outcome) -> None:
    """Add classifier-* tags to the input object, keeping its other tags (PutObjectTagging replaces all)."""
    target = {"Bucket": item.bucket, "Key": item.key}
    if outcome.version_id or item.version_id:
        target["VersionId"] = outcome.version_id or item.version_id
    existing = client.get_object_tagging(**target)["TagSet"]
    ours = {
        f"{TAG_PREFIX}label": _tag_value(outcome.labels[0]["label"]),
        f"{TAG_PREFIX}score": f"{outcome.labels[0]['score']:.3f}",
        f"{TAG_PREFIX}model": _tag_value(outcome.model or ""),
    }
    if outcome.decision is not None:
        # "Not sure": no label tag at all, so a filter on classifier-label never picks the image up.
        ours[f"{TAG_PREFIX}confident"] = "true" if outcome.decision["confident"] else "false"
        if outcome.not_sure:
            del ours[f"{TAG_PREFIX}label"]
    kept = [t for t in existing if not t["Key"].startswith(TAG_PREFIX)]
    if len(kept) + len(ours) > MAX_TAGS:
        raise ServingError(
            409, "too_many_tags", f"The object already has {len(kept)} tags; S3 allows {MAX_TAGS} in all."
        )
    tags = kept + [{"Key": k, "Value": v} for k, v in ours.items()]
    client.put_object_tagging(**target, Tagging={"TagSet": tags})


def _tag_value(text: str) -> str:
    return TAG_VALUE_UNSAFE.sub("_", text)[:256]


def _misconfigured(problem: str) -> ServingError:
    return ServingError(500, "misconfigured", f"The function is misconfigured: {problem}.")


def _unquote(etag: str | None) -> str | None:
    return etag.strip('"') if isinstance(etag, str) else None


def _compact(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))

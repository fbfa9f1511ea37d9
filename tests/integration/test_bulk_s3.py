"""Bulk classification end to end: lambda_handler with S3 notification, Batch Operations and Distributed Map
events, against a moto S3 server on 127.0.0.1 reached through AWS_ENDPOINT_URL_S3 (never a mock of boto3).

The one failure moto cannot produce, an S3 503 SlowDown, is injected with a botocore ``before-send`` hook
registered on the function's own client: the request is answered 503 before it leaves, and everything after
(botocore's error parsing, our classification of it) runs as it would against S3.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from urllib.parse import quote, quote_plus

import boto3  # boto3 and moto[server] are in the dev extras: a missing one fails here, loudly
import pytest

from lambda_function import fetch
from lambda_function.bulk import FETCH_WORKERS, MAX_MAP_RESPONSE_BYTES, MAX_RESULT_STRING_CHARS, RetryLater
from lambda_function.classifier import Classifier
from lambda_function.fetch import FetchLimits
from tests.fixtures.images import BLUE, GREEN, RED, solid
from tests.fixtures.moto_s3 import FaultProxy, moto_s3_server, s3_env

CONTEXT = SimpleNamespace(aws_request_id="req-bulk")
PREFIX = "classifications/"
MAX_BYTES = 4096  # the oversize object is bigger, the synthetic images far smaller
KEYS = {
    "space": "uploads/summer shirt.png",
    "plus": "uploads/c+d.png",
    "unicode": "uploads/ünïcödé/👕 façade.png",
    "deep": "uploads/a/b/c/d/e/f/g/h/deep.png",
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[dict[str, str]]:
    """One moto server for the session; yields the env that points boto3 at it."""
    with moto_s3_server() as endpoint:
        yield s3_env(endpoint, str(tmp_path_factory.mktemp("aws")))


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    for name, value in s3_endpoint.items():
        monkeypatch.setenv(name, value)
    # The function caches its client per container: a fresh one sees this test's environment.
    fetch._s3_client.cache_clear()
    yield boto3.client("s3")
    fetch._s3_client.cache_clear()


@pytest.fixture
def buckets(s3) -> SimpleNamespace:
    """Fresh input and results buckets for each test (moto keeps state for the whole session)."""
    names = SimpleNamespace(input=f"in-{uuid.uuid4().hex[:12]}", results=f"out-{uuid.uuid4().hex[:12]}")
    s3.create_bucket(Bucket=names.input)
    s3.create_bucket(Bucket=names.results)
    return names


@pytest.fixture
def bulk_app(app, buckets, monkeypatch):
    monkeypatch.setenv("RESULTS_BUCKET", buckets.results)
    monkeypatch.setenv("RESULTS_PREFIX", PREFIX)
    monkeypatch.setenv("TAG_OBJECTS", "false")
    # Most tests here check the per-image result objects, so every event kind writes them;
    # the default (auto: notifications only) has its own tests below.
    monkeypatch.setenv("RESULT_OBJECTS", "all")
    monkeypatch.setattr(app, "FETCH_LIMITS", FetchLimits(max_bytes=MAX_BYTES))
    return app


@pytest.fixture
def slow_down(s3):
    """A set of keys: every GetObject of one of them gets S3's 503 SlowDown while it is in the set."""
    from botocore.awsrequest import AWSResponse

    client = fetch.s3_client(FetchLimits(max_bytes=MAX_BYTES))
    keys: set[str] = set()
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"

    class Raw:
        def stream(self, **_kwargs):
            yield body

    def answer_503(request, **_kwargs):
        if any(request.url.split("?")[0].endswith("/" + quote(key)) for key in keys):
            return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, Raw())
        return None

    client.meta.events.register("before-send.s3.GetObject", answer_503)
    yield keys
    client.meta.events.unregister("before-send.s3.GetObject", answer_503)


# ---------------------------------------------------------------- helpers


def put(s3, bucket: str, key: str, body: bytes, content_type: str = "image/png") -> str:
    return s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)["ETag"].strip('"')


def result_line(s3, buckets, key: str) -> dict:
    obj = s3.get_object(Bucket=buckets.results, Key=f"{PREFIX}{buckets.input}/{key}.json")
    text = obj["Body"].read().decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, "one JSON line per image"
    return json.loads(text)


def result_keys(s3, buckets) -> list[str]:
    listing = s3.list_objects_v2(Bucket=buckets.results)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def notification(bucket: str, keys: list[str], event_name: str = "ObjectCreated:Put") -> dict:
    # S3 URL-encodes keys in notifications, with "+" for spaces.
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": event_name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": 1, "sequencer": "0A1B"},
                },
            }
            for key in keys
        ]
    }


def batch_operations(version: str, bucket: str, keys: list[str], top_k: int | None = None) -> dict:
    def task(i: int, key: str) -> dict:
        task = {"taskId": f"task-{i}", "s3Key": quote_plus(key, safe="/"), "s3VersionId": None}
        if version == "1.0":
            task["s3BucketArn"] = f"arn:aws:s3:::{bucket}"
        else:
            task["s3Bucket"] = bucket
        return task

    job: dict = {"id": "job-0001"}
    if version == "2.0":
        job["userArguments"] = {"top_k": str(top_k)} if top_k else {}
    return {
        "invocationSchemaVersion": version,
        "invocationId": "aW52b2NhdGlvbg==",
        "job": job,
        "tasks": [task(i, key) for i, key in enumerate(keys)],
    }


def map_batch(s3, bucket: str, prefix: str = "") -> dict:
    """A Distributed Map child's input: items as the s3:listObjectsV2 ItemReader writes them."""
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    items = [
        {
            "Etag": o["ETag"],
            "Key": o["Key"],
            "LastModified": o["LastModified"].timestamp(),
            "Size": o["Size"],
            "StorageClass": o.get("StorageClass", "STANDARD"),
        }
        for o in listing
    ]
    return {"Items": items, "BatchInput": {"bucket": bucket}}


def tiny_model_id(tiny_model_path) -> str:
    return Classifier.from_path(tiny_model_path, num_threads=1).model_id


# ---------------------------------------------------------------- S3 event notifications


def test_notification_with_several_records_writes_one_line_per_image(bulk_app, s3, buckets, tiny_model_path):
    colours = {"space": RED, "plus": GREEN, "unicode": BLUE, "deep": RED}
    etags = {name: put(s3, buckets.input, KEYS[name], solid(colours[name])) for name in KEYS}
    response = bulk_app.lambda_handler(notification(buckets.input, list(KEYS.values())), CONTEXT)

    assert response["summary"] == {"Succeeded": 4, "TemporaryFailure": 0, "PermanentFailure": 0, "Skipped": 0}
    assert [r["key"] for r in response["results"]] == list(KEYS.values())
    model = tiny_model_id(tiny_model_path)
    expected_label = {RED: "red", GREEN: "green", BLUE: "blue"}
    for name, key in KEYS.items():
        line = result_line(s3, buckets, key)
        assert line["bucket"] == buckets.input and line["key"] == key
        assert line["etag"] == etags[name] and line["model"] == model and line["error"] is None
        assert len(line["labels"]) == 3 and line["labels"][0]["label"] == expected_label[colours[name]]
        assert "confident" not in line  # no threshold set: the line is as it always was
    assert len(result_keys(s3, buckets)) == 4


def test_rerunning_an_event_overwrites_and_never_duplicates(bulk_app, s3, buckets):
    put(s3, buckets.input, KEYS["space"], solid(RED))
    event = notification(buckets.input, [KEYS["space"]])
    bulk_app.lambda_handler(event, CONTEXT)
    first = result_keys(s3, buckets)
    put(s3, buckets.input, KEYS["space"], solid(BLUE))  # same key, new image
    bulk_app.lambda_handler(event, CONTEXT)
    assert result_keys(s3, buckets) == first
    assert result_line(s3, buckets, KEYS["space"])["labels"][0]["label"] == "blue"


def test_results_next_to_the_inputs_never_trigger_a_classification(bulk_app, s3, buckets, monkeypatch):
    # Results in the input bucket: the function's own output is skipped, so no result of a result.
    monkeypatch.setenv("RESULTS_BUCKET", buckets.input)
    put(s3, buckets.input, "uploads/x.png", solid(RED))
    bulk_app.lambda_handler(notification(buckets.input, ["uploads/x.png"]), CONTEXT)
    own = f"{PREFIX}{buckets.input}/uploads/x.png.json"
    response = bulk_app.lambda_handler(notification(buckets.input, [own]), CONTEXT)
    assert response["results"] == [{"key": own, "status": "Skipped", "reason": "own_output"}]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=buckets.input)["Contents"])
    assert keys == [own, "uploads/x.png"]


def test_test_event_and_deletions_classify_nothing(bulk_app, s3, buckets):
    response = bulk_app.lambda_handler({"Service": "Amazon S3", "Event": "s3:TestEvent"}, CONTEXT)
    assert response["summary"]["Succeeded"] == 0 and response["results"] == []
    removed = notification(buckets.input, ["uploads/gone.png"], event_name="ObjectRemoved:Delete")
    assert bulk_app.lambda_handler(removed, CONTEXT)["results"] == []
    assert result_keys(s3, buckets) == []


def test_notification_with_a_temporary_failure_raises_for_lambda_to_retry(
    bulk_app, s3, buckets, slow_down, capsys
):
    put(s3, buckets.input, "uploads/ok.png", solid(GREEN))
    put(s3, buckets.input, "uploads/busy.png", solid(RED))
    slow_down.add("uploads/busy.png")
    with pytest.raises(RetryLater, match="SlowDown|upstream_error"):
        bulk_app.lambda_handler(notification(buckets.input, ["uploads/ok.png", "uploads/busy.png"]), CONTEXT)
    # The retried invocation still writes its one request line, counted in the metrics as an error.
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    (request,) = [line for line in lines if line.get("message") == "request"]
    assert (request["code"], request["ErrorCode"], request["Errors"]) == ("retry_later", "retry_later", 1)
    # The image that worked is written; the retry will simply write it again.
    assert result_keys(s3, buckets) == [f"{PREFIX}{buckets.input}/uploads/ok.png.json"]


def test_input_objects_are_untouched_unless_tags_are_asked_for(bulk_app, s3, buckets, monkeypatch):
    key = "uploads/tagged.png"
    etag = put(s3, buckets.input, key, solid(BLUE))
    s3.put_object_tagging(
        Bucket=buckets.input, Key=key, Tagging={"TagSet": [{"Key": "owner", "Value": "catalogue"}]}
    )
    bulk_app.lambda_handler(notification(buckets.input, [key]), CONTEXT)
    assert s3.get_object_tagging(Bucket=buckets.input, Key=key)["TagSet"] == [
        {"Key": "owner", "Value": "catalogue"}
    ]
    monkeypatch.setenv("TAG_OBJECTS", "true")
    bulk_app.lambda_handler(notification(buckets.input, [key]), CONTEXT)
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=buckets.input, Key=key)["TagSet"]}
    assert tags["owner"] == "catalogue" and tags["classifier-label"] == "blue"
    assert float(tags["classifier-score"]) > 0.9 and tags["classifier-model"]
    assert s3.head_object(Bucket=buckets.input, Key=key)["ETag"].strip('"') == etag  # bytes unchanged


# ---------------------------------------------------------------- S3 Batch Operations


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_batch_operations_result_codes(bulk_app, s3, buckets, slow_down, version):
    put(s3, buckets.input, "good image.png", solid(GREEN))
    put(s3, buckets.input, "page.html", b"<!doctype html><title>not a photo</title>", "text/html")
    put(s3, buckets.input, "page-unlabelled.jpg", b"<!doctype html><p>also not</p>", "binary/octet-stream")
    put(s3, buckets.input, "huge.png", os.urandom(MAX_BYTES + 1))
    put(s3, buckets.input, "busy.png", solid(RED))
    slow_down.add("busy.png")
    keys = ["good image.png", "missing.png", "page.html", "page-unlabelled.jpg", "huge.png", "busy.png"]
    top_k = 2 if version == "2.0" else None
    event = batch_operations(version, buckets.input, keys, top_k)

    response = bulk_app.lambda_handler(event, CONTEXT)

    assert response["invocationSchemaVersion"] == version
    assert response["invocationId"] == event["invocationId"]
    assert response["treatMissingKeysAs"] == "PermanentFailure"
    codes = {r["taskId"]: r["resultCode"] for r in response["results"]}
    assert codes == {
        "task-0": "Succeeded",
        "task-1": "PermanentFailure",  # missing object
        "task-2": "PermanentFailure",  # served as text/html
        "task-3": "PermanentFailure",  # bytes that do not decode as an image
        "task-4": "PermanentFailure",  # over the size cap
        "task-5": "TemporaryFailure",  # S3 503 SlowDown
    }
    strings = [r["resultString"] for r in response["results"]]
    assert all(isinstance(s, str) and 0 < len(s) <= MAX_RESULT_STRING_CHARS for s in strings)
    success = json.loads(strings[0])
    assert len(success["labels"]) == (top_k or 3) and success["labels"][0][0] == "green"
    assert success["result"] == f"s3://{buckets.results}/{PREFIX}{buckets.input}/good image.png.json"
    assert strings[1].startswith("upstream_error: ") and "NoSuchKey" in strings[1]
    assert strings[2].startswith("unsupported_media_type: ")
    assert strings[4].startswith("image_too_large_bytes: ")
    assert "SlowDown" in strings[5]
    # Final answers are written (failures with their error code); the temporary one waits for its retry.
    written = {k.rsplit("/", 1)[-1] for k in result_keys(s3, buckets)}
    assert written == {f"{k}.json" for k in keys[:5]}
    assert result_line(s3, buckets, "missing.png")["error"]["code"] == "upstream_error"
    assert result_line(s3, buckets, "huge.png")["error"]["retryable"] is False


def test_batch_operations_bad_key_fails_alone(bulk_app, s3, buckets):
    put(s3, buckets.input, "ok.png", solid(RED))
    event = batch_operations("2.0", buckets.input, ["ok.png", ""])
    event["tasks"].append({"taskId": "task-2", "s3Bucket": "Not A Bucket!", "s3Key": "x.png"})
    codes = [r["resultCode"] for r in bulk_app.lambda_handler(event, CONTEXT)["results"]]
    assert codes == ["Succeeded", "PermanentFailure", "PermanentFailure"]


# ---------------------------------------------------------------- Step Functions Distributed Map


def test_distributed_map_batch_answers_every_item(bulk_app, s3, buckets):
    put(s3, buckets.input, "photos/a.png", solid(RED))
    put(s3, buckets.input, "photos/deep/er/b.png", solid(BLUE))
    put(s3, buckets.input, "photos/folder/", b"")  # a console "folder"
    put(s3, buckets.input, "photos/notes.txt", b"hello", "text/plain")
    event = map_batch(s3, buckets.input, "photos/")

    response = bulk_app.lambda_handler(event, CONTEXT)

    by_key = {r["key"]: r for r in response["results"]}
    assert len(by_key) == 4
    assert by_key["photos/a.png"]["status"] == "Succeeded" and by_key["photos/a.png"]["label"] == "red"
    assert by_key["photos/deep/er/b.png"]["label"] == "blue"
    assert by_key["photos/folder/"] == {
        "key": "photos/folder/",
        "status": "Skipped",
        "reason": "folder_marker",
    }
    assert by_key["photos/notes.txt"]["status"] == "PermanentFailure"
    assert response["summary"] == {"Succeeded": 2, "TemporaryFailure": 0, "PermanentFailure": 1, "Skipped": 1}
    assert response["results_omitted"] == 0  # always there: the state machine selects it
    assert len(json.dumps(response)) < 256 * 1024  # Step Functions' payload limit
    assert result_line(s3, buckets, "photos/a.png")["etag"] == event["Items"][0]["Etag"].strip('"')


def test_distributed_map_batch_retry_overwrites(bulk_app, s3, buckets, slow_down):
    for name, colour in (("a", RED), ("b", GREEN), ("c", BLUE)):
        put(s3, buckets.input, f"p/{name}.png", solid(colour))
    event = map_batch(s3, buckets.input, "p/")
    slow_down.add("p/b.png")
    with pytest.raises(RetryLater):
        bulk_app.lambda_handler(event, CONTEXT)
    assert len(result_keys(s3, buckets)) == 2
    # Step Functions retries the batch once S3 has calmed down: every item written once, none twice.
    slow_down.clear()
    assert bulk_app.lambda_handler(event, CONTEXT)["summary"]["Succeeded"] == 3
    assert [k.rsplit("/", 1)[-1] for k in result_keys(s3, buckets)] == [
        "a.png.json",
        "b.png.json",
        "c.png.json",
    ]


def test_without_a_results_bucket_results_are_only_returned(bulk_app, s3, buckets, monkeypatch):
    monkeypatch.delenv("RESULTS_BUCKET")
    put(s3, buckets.input, "q/a.png", solid(GREEN))
    response = bulk_app.lambda_handler(map_batch(s3, buckets.input, "q/"), CONTEXT)
    (result,) = response["results"]
    assert result["status"] == "Succeeded" and result["label"] == "green" and "result" not in result
    assert result_keys(s3, buckets) == []


def test_malformed_bulk_events_are_400(bulk_app):
    for event in (
        {"Items": [{"Key": "a.png"}]},  # no BatchInput.bucket
        {"invocationSchemaVersion": "3.0", "invocationId": "x", "tasks": []},
        {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]},
    ):
        body = bulk_app.lambda_handler(event, CONTEXT)
        assert body["error"]["status"] == 400 and body["error"]["code"] == "invalid_event", body


def test_the_next_url_request_still_works(bulk_app, s3, buckets):
    put(s3, buckets.input, "one.png", solid(RED))
    body = bulk_app.lambda_handler({"url": f"s3://{buckets.input}/one.png", "top_k": 1}, CONTEXT)
    assert body["predictions"][0]["label"] == "red"


# ---------------------------------------------------------------- make classify-bucket


def test_classify_bucket_locally_runs_every_batch(bulk_app, s3, buckets, capsys):
    from deploy.classify_bucket import main

    for i, colour in enumerate((RED, GREEN, BLUE, RED, GREEN)):
        put(s3, buckets.input, f"shop/{i}.png", solid(colour))
    put(s3, buckets.input, "elsewhere/x.png", solid(RED))
    assert main(["--bucket", buckets.input, "--prefix", "shop/", "--local", "--items-per-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "5 objects, 3 batches" in out and f"s3://{buckets.results}/{PREFIX}{buckets.input}/" in out
    assert len(result_keys(s3, buckets)) == 5


def test_classify_bucket_starts_the_state_machine(s3, s3_endpoint, monkeypatch, capsys):
    # moto's Step Functions stores the execution (it does not run a Distributed Map): this checks what
    # the script sends, which is all it does against a deployed stack.
    from deploy.classify_bucket import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_SFN", s3_endpoint["AWS_ENDPOINT_URL_S3"])
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"classify-{uuid.uuid4().hex[:8]}",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/classify-bucket",
    )["stateMachineArn"]
    assert main(["--bucket", "photos", "--prefix", "new arrivals/", "--state-machine-arn", machine]) == 0
    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    described = sfn.describe_execution(executionArn=execution["executionArn"])
    assert json.loads(described["input"]) == {"bucket": "photos", "prefix": "new arrivals/"}
    assert execution["name"].startswith("new-arrivals-")
    assert f"started: {execution['executionArn']}" in capsys.readouterr().out


def test_images_the_invocation_has_no_time_for_are_temporary_failures(bulk_app, s3, buckets):
    keys = [f"late/{i:02d}.png" for i in range(30)]
    for key in keys:
        put(s3, buckets.input, key, solid(RED))
    reads: list[str] = []
    client = fetch.s3_client(FetchLimits(max_bytes=MAX_BYTES))
    count = lambda request, **_: reads.append(request.url)  # noqa: E731
    client.meta.events.register("before-send.s3.GetObject", count)
    almost_out = SimpleNamespace(aws_request_id="req-late", get_remaining_time_in_millis=lambda: 1000)
    try:
        response = bulk_app.lambda_handler(batch_operations("1.0", buckets.input, keys), almost_out)
    finally:
        client.meta.events.unregister("before-send.s3.GetObject", count)
    codes = [r["resultCode"] for r in response["results"]]
    # The first image is always tried, so even a short Timeout makes progress on every redrive.
    assert codes == ["Succeeded"] + ["TemporaryFailure"] * 29
    assert response["results"][1]["resultString"].startswith("deadline: ")
    # Only the read-ahead window was ever requested, not the 29 images there was no time for.
    assert len(reads) <= 1 + FETCH_WORKERS + 1


@pytest.mark.parametrize("shape", ["notification", "batch-1.0", "batch-2.0", "map"])
def test_awkward_keys_in_every_event_shape(bulk_app, s3, buckets, shape):
    # Spaces, "+", unicode and deep prefixes: each shape encodes keys its own way (or not at all).
    for key in KEYS.values():
        put(s3, buckets.input, key, solid(GREEN))
    keys = list(KEYS.values())
    if shape == "notification":
        event = notification(buckets.input, keys)
    elif shape == "map":
        event = map_batch(s3, buckets.input, "uploads/")
    else:
        event = batch_operations(shape.split("-")[1], buckets.input, keys)
    response = bulk_app.lambda_handler(event, CONTEXT)
    if shape.startswith("batch"):
        assert [r["resultCode"] for r in response["results"]] == ["Succeeded"] * len(keys)
    else:
        assert response["summary"]["Succeeded"] == len(keys)
    for key in keys:
        assert result_line(s3, buckets, key)["key"] == key


# ---------------------------------------------------------------- a misbehaving S3 and hostile keys


@pytest.fixture
def faulty(bulk_app, s3_endpoint, monkeypatch):
    """The function reads S3 through a proxy that can trickle a key's body, with a 1.5 s deadline."""
    proxy = FaultProxy(s3_endpoint["AWS_ENDPOINT_URL_S3"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    monkeypatch.setattr(bulk_app, "FETCH_LIMITS", FetchLimits(max_bytes=MAX_BYTES, total_timeout=1.5))
    fetch._s3_client.cache_clear()
    yield proxy
    fetch._s3_client.cache_clear()
    proxy.close()


def requests_for(proxy: FaultProxy, bucket: str, key: str) -> list[str]:
    return [method for method, path in proxy.requests if path == f"/{bucket}/{key}"]


@pytest.mark.parametrize("fault", ["trickle_body", "slow_headers"])
def test_a_download_that_misses_the_deadline_is_temporary_and_the_rest_are_classified(
    faulty, s3, buckets, fault
):
    for key, colour in (("a.png", RED), ("slow.png", GREEN), ("b.png", BLUE)):
        put(s3, buckets.input, key, solid(colour))
    faulty.faults["slow.png"] = fault  # 4 bytes a second: minutes for the whole image
    started = time.monotonic()
    response = faulty_app_call(faulty, batch_operations("2.0", buckets.input, ["a.png", "slow.png", "b.png"]))
    elapsed = time.monotonic() - started

    codes = [(r["resultCode"], r["resultString"].split(":")[0]) for r in response["results"]]
    assert codes[1] == ("TemporaryFailure", "upstream_timeout")
    assert codes[0][0] == codes[2][0] == "Succeeded"
    assert elapsed < 1.5 + 1.0  # the deadline plus a second, the whole batch included


def faulty_app_call(proxy: FaultProxy, event: dict) -> dict:
    from lambda_function import app  # the bulk_app fixture's module, configured for the proxy

    return app.lambda_handler(event, CONTEXT)


def test_a_key_that_cannot_be_encoded_is_permanent_and_never_requested(faulty, s3, buckets):
    put(s3, buckets.input, "ok.png", solid(RED))
    bad = "photos/\ud800.png"  # a lone surrogate: legal in a JSON event, impossible in a request
    event = batch_operations("2.0", buckets.input, ["ok.png", "placeholder"])
    event["tasks"][1]["s3Key"] = bad  # as it arrives in the JSON event (quote_plus cannot even encode it)
    batch = faulty_app_call(faulty, event)
    (ok, refused) = batch["results"]
    assert ok["resultCode"] == "Succeeded"
    assert refused["resultCode"] == "PermanentFailure"
    assert refused["resultString"].startswith("invalid_s3_location: ")
    for word in ("UnicodeEncodeError", "Error", "botocore", "surrogatepass"):
        assert word not in refused["resultString"]

    # A Distributed Map batch answers it too instead of asking Step Functions to retry the whole batch.
    event = {"Items": [{"Key": "ok.png"}, {"Key": bad}], "BatchInput": {"bucket": buckets.input}}
    body = faulty_app_call(faulty, event)
    assert body["summary"]["PermanentFailure"] == 1 and body["summary"]["Succeeded"] == 1
    assert body["results"][1]["error"] == "invalid_s3_location"
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # the runtime can still send the answer
    assert all("\ud800" not in path for _method, path in faulty.requests)


@pytest.mark.parametrize(
    ("version", "bucket_field", "key"),
    [
        ("1.0", {"s3BucketArn": "not-an-arn"}, "x.png"),
        ("1.0", {"s3BucketArn": "arn:aws:s3:::"}, "x.png"),
        ("2.0", {"s3Bucket": ""}, "x.png"),
        ("2.0", {"s3Bucket": "Not_A_Bucket"}, "x.png"),
        ("2.0", {"s3Bucket": "fine-bucket"}, "k" * 1025),
    ],
)
def test_locations_s3_cannot_be_asked_for_are_permanent_before_any_request(
    faulty, version, bucket_field, key
):
    event = batch_operations(version, "placeholder", [key])
    task = event["tasks"][0]
    task.pop("s3BucketArn", None), task.pop("s3Bucket", None)
    task.update(bucket_field)
    before = len(faulty.requests)
    (result,) = faulty_app_call(faulty, event)["results"]
    assert (result["resultCode"], result["resultString"].split(":")[0]) == (
        "PermanentFailure",
        "invalid_s3_location",
    )
    assert len(faulty.requests) == before


def test_a_map_batch_answer_stays_under_step_functions_limit_with_long_keys(bulk_app, s3, buckets):
    long_prefix = "l" * 990
    for i in range(3):
        put(s3, buckets.input, f"{long_prefix}/{i}.png", solid(RED))
    # 1,000 items, the most MapItemsPerBatch allows; the unreadable ones cost no request.
    items = [{"Key": f"{long_prefix}/{i}.png"} for i in range(3)]
    items += [{"Key": "x" * 1030 + str(i)} for i in range(997)]
    body = bulk_app.lambda_handler({"Items": items, "BatchInput": {"bucket": buckets.input}}, CONTEXT)

    size = len(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    assert size <= MAX_MAP_RESPONSE_BYTES < 256 * 1024
    assert body["summary"] == {"Succeeded": 3, "TemporaryFailure": 0, "PermanentFailure": 997, "Skipped": 0}
    assert len(body["results"]) + body["results_omitted"] == 1000
    assert [r["status"] for r in body["results"][:3]] == ["Succeeded"] * 3


def test_every_key_has_its_own_result_object(bulk_app, s3, buckets):
    from lambda_function.bulk import BulkConfig
    from lambda_function.events import S3Item

    long_key = "k" * 1000 + ".png"
    config = BulkConfig(buckets.results, PREFIX)
    digest = config.result_key(S3Item(buckets.input, long_key)).rsplit("/", 1)[1].removesuffix(".json")
    lookalike = f"_long-keys/{digest}"  # a short key spelled like the long key's place
    put(s3, buckets.input, long_key, solid(RED))
    put(s3, buckets.input, lookalike, solid(BLUE))
    bulk_app.lambda_handler(notification(buckets.input, [long_key, lookalike]), CONTEXT)

    lines = {}
    for key in result_keys(s3, buckets):
        line = json.loads(s3.get_object(Bucket=buckets.results, Key=key)["Body"].read())
        lines[line["key"]] = line["labels"][0]["label"]
    assert lines == {long_key: "red", lookalike: "blue"}


@pytest.mark.parametrize(("own_tags", "code"), [(7, "Succeeded"), (8, "PermanentFailure")])
def test_tags_fit_only_while_s3s_ten_allow_ours(bulk_app, s3, buckets, monkeypatch, own_tags, code):
    monkeypatch.setenv("TAG_OBJECTS", "true")
    put(s3, buckets.input, "t.png", solid(RED))
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(own_tags)]
    s3.put_object_tagging(Bucket=buckets.input, Key="t.png", Tagging={"TagSet": tags})
    (result,) = bulk_app.lambda_handler(batch_operations("2.0", buckets.input, ["t.png"]), CONTEXT)["results"]
    assert result["resultCode"] == code
    if code != "Succeeded":
        assert result["resultString"].startswith("too_many_tags: ")


def test_a_batch_holds_at_most_the_images_read_ahead(bulk_app, s3, buckets, monkeypatch):
    # Failed images used to stay in memory through their errors' tracebacks until the batch ended.
    import tracemalloc

    from lambda_function import bulk

    size = 1024 * 1024
    for i in range(12):
        put(s3, buckets.input, f"noise/{i}.jpg", os.urandom(size), "image/jpeg")  # 422: not an image
    monkeypatch.setattr(bulk_app, "FETCH_LIMITS", FetchLimits(max_bytes=2 * size))
    held = []
    classify = bulk.classify_bytes

    def counting(data, *args, **kwargs):
        ours = [
            t
            for t in tracemalloc.take_snapshot().traces
            if t.size >= size and "lambda_function" in t.traceback[0].filename
        ]
        held.append(len(ours))
        return classify(data, *args, **kwargs)

    monkeypatch.setattr(bulk, "classify_bytes", counting)
    event = {"Items": [{"Key": f"noise/{i}.jpg"} for i in range(12)], "BatchInput": {"bucket": buckets.input}}
    tracemalloc.start()
    try:
        body = bulk_app.lambda_handler(event, CONTEXT)
    finally:
        tracemalloc.stop()
    assert body["summary"]["PermanentFailure"] == 12
    assert len(held) == 12 and max(held) <= FETCH_WORKERS + 1


# ---------------------------------------------------------------- results where the engine collects them


def test_by_default_batch_operations_and_map_answers_carry_the_results_without_puts(
    bulk_app, s3, buckets, monkeypatch
):
    monkeypatch.delenv("RESULT_OBJECTS")  # auto: per-image objects only for notifications
    put(s3, buckets.input, "a.png", solid(RED))
    put(s3, buckets.input, "b.png", solid(BLUE))

    (a, b) = bulk_app.lambda_handler(batch_operations("2.0", buckets.input, ["a.png", "b.png"]), CONTEXT)[
        "results"
    ]
    assert json.loads(a["resultString"])["labels"][0][0] == "red" and "result" not in json.loads(
        a["resultString"]
    )
    event = {"Items": [{"Key": "a.png"}, {"Key": "b.png"}], "BatchInput": {"bucket": buckets.input}}
    entries = bulk_app.lambda_handler(event, CONTEXT)["results"]
    assert [e["labels"][0][0] for e in entries] == ["red", "blue"] and len(entries[0]["labels"]) == 3
    assert result_keys(s3, buckets) == []  # not one PUT

    bulk_app.lambda_handler(notification(buckets.input, ["a.png"]), CONTEXT)
    assert result_keys(s3, buckets) == [f"{PREFIX}{buckets.input}/a.png.json"]  # nobody reads that answer


def test_a_map_answer_with_no_room_writes_the_rest_as_objects(bulk_app, s3, buckets, monkeypatch):
    from lambda_function import bulk

    monkeypatch.delenv("RESULT_OBJECTS")
    monkeypatch.setattr(bulk, "MAX_MAP_RESPONSE_BYTES", 700)  # room for about two entries
    keys = [f"photo-{i}.png" for i in range(6)]
    for key in keys:
        put(s3, buckets.input, key, solid(GREEN))
    event = {"Items": [{"Key": k} for k in keys], "BatchInput": {"bucket": buckets.input}}
    body = bulk_app.lambda_handler(event, CONTEXT)
    kept = [e["key"] for e in body["results"]]
    assert body["results_omitted"] == len(keys) - len(kept) > 0
    written = sorted(k.rsplit("/", 1)[1].removesuffix(".json") for k in result_keys(s3, buckets))
    assert written == sorted(set(keys) - set(kept))  # every result lands somewhere, once


def test_a_bad_result_objects_setting_is_misconfigured(bulk_app, buckets, monkeypatch):
    monkeypatch.setenv("RESULT_OBJECTS", "some")
    body = bulk_app.lambda_handler(batch_operations("2.0", buckets.input, ["a.png"]), CONTEXT)
    assert body["error"]["code"] == "misconfigured" and "RESULT_OBJECTS" in body["error"]["message"]


# ---------------------------------------------------------------- a "not sure" answer (MIN_CONFIDENCE)


def test_not_sure_in_result_lines_summaries_reports_and_tags(bulk_app, s3, buckets, monkeypatch, capsys):
    # The tiny model scores 1/3 for each label on grey, 0.99999 red on red.
    put(s3, buckets.input, "photos/grey.png", solid((128, 128, 128)))
    put(s3, buckets.input, "photos/red.png", solid(RED))
    event = map_batch(s3, buckets.input, "photos/")
    event["BatchInput"]["min_confidence"] = 0.5
    response = bulk_app.lambda_handler(event, CONTEXT)
    by_key = {r["key"]: r for r in response["results"]}
    assert (by_key["photos/grey.png"]["label"], by_key["photos/grey.png"]["confident"]) == (None, False)
    assert (by_key["photos/red.png"]["label"], by_key["photos/red.png"]["confident"]) == ("red", True)
    assert len(by_key["photos/grey.png"]["labels"]) == 3  # the top-k list stays
    assert response["summary"]["Succeeded"] == 2  # "not sure" is an answer, not a failure
    request = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"message": "request"' in x]
    assert request[-1]["LowConfidence"] == 1

    # The function's env sets it for notifications; the label tag goes only on confident images.
    monkeypatch.setenv("MIN_CONFIDENCE", "0.5")
    monkeypatch.setenv("TAG_OBJECTS", "true")
    bulk_app.lambda_handler(notification(buckets.input, ["photos/grey.png", "photos/red.png"]), CONTEXT)
    grey = result_line(s3, buckets, "photos/grey.png")
    assert (grey["label"], grey["confident"], grey["min_confidence"]) == (None, False, 0.5)
    assert len(grey["labels"]) == 3
    tags = {
        key: {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=buckets.input, Key=key)["TagSet"]}
        for key in ("photos/grey.png", "photos/red.png")
    }
    assert "classifier-label" not in tags["photos/grey.png"]
    assert tags["photos/grey.png"]["classifier-confident"] == "false"
    assert (tags["photos/red.png"]["classifier-label"], tags["photos/red.png"]["classifier-confident"]) == (
        "red",
        "true",
    )

    # S3 Batch Operations: the completion report's resultString says so too.
    monkeypatch.setenv("TAG_OBJECTS", "false")
    batch = batch_operations("2.0", buckets.input, ["photos/grey.png"])
    batch["job"]["userArguments"]["min_confidence"] = "0.9"
    (result,) = bulk_app.lambda_handler(batch, CONTEXT)["results"]
    assert result["resultCode"] == "Succeeded" and json.loads(result["resultString"])["confident"] is False

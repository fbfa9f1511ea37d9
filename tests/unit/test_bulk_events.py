"""Bulk event parsing (events.py) and the pure parts of bulk.py: failure classes, resultString, config."""

from __future__ import annotations

import json

import pytest

from lambda_function.bulk import (
    MAX_RESULT_STRING_CHARS,
    BulkConfig,
    Outcome,
    is_temporary,
    result_string,
)
from lambda_function.errors import ServingError
from lambda_function.events import (
    MAP_BATCH,
    MAX_BULK_ITEMS,
    S3_BATCH,
    S3_NOTIFICATION,
    S3Item,
    event_kind,
    parse_bulk_event,
)
from lambda_function.fetch import S3ReadError


def record(key: str, bucket: str = "photos", **obj) -> dict:
    return {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, **obj}},
    }


def test_event_kinds():
    assert event_kind({"Records": []}) == S3_NOTIFICATION
    assert event_kind({"Service": "Amazon S3", "Event": "s3:TestEvent"}) == S3_NOTIFICATION
    assert event_kind({"invocationSchemaVersion": "1.0", "tasks": []}) == S3_BATCH
    assert event_kind({"Items": [], "BatchInput": {}}) == MAP_BATCH
    assert event_kind({"url": "https://x/y.jpg"}) == "direct"


def test_notification_keys_are_url_decoded():
    event = {
        "Records": [
            record("summer+shirt.png", eTag="abc", size=12, versionId="v1"),
            record("c%2Bd.png"),
            record("%C3%BCn%C3%AFc%C3%B6d%C3%A9/x.png"),
        ]
    }
    request = parse_bulk_event(event, S3_NOTIFICATION, num_labels=10)
    assert [i.key for i in request.items] == ["summer shirt.png", "c+d.png", "ünïcödé/x.png"]
    assert request.items[0] == S3Item("photos", "summer shirt.png", "v1", "abc", 12)
    assert request.top_k == 3


def test_batch_operations_1_0_and_2_0():
    v1 = {
        "invocationSchemaVersion": "1.0",
        "invocationId": "inv",
        "job": {"id": "job-1"},
        "tasks": [
            {"taskId": "t", "s3Key": "a+b.jpg", "s3VersionId": None, "s3BucketArn": "arn:aws:s3:::photos"}
        ],
    }
    request = parse_bulk_event(v1, S3_BATCH, num_labels=10)
    assert request.items == (S3Item("photos", "a b.jpg", task_id="t"),)
    assert (request.invocation_id, request.schema_version, request.job_id) == ("inv", "1.0", "job-1")
    v2 = {
        "invocationSchemaVersion": "2.0",
        "invocationId": "inv",
        "job": {"id": "job-2", "userArguments": {"top_k": "5"}},
        "tasks": [{"taskId": "t", "s3Key": "k.jpg", "s3VersionId": "v9", "s3Bucket": "photos"}],
    }
    request = parse_bulk_event(v2, S3_BATCH, num_labels=10)
    assert request.items == (S3Item("photos", "k.jpg", "v9", task_id="t"),)
    assert request.top_k == 5


def test_map_batch_keys_are_verbatim_and_etags_unquoted():
    event = {"Items": [{"Key": "a+b%20.jpg", "Etag": '"e1"', "Size": 3}], "BatchInput": {"bucket": "photos"}}
    request = parse_bulk_event(event, MAP_BATCH, num_labels=10)
    assert request.items == (S3Item("photos", "a+b%20.jpg", None, "e1", 3),)


@pytest.mark.parametrize(
    "kind, event",
    [
        (MAP_BATCH, {"Items": [{"Key": "a"}]}),
        (MAP_BATCH, {"Items": "a", "BatchInput": {"bucket": "photos"}}),
        (S3_BATCH, {"invocationSchemaVersion": "1.0", "tasks": [{"taskId": "t"}]}),  # no invocationId
        (S3_BATCH, {"invocationSchemaVersion": "1.0", "invocationId": "i", "tasks": [{"s3Key": "k"}]}),
        (S3_NOTIFICATION, {"Records": [{"eventSource": "aws:sqs"}]}),
        (S3_NOTIFICATION, {"Records": ["not a record"]}),
    ],
)
def test_unusable_events_are_400(kind, event):
    with pytest.raises(ServingError) as info:
        parse_bulk_event(event, kind, num_labels=10)
    assert (info.value.status, info.value.code) == (400, "invalid_event")


def test_too_many_items_is_400():
    event = {"Items": [{"Key": "a"}] * (MAX_BULK_ITEMS + 1), "BatchInput": {"bucket": "photos"}}
    with pytest.raises(ServingError) as info:
        parse_bulk_event(event, MAP_BATCH, num_labels=10)
    assert info.value.code == "too_many_items"


def test_a_bad_item_fails_alone():
    event = {
        "Items": [{"Key": "ok.jpg"}, {"Key": ""}, {"Key": "x" * 1025}, "junk"],
        "BatchInput": {"bucket": "b-1"},
    }
    items = parse_bulk_event(event, MAP_BATCH, num_labels=10).items
    assert items[0].problem is None
    assert all(i.problem is not None and i.problem.code == "invalid_s3_location" for i in items[1:])


@pytest.mark.parametrize(
    "error, temporary",
    [
        (S3ReadError(502, "upstream_error", "m", s3_code="SlowDown", http_status=503), True),
        (S3ReadError(502, "upstream_error", "m", s3_code="InternalError", http_status=500), True),
        (S3ReadError(502, "upstream_error", "m", s3_code="RequestTimeout", http_status=400), True),
        (S3ReadError(502, "upstream_error", "m (EndpointConnectionError)"), True),
        (S3ReadError(504, "upstream_timeout", "m"), True),
        (ServingError(500, "model_unavailable", "m"), True),
        (S3ReadError(502, "upstream_error", "m", s3_code="NoSuchKey", http_status=404), False),
        (S3ReadError(502, "upstream_error", "m", s3_code="AccessDenied", http_status=403), False),
        (ServingError(413, "image_too_large_bytes", "m"), False),
        (ServingError(415, "unsupported_media_type", "m"), False),
        (ServingError(422, "invalid_image", "m"), False),
        (ServingError(400, "invalid_s3_location", "m"), False),
    ],
)
def test_temporary_or_permanent(error, temporary):
    assert is_temporary(error) is temporary


def test_result_string_never_exceeds_the_cap():
    long_label = [{"label": "x" * 300, "score": 0.5}] * 10
    item = S3Item("photos", "k" * 1000)
    outcome = Outcome(item, labels=long_label, model="m", result_uri="s3://out/" + "k" * 1000)
    text = result_string(outcome)
    assert len(text) <= MAX_RESULT_STRING_CHARS
    assert json.loads(text)["labels"][0][0] == "x" * 300  # the top label survives, the URI goes first
    failure = Outcome(item, error=ServingError(400, "bad", "y" * 5000))
    assert len(result_string(failure)) == MAX_RESULT_STRING_CHARS


def test_config_and_result_keys():
    config = BulkConfig.from_env({"RESULTS_BUCKET": "out", "RESULTS_PREFIX": "res/"})
    assert config.result_key(S3Item("in", "a/b c.jpg")) == "res/in/a/b c.jpg.json"
    long_key = config.result_key(S3Item("in", "k" * 1024))
    assert long_key.startswith("res/_long-keys/in/") and len(long_key) < 200
    # A short key spelled like a long key's place gets its own result object, not the long key's.
    digest = long_key.rsplit("/", 1)[1].removesuffix(".json")
    assert config.result_key(S3Item("in", f"_long-keys/{digest}")) == f"res/in/_long-keys/{digest}.json"
    assert config.result_key(S3Item("in", f"_long-keys/{digest}")) != long_key
    assert config.is_own_output(S3Item("out", "res/in/x.json"))
    assert not config.is_own_output(S3Item("in", "res/in/x.json"))
    for env in ({"RESULTS_BUCKET": "out", "RESULTS_PREFIX": ""}, {"TAG_OBJECTS": "yes"}):
        with pytest.raises(ServingError) as info:
            BulkConfig.from_env(env)
        assert (info.value.status, info.value.code) == (500, "misconfigured")

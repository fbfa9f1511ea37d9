"""lambda_function.events: every event shape -> Request, malformed ones -> 400/413, responses per kind."""

from __future__ import annotations

import base64
import json

import pytest

from lambda_function import events
from lambda_function.errors import ServingError
from lambda_function.events import (
    BATCH,
    DIRECT,
    MAX_BATCH_URLS,
    PROXY_V1,
    PROXY_V2,
    event_kind,
    parse_event,
    respond,
)
from tests.fixtures.proxy_events import v1_event, v2_event

URL = "https://example.com/shirt.jpg"
LABELS = 10


PROXIES = [pytest.param(v1_event, PROXY_V1, id="v1"), pytest.param(v2_event, PROXY_V2, id="v2")]


def error_of(event, num_labels=LABELS) -> ServingError:
    with pytest.raises(ServingError) as info:
        parse_event(event, num_labels)
    return info.value


# ---------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ({"url": URL}, DIRECT),
        ({"urls": [URL]}, BATCH),
        (v1_event("{}"), PROXY_V1),
        (v2_event("{}"), PROXY_V2),
        ("not a dict", DIRECT),
        (None, DIRECT),
        ({"version": "2.0"}, DIRECT),  # no requestContext: not a proxy event
    ],
)
def test_event_kind(event, kind):
    assert event_kind(event) == kind


# ---------------------------------------------------------------- direct and batch


def test_direct_url_with_default_top_k():
    request = parse_event({"url": URL}, LABELS)
    assert (request.kind, request.urls, request.image, request.top_k, request.batch) == (
        DIRECT,
        (URL,),
        None,
        3,
        False,
    )
    assert not request.is_proxy


def test_default_top_k_never_exceeds_the_labels():
    assert parse_event({"url": URL}, 2).top_k == 2


@pytest.mark.parametrize("top_k", [1, 5, 10, "4"])
def test_valid_top_k(top_k):
    assert parse_event({"url": URL, "top_k": top_k}, LABELS).top_k == int(top_k)


@pytest.mark.parametrize("top_k", [0, -1, 11, 2.5, True, "two", "", "\u00b2", "-1", [3], {"k": 3}])
def test_invalid_top_k_is_400(top_k):
    error = error_of({"url": URL, "top_k": top_k})
    assert (error.status, error.code) == (400, "invalid_top_k")
    assert "1 to 10" in error.message


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({}, "missing_url"),
        ({"url": None}, "missing_url"),
        ({"url": 42}, "invalid_url"),
        ({"url": ""}, "invalid_url"),
        ({"url": "   "}, "invalid_url"),
        ({"url": ["a"]}, "invalid_url"),
        ({"url": URL, "urls": [URL]}, "invalid_request"),
        ("just a string", "invalid_request"),
        (None, "invalid_request"),
        ([URL], "invalid_request"),
    ],
)
def test_malformed_direct_events_are_400(event, code):
    error = error_of(event)
    assert (error.status, error.code) == (400, code)


def test_batch_keeps_order_and_leaves_item_checks_to_the_handler():
    urls = [URL, 42, "http://x/2.png"]
    request = parse_event({"urls": urls, "top_k": 2}, LABELS)
    assert (request.kind, request.urls, request.top_k, request.batch) == (BATCH, tuple(urls), 2, True)


@pytest.mark.parametrize(
    ("urls", "code"),
    [
        ([], "invalid_urls"),
        ("http://a", "invalid_urls"),
        (None, "invalid_urls"),
        ([URL] * (MAX_BATCH_URLS + 1), "too_many_urls"),
    ],
)
def test_bad_batches_are_400(urls, code):
    error = error_of({"urls": urls})
    assert (error.status, error.code) == (400, code)


def test_batch_at_the_limit_is_fine():
    assert len(parse_event({"urls": [URL] * MAX_BATCH_URLS}, LABELS).urls) == MAX_BATCH_URLS


# ---------------------------------------------------------------- proxy events


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_json_body(make, kind):
    request = parse_event(
        make(json.dumps({"url": URL, "top_k": 2}), headers={"content-type": "application/json"}), LABELS
    )
    assert (request.kind, request.urls, request.top_k, request.is_proxy) == (kind, (URL,), 2, True)


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_json_body_without_content_type(make, kind):
    assert parse_event(make(f' {{"url": "{URL}"}}'), LABELS).urls == (URL,)


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_base64_json_body(make, kind):
    # Function URLs base64-encode bodies whose content type they do not consider text.
    body = base64.b64encode(json.dumps({"url": URL}).encode()).decode()
    request = parse_event(
        make(body, b64=True, headers={"Content-Type": "application/json; charset=utf-8"}), LABELS
    )
    assert request.urls == (URL,)


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_batch_body(make, kind):
    request = parse_event(make(json.dumps({"urls": [URL, URL]})), LABELS)
    assert (request.kind, request.batch, len(request.urls)) == (kind, True, 2)


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_base64_image_body(make, kind, red_png):
    event = make(
        base64.b64encode(red_png).decode(),
        b64=True,
        headers={"content-type": "image/png"},
        query={"top_k": "1"},
    )
    request = parse_event(event, LABELS)
    assert (request.kind, request.image, request.urls, request.top_k) == (kind, red_png, (), 1)


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_base64_image_without_content_type(make, kind, blue_jpeg):
    request = parse_event(make(base64.b64encode(blue_jpeg).decode(), b64=True), LABELS)
    assert request.image == blue_jpeg


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_raw_text_body_is_passed_on_as_image_bytes(make, kind):
    # Not JSON and not base64: the decoder gets to say 415 about it.
    request = parse_event(make("GIF89a not really", headers={"Content-Type": "image/gif"}), LABELS)
    assert request.image == b"GIF89a not really"


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_proxy_get_with_query_string(make, kind):
    request = parse_event(make(None, method="GET", query={"url": URL, "top_k": "5"}), LABELS)
    assert (request.urls, request.top_k) == ((URL,), 5)


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_query_top_k_applies_to_a_json_body_without_one(make, kind):
    assert parse_event(make(json.dumps({"url": URL}), query={"top_k": "2"}), LABELS).top_k == 2


@pytest.mark.parametrize(("make", "kind"), PROXIES)
@pytest.mark.parametrize(
    ("build", "status", "code"),
    [
        (lambda make: make(None), 400, "missing_body"),
        (lambda make: make(""), 400, "missing_body"),
        (lambda make: make("{not json", headers={"content-type": "application/json"}), 400, "invalid_json"),
        (lambda make: make('{"url": '), 400, "invalid_json"),
        (lambda make: make("[1, 2]", headers={"content-type": "application/json"}), 400, "invalid_request"),
        (lambda make: make('{"top_k": 2}'), 400, "missing_url"),
        (lambda make: make('{"url": 7}'), 400, "invalid_url"),
        (lambda make: make('{"url": "x", "top_k": 0}'), 400, "invalid_top_k"),
        (lambda make: make("!!!not base64!!!", b64=True), 400, "invalid_base64"),
        (lambda make: make("abc", b64=True), 400, "invalid_base64"),  # bad padding
        (lambda make: make(None, method="GET", query={"url": URL, "top_k": "x"}), 400, "invalid_top_k"),
        (lambda make: make("AAAA", b64=True, query={"top_k": "99"}), 400, "invalid_top_k"),
    ],
)
def test_malformed_proxy_requests(make, kind, build, status, code):
    error = error_of(build(make))
    assert (error.status, error.code) == (status, code)


def test_odd_headers_and_query_do_not_crash(red_png):
    event = v1_event(base64.b64encode(red_png).decode(), b64=True, headers=["x"], query="top_k=1")
    assert parse_event(event, LABELS).image == red_png


def test_oversized_inline_images_are_413(monkeypatch):
    monkeypatch.setattr(events, "MAX_INLINE_IMAGE_BYTES", 1000)
    for event in (
        v2_event(base64.b64encode(b"\0" * 1001).decode(), b64=True),
        v1_event("x" * 1001),
    ):
        error = error_of(event)
        assert (error.status, error.code) == (413, "image_too_large_bytes")
    assert len(parse_event(v2_event(base64.b64encode(b"\0" * 1000).decode(), b64=True), LABELS).image) == 1000


# ---------------------------------------------------------------- responses


@pytest.mark.parametrize("kind", [PROXY_V1, PROXY_V2])
def test_proxy_response(kind):
    body = {"predictions": [{"label": "hat", "score": 0.5}], "note": "é"}
    response = respond(kind, 200, body)
    assert response["statusCode"] == 200
    assert response["headers"] == {"Content-Type": "application/json"}
    assert response["isBase64Encoded"] is False
    assert json.loads(response["body"]) == body


@pytest.mark.parametrize("kind", [PROXY_V1, PROXY_V2])
def test_proxy_error_response_carries_the_status(kind):
    error = ServingError(413, "image_too_large_bytes", "Too big.")
    response = respond(kind, 413, error.to_body())
    assert response["statusCode"] == 413
    assert json.loads(response["body"]) == {
        "error": {"status": 413, "code": "image_too_large_bytes", "message": "Too big."}
    }


@pytest.mark.parametrize("kind", [DIRECT, BATCH])
def test_direct_response_is_the_body_itself(kind):
    body = {"error": {"status": 400, "code": "missing_url", "message": "x"}}
    assert respond(kind, 400, body) is body


def test_proxy_headers_are_not_shared_between_responses():
    first = respond(PROXY_V2, 200, {})
    first["headers"]["X-Mutated"] = "1"
    assert "X-Mutated" not in respond(PROXY_V2, 200, {})["headers"]


# ---------------------------------------------------------------- hostile requests (issue 12)


@pytest.mark.parametrize(
    "top_k",
    ["9" * 5000, " " + "1" * 7, 10**5000, -(10**5000), "0" * 4400 + "3"],
    ids=["5000-digit-string", "7-digits", "5000-digit-int", "negative", "zero-padded"],
)
def test_oversized_top_k_is_400_not_a_crash(top_k):
    # int() of 4300+ digits raises ValueError, and json.dumps of such an int too.
    error = error_of({"url": URL, "top_k": top_k})
    assert (error.status, error.code) == (400, "invalid_top_k")
    assert len(error.message) < 200


@pytest.mark.parametrize(("make", "kind"), PROXIES)
@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"url": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"url": "http://x/", "top_k": ' + "9" * 5000 + "}",
    ],
    ids=["deep-array", "deep-value", "5000-digit-int"],
)
def test_json_parsers_limits_are_invalid_json(make, kind, body):
    error = error_of(make(body, headers={"content-type": "application/json"}))
    assert (error.status, error.code) == (400, "invalid_json")


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_lone_surrogate_in_a_text_body_is_400(make, kind):
    error = error_of(make('{"url": "http://example.com/a\ud800.jpg"}'))
    assert (error.status, error.code) == (400, "invalid_body")


@pytest.mark.parametrize(("make", "kind"), PROXIES)
def test_escaped_lone_surrogate_in_json_reaches_the_url_check(make, kind):
    # "\ud800" written as an escape is legal JSON; fetch.py refuses the URL (tested there).
    request = parse_event(make('{"url": "http://example.com/a\\ud800.jpg"}'), LABELS)
    assert request.urls == ("http://example.com/a\ud800.jpg",)


FLAGS = [(True, True), ("true", True), (" TRUE ", True), (False, False), ("false", False), (None, False)]


@pytest.mark.parametrize(("flag", "is_base64"), FLAGS)
def test_is_base64_encoded_accepts_booleans_and_their_spellings(flag, is_base64, red_png):
    body = base64.b64encode(red_png).decode() if is_base64 else "GIF89a text"
    event = v2_event(body, headers={"content-type": "image/png"})
    event["isBase64Encoded"] = flag
    assert parse_event(event, LABELS).image == (red_png if is_base64 else b"GIF89a text")


@pytest.mark.parametrize("flag", [1, 0, "yes", "", [], {"b": 1}, 1.0])
def test_other_is_base64_encoded_values_are_400(flag):
    event = v1_event("AAAA")
    event["isBase64Encoded"] = flag
    error = error_of(event)
    assert (error.status, error.code) == (400, "invalid_request")
    assert "isBase64Encoded" in error.message

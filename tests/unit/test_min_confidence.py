"""A "not sure" answer: the confidence threshold from a request, env MIN_CONFIDENCE, and its response shape.

Tiny model: a solid red image scores red 0.99999; a grey one scores 1/3 for each label.
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest

from lambda_function.errors import ServingError
from lambda_function.events import min_confidence_from_env, parse_event, parse_min_confidence
from lambda_function.metrics import request_metrics
from tests.fixtures.images import RED, solid
from tests.fixtures.proxy_events import v1_event, v2_event

CONTEXT = SimpleNamespace(aws_request_id="req-threshold")
GREY = (128, 128, 128)
PLAIN_KEYS = {"predictions", "scores", "model", "timings_ms"}
DECISION_KEYS = {"label", "confident", "min_confidence"}


def body_of(response: dict) -> dict:
    return json.loads(response["body"]) if "statusCode" in response else response


def request_lines(capsys) -> list[dict]:
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return [line for line in lines if line["message"] == "request"]


@pytest.fixture
def urls(allowed_server) -> SimpleNamespace:
    return SimpleNamespace(
        red=allowed_server.add("/red.png", solid(RED)), grey=allowed_server.add("/grey.png", solid(GREY))
    )


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (0.5, 0.5), (1, 1.0), ("0.25", 0.25), (" 1 ", 1.0)]
)
def test_valid_thresholds(value, expected):
    assert parse_min_confidence(value) == expected


@pytest.mark.parametrize(
    "value",
    [0, 0.0, -0.1, 1.0001, 2, True, False, float("nan"), float("inf"), "", "high", "nan", [0.5], {}],
)
def test_invalid_thresholds_are_400_with_a_stable_code(value):
    with pytest.raises(ServingError) as caught:
        parse_min_confidence(value)
    assert (caught.value.status, caught.value.code) == (400, "invalid_min_confidence")
    assert "'min_confidence' must be a number greater than 0 and at most 1" in caught.value.message


def test_a_huge_json_integer_is_refused_without_converting_it():
    with pytest.raises(ServingError) as caught:
        parse_min_confidence(10**5000)  # json.loads makes such ints; str() of one raises
    assert caught.value.code == "invalid_min_confidence" and "a very large integer" in caught.value.message


@pytest.mark.parametrize("raw", ["0", "1.5", "sure", "nan"])
def test_a_bad_env_value_is_the_deployments_fault(raw):
    with pytest.raises(ServingError) as caught:
        min_confidence_from_env({"MIN_CONFIDENCE": raw})
    assert (caught.value.status, caught.value.code) == (500, "misconfigured")
    assert "MIN_CONFIDENCE" in caught.value.message and repr(raw) in caught.value.message


def test_env_unset_or_empty_is_off():
    assert min_confidence_from_env({}) is None and min_confidence_from_env({"MIN_CONFIDENCE": " "}) is None
    assert min_confidence_from_env({"MIN_CONFIDENCE": "0.8"}) == 0.8


def test_every_request_shape_carries_it():
    assert parse_event({"url": "https://x/a.jpg", "min_confidence": 0.7}, 3).min_confidence == 0.7
    assert parse_event({"urls": ["https://x/a.jpg"], "min_confidence": 0.7}, 3).min_confidence == 0.7
    query = {"url": "https://x/a.jpg", "min_confidence": "0.6"}
    assert parse_event(v2_event(None, method="GET", query=query), 3).min_confidence == 0.6
    body = json.dumps({"url": "https://x/a.jpg", "min_confidence": 0.9})
    assert parse_event(v1_event(body, query={"min_confidence": "0.6"}), 3).min_confidence == 0.9  # body wins
    inline = v2_event(
        "AAAA", b64=True, headers={"content-type": "image/png"}, query={"min_confidence": "0.4"}
    )
    assert parse_event(inline, 3).min_confidence == 0.4
    assert parse_event({"url": "https://x/a.jpg"}, 3).min_confidence is None


# ---------------------------------------------------------------- the handler


def test_default_off_leaves_every_response_as_it_was(app, urls, capsys):
    body = app.lambda_handler({"url": urls.grey}, CONTEXT)
    assert set(body) == PLAIN_KEYS
    batch = app.lambda_handler({"urls": [urls.red, urls.grey]}, CONTEXT)
    assert all(set(result) == PLAIN_KEYS for result in batch["results"])
    assert all("LowConfidence" not in line for line in request_lines(capsys))


def test_under_the_threshold_the_answer_is_not_sure(app, urls):
    unsure = app.lambda_handler({"url": urls.grey, "min_confidence": 0.5}, CONTEXT)
    assert set(unsure) == PLAIN_KEYS | DECISION_KEYS
    assert (unsure["label"], unsure["confident"], unsure["min_confidence"]) == (None, False, 0.5)
    assert len(unsure["predictions"]) == 3  # the top-k list stays, for a person to look at
    sure = app.lambda_handler({"url": urls.red, "min_confidence": 0.5}, CONTEXT)
    assert (sure["label"], sure["confident"]) == ("red", True)
    assert sure["label"] == sure["predictions"][0]["label"]


def test_the_boundary_is_the_score_the_response_shows(app, urls):
    top = app.lambda_handler({"url": urls.grey}, CONTEXT)["predictions"][0]["score"]
    assert app.lambda_handler({"url": urls.grey, "min_confidence": top}, CONTEXT)["confident"] is True
    above = app.lambda_handler({"url": urls.grey, "min_confidence": top + 1e-6}, CONTEXT)
    assert above["confident"] is False


def test_env_sets_it_and_a_request_overrides_it(app, urls, monkeypatch):
    monkeypatch.setenv("MIN_CONFIDENCE", "0.9")
    assert app.lambda_handler({"url": urls.grey}, CONTEXT)["confident"] is False
    body = app.lambda_handler({"url": urls.grey, "min_confidence": 0.3}, CONTEXT)
    assert (body["confident"], body["min_confidence"]) == (True, 0.3)


def test_a_bad_env_value_answers_500_misconfigured_and_the_log_says_why(app, urls, monkeypatch, capsys):
    monkeypatch.setenv("MIN_CONFIDENCE", "90%")
    body = app.lambda_handler({"url": urls.red}, CONTEXT)
    assert (body["error"]["status"], body["error"]["code"]) == (500, "misconfigured")
    assert "MIN_CONFIDENCE" in body["error"]["message"]
    (line,) = request_lines(capsys)
    assert (line["status"], line["code"]) == (500, "misconfigured")
    monkeypatch.setenv("MIN_CONFIDENCE", "")
    assert set(app.lambda_handler({"url": urls.red}, CONTEXT)) == PLAIN_KEYS  # fixed: served again


@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
def test_a_bad_request_value_is_400(app, urls, make):
    response = app.lambda_handler(make(json.dumps({"url": urls.red, "min_confidence": 0})), CONTEXT)
    assert response["statusCode"] == 400
    assert body_of(response)["error"]["code"] == "invalid_min_confidence"
    direct = app.lambda_handler({"url": urls.red, "min_confidence": "sure"}, CONTEXT)
    assert direct["error"]["code"] == "invalid_min_confidence"


def test_batch_answers_each_image_and_the_metric_counts_the_unsure(app, urls, capsys):
    capsys.readouterr()
    body = app.lambda_handler({"urls": [urls.red, urls.grey, urls.grey], "min_confidence": 0.5}, CONTEXT)
    assert [r["confident"] for r in body["results"]] == [True, False, False]
    assert [r["label"] for r in body["results"]] == ["red", None, None]
    (line,) = request_lines(capsys)
    assert (line["LowConfidence"], line["min_confidence"]) == (2, 0.5)
    (main,) = [d for d in line["_aws"]["CloudWatchMetrics"] if d["Dimensions"] == [["ModelId", "EventKind"]]]
    assert {"Name": "LowConfidence", "Unit": "Count"} in main["Metrics"]


@pytest.mark.parametrize("make", [v1_event, v2_event], ids=["v1", "v2"])
def test_proxy_requests_json_query_and_inline(app, urls, make, capsys):
    capsys.readouterr()
    post = app.lambda_handler(make(json.dumps({"url": urls.grey, "min_confidence": 0.5})), CONTEXT)
    assert post["statusCode"] == 200 and body_of(post)["confident"] is False
    get = make(None, method="GET", query={"url": urls.red, "min_confidence": "0.5"})
    assert body_of(app.lambda_handler(get, CONTEXT))["label"] == "red"
    image = base64.b64encode(solid(GREY)).decode()
    inline = make(image, b64=True, headers={"content-type": "image/png"}, query={"min_confidence": "0.5"})
    assert body_of(app.lambda_handler(inline, CONTEXT))["confident"] is False
    assert [line["LowConfidence"] for line in request_lines(capsys)] == [1, 0, 1]


def test_the_metric_is_absent_without_a_threshold_and_never_a_bool():
    fields = {"kind": "direct", "status": 200, "model": "0123456789ab"}
    assert "LowConfidence" not in request_metrics(fields, now_ms=0)
    assert "LowConfidence" not in request_metrics({**fields, "low_confidence": True}, now_ms=0)
    assert request_metrics({**fields, "low_confidence": 0}, now_ms=0)["LowConfidence"] == 0

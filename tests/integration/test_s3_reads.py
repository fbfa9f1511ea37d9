"""Reading S3 objects (``s3://`` URLs and the bulk path's reads) against a real S3 API: moto's server on
127.0.0.1, behind a loopback proxy that can make chosen keys misbehave on the wire (a body or headers that
trickle in a byte at a time). Never a mock of boto3: the function's own client, with its own transport.
"""

from __future__ import annotations

import sys
import time
import uuid

import boto3
import pytest

from lambda_function import fetch
from lambda_function.errors import ServingError
from lambda_function.fetch import FetchLimits, read_s3_object, valid_s3_bucket
from tests.fixtures.images import RED, solid
from tests.fixtures.moto_s3 import FaultProxy, moto_s3_server, s3_env

# A short deadline keeps the trickle tests quick; the budget is the same code path as production's 10 s.
LIMITS = FetchLimits(max_bytes=100_000, connect_timeout=1.0, read_timeout=1.0, total_timeout=1.5)
PNG = solid(RED)


@pytest.fixture(scope="module")
def proxy():
    with moto_s3_server() as endpoint:
        faulty = FaultProxy(endpoint)
        try:
            yield faulty
        finally:
            faulty.close()


@pytest.fixture
def s3(proxy, tmp_path, monkeypatch):
    for name, value in s3_env(proxy.endpoint, str(tmp_path)).items():
        monkeypatch.setenv(name, value)
    fetch._s3_client.cache_clear()
    proxy.faults.clear()
    yield boto3.client("s3")
    fetch._s3_client.cache_clear()


@pytest.fixture
def bucket(s3) -> str:
    name = f"reads-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def put(s3, bucket, key, body=PNG, content_type="image/png"):
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def refused(url: str, status: int, code: str, limits: FetchLimits = LIMITS) -> ServingError:
    with pytest.raises(ServingError) as caught:
        fetch.fetch(url, limits)
    assert (caught.value.status, caught.value.code) == (status, code), caught.value.message
    return caught.value


def sent_for(proxy: FaultProxy, key: str) -> list[str]:
    return [method for method, path in proxy.requests if path.endswith("/" + key)]


def test_an_object_is_read_with_its_etag(s3, bucket):
    put(s3, bucket, "photos/shirt 1.png?v=2")  # "?" is part of the key, as the AWS CLI writes it
    assert fetch.fetch(f"s3://{bucket}/photos/shirt 1.png?v=2", LIMITS) == PNG
    data, meta = read_s3_object(bucket, "photos/shirt 1.png?v=2", LIMITS)
    assert data == PNG and meta["etag"].strip('"') == s3.head_object(
        Bucket=bucket, Key="photos/shirt 1.png?v=2"
    )["ETag"].strip('"')


def test_an_object_over_the_cap_is_413_before_its_body_is_read(s3, bucket):
    put(s3, bucket, "big.png", b"x" * 5000)
    refused(f"s3://{bucket}/big.png", 413, "image_too_large_bytes", FetchLimits(max_bytes=1000))


def test_a_non_image_content_type_is_415(s3, bucket):
    put(s3, bucket, "data.json", b"{}", "application/json")
    refused(f"s3://{bucket}/data.json", 415, "unsupported_media_type")


def test_s3_errors_name_s3s_code_and_nothing_of_the_library(s3, bucket):
    error = refused(f"s3://{bucket}/missing.png", 502, "upstream_error")
    assert "NoSuchKey" in error.message and "Error" not in error.message.replace("NoSuchKey", "")
    error = refused(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.png", 502, "upstream_error")
    assert "NoSuchBucket" in error.message


def test_a_body_that_trickles_misses_the_deadline_while_waiting(s3, bucket, proxy):
    put(s3, bucket, "slow/trickle.png")
    proxy.faults["trickle"] = "trickle_body"  # 4 bytes a second: the PNG would take minutes
    started = time.monotonic()
    refused(f"s3://{bucket}/slow/trickle.png", 504, "upstream_timeout")
    assert time.monotonic() - started < LIMITS.total_timeout + 1.0


def test_headers_that_trickle_miss_the_deadline_too(s3, bucket, proxy):
    put(s3, bucket, "slow/headers.png")
    proxy.faults["slow/headers"] = "slow_headers"
    started = time.monotonic()
    with pytest.raises(ServingError) as caught:
        read_s3_object(bucket, "slow/headers.png", LIMITS)
    assert (caught.value.code, caught.value.http_status) == ("upstream_timeout", None)
    assert time.monotonic() - started < LIMITS.total_timeout + 1.0


def test_the_next_read_after_a_timeout_works(s3, bucket, proxy):
    put(s3, bucket, "slow/once.png")
    proxy.faults["slow/once"] = "trickle_body"
    refused(f"s3://{bucket}/slow/once.png", 504, "upstream_timeout")
    proxy.faults.clear()
    assert fetch.fetch(f"s3://{bucket}/slow/once.png", LIMITS) == PNG


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3://my-bucket",
        "s3://my-bucket/",
        "s3://Bad_Bucket/k",
        "s3://b/k",
        "s3://my..bucket/k",
        "s3://192.168.1.1/k",
        "s3://xn--bucket/k",
        "s3://sthree-bucket/k",
        "s3://my-bucket/lone-\ud800-surrogate.png",
        "s3://my-bucket/" + "k" * 1025,
    ],
)
def test_a_location_s3_cannot_be_asked_for_is_refused_before_any_request(s3, proxy, url):
    before = len(proxy.requests)
    error = refused(url, 400, "invalid_url")
    assert len(proxy.requests) == before
    assert "Unicode" not in type(error).__name__ and "Error" not in error.message


@pytest.mark.parametrize("name", ["my.bucket.example", "a-b", "my-ap-abc123-s3alias", "base--usw2-az1--x-s3"])
def test_valid_bucket_names_pass_the_name_check(name):
    assert valid_s3_bucket(name)


def test_without_boto3_s3_urls_are_500(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)
    fetch._s3_client.cache_clear()
    try:
        refused("s3://my-bucket/shirt.jpg", 500, "s3_unavailable")
    finally:
        fetch._s3_client.cache_clear()


def test_writes_keep_botocores_transport_and_work(s3, bucket):
    client = fetch.s3_client(LIMITS)
    client.put_object(Bucket=bucket, Key="written.json", Body=b"{}\n")
    assert s3.get_object(Bucket=bucket, Key="written.json")["Body"].read() == b"{}\n"


def test_an_s3_refusal_keeps_only_its_code_never_the_account_details():
    from botocore.exceptions import ClientError

    message = "User: arn:aws:sts::123456789012:assumed-role/secret is not authorized to perform s3:GetObject"
    error = fetch.s3_error(
        ClientError(
            {
                "Error": {"Code": "AccessDenied", "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": 403},
            },
            "GetObject",
        ),
        "s3://b/k",
    )
    assert (error.status, error.code, error.s3_code, error.http_status) == (
        502,
        "upstream_error",
        "AccessDenied",
        403,
    )
    assert "arn:aws" not in error.message and "ClientError" not in error.message

"""Classify every object under s3://BUCKET/PREFIX: start the stack's Distributed Map, or run it here.

Deployed (template.yaml with BulkStateMachine=true): finds the state machine in the stack's outputs,
starts an execution with {"bucket": ..., "prefix": ...} and prints where the results go::

    python -m deploy.classify_bucket --bucket my-photos --prefix catalogue/ --stack edge-clothing-classifier
    python -m deploy.classify_bucket ... --state-machine-arn arn:aws:states:...:stateMachine:... --wait

``--local`` does the state machine's job in this process instead: lists the prefix the way its
s3:listObjectsV2 ItemReader does, cuts the listing into batches the way its ItemBatcher does, and hands
each batch to ``lambda_function.app.lambda_handler`` (retrying a batch on RetryLater, as its Retry does).
One batch at a time (MaxConcurrency 1). It reads S3 wherever boto3 points (AWS_ENDPOINT_URL_S3 for a
local S3 such as moto) and writes results where the function's env says (RESULTS_BUCKET,
RESULTS_PREFIX). ``make classify-bucket BUCKET=... PREFIX=... [LOCAL=1]`` wraps this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run as a plain script from anywhere

STATE_MACHINE_OUTPUT = "ClassifyBucketStateMachineArn"
RESULTS_OUTPUT = "ResultsLocation"
DEFAULT_ITEMS_PER_BATCH = 50  # template.yaml's MapItemsPerBatch default
# The state machine's ItemBatcher also cuts at this much input (template.yaml: MaxInputBytesPerBatch).
MAX_INPUT_BYTES_PER_BATCH = 204_800
# As the state machine's Retry on RetryLater: 1 try + 4 retries, 5 s doubling (shorter here).
LOCAL_ATTEMPTS = 5
LOCAL_FIRST_WAIT_S = 1.0


@dataclass
class LocalRun:
    images: int = 0
    batches: int = 0
    seconds: float = 0.0
    summary: dict[str, int] = field(default_factory=dict)
    results: list[dict] = field(default_factory=list)


def list_items(client, bucket: str, prefix: str) -> Iterator[dict]:
    """Objects under the prefix as the s3:listObjectsV2 ItemReader passes them on (Key, Etag, Size...)."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield {
                "Etag": obj["ETag"],
                "Key": obj["Key"],
                "LastModified": obj["LastModified"].timestamp(),
                "Size": obj["Size"],
                "StorageClass": obj.get("StorageClass", "STANDARD"),
            }


def batches(
    items: Iterator[dict], size: int, max_bytes: int = MAX_INPUT_BYTES_PER_BATCH
) -> Iterator[list[dict]]:
    """Batches of at most ``size`` items and ``max_bytes`` of JSON, as the ItemBatcher cuts them."""
    batch: list[dict] = []
    used = 0
    for item in items:
        cost = len(json.dumps(item, default=str).encode("utf-8")) + 2
        if batch and used + cost > max_bytes:
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += cost
        if len(batch) == size:
            yield batch
            batch, used = [], 0
    if batch:
        yield batch


def run_local(
    bucket: str, prefix: str, items_per_batch: int = DEFAULT_ITEMS_PER_BATCH, log=print
) -> LocalRun:
    """The Distributed Map, emulated in-process: every batch through lambda_handler, one at a time."""
    import boto3

    from lambda_function import app
    from lambda_function.bulk import RetryLater

    run = LocalRun()
    started = time.perf_counter()
    for batch in batches(list_items(boto3.client("s3"), bucket, prefix), items_per_batch):
        event = {"Items": batch, "BatchInput": {"bucket": bucket}}
        for attempt in range(LOCAL_ATTEMPTS):
            try:
                response = app.lambda_handler(event, None)
                break
            except RetryLater as err:
                if attempt == LOCAL_ATTEMPTS - 1:
                    raise
                log(f"batch {run.batches + 1}: {err} (retrying)")
                time.sleep(LOCAL_FIRST_WAIT_S * 2**attempt)
        if "error" in response:
            raise SystemExit(f"the function refused the batch: {response['error']['message']}")
        run.batches += 1
        run.images += len(batch)
        run.results += response["results"]
        for code, count in response["summary"].items():
            run.summary[code] = run.summary.get(code, 0) + count
        log(f"batch {run.batches}: {len(batch)} objects, {response['summary']}")
    run.seconds = time.perf_counter() - started
    return run


def stack_outputs(stack: str) -> dict[str, str]:
    import boto3

    (description,) = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}


def execution_name(prefix: str) -> str:
    """Unique, readable, and within Step Functions' 80-character name rules."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", prefix).strip("-")[:40] or "bucket"
    return f"{stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def start(state_machine_arn: str, bucket: str, prefix: str, results: str | None, wait: bool) -> dict:
    import boto3

    client = boto3.client("stepfunctions")
    execution = client.start_execution(
        stateMachineArn=state_machine_arn,
        name=execution_name(prefix),
        input=json.dumps({"bucket": bucket, "prefix": prefix}),
    )
    arn = execution["executionArn"]
    print(f"started: {arn}")
    region = arn.split(":")[3]
    print(f"console: https://{region}.console.aws.amazon.com/states/home#/v2/executions/details/{arn}")
    if results:
        print(f"per-image results: {results}{bucket}/{prefix}<rest of key>.json (one JSON line each)")
        print(f"run report (Distributed Map ResultWriter): {results}map-runs/")
    else:
        print("per-image results: the stack's ResultsLocation output (ResultsPrefix of ResultsBucket)")
    if not wait:
        return execution
    while True:
        described = client.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            print(f"status: {described['status']}")
            return described
        time.sleep(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="", help="only keys under this prefix (default: all)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--stack", default="edge-clothing-classifier", help="CloudFormation stack name")
    where.add_argument("--state-machine-arn", help="skip the stack lookup")
    parser.add_argument("--wait", action="store_true", help="poll until the execution ends")
    parser.add_argument("--local", action="store_true", help="run the batches in this process instead")
    parser.add_argument("--items-per-batch", type=int, default=DEFAULT_ITEMS_PER_BATCH)
    args = parser.parse_args(argv)
    if not args.bucket:
        parser.error("--bucket is empty: make classify-bucket BUCKET=my-bucket PREFIX=photos/")

    if args.local:
        run = run_local(args.bucket, args.prefix, args.items_per_batch)
        rate = run.images / run.seconds if run.seconds else 0.0
        print(
            f"{run.images} objects, {run.batches} batches, {run.seconds:.1f} s ({rate:.2f}/s): {run.summary}"
        )
        results_bucket = os.environ.get("RESULTS_BUCKET")
        if results_bucket:
            prefix = os.environ.get("RESULTS_PREFIX", "classifications/")
            print(f"per-image results: s3://{results_bucket}/{prefix}{args.bucket}/<key>.json")
        else:
            print("RESULTS_BUCKET is not set: results were only returned, not written")
        return 0

    results = None
    arn = args.state_machine_arn
    if arn is None:
        outputs = stack_outputs(args.stack)
        arn = outputs.get(STATE_MACHINE_OUTPUT)
        if not arn:
            raise SystemExit(
                f"stack {args.stack} has no {STATE_MACHINE_OUTPUT} output: deploy with "
                "--parameter-overrides BulkStateMachine=true S3BucketName=... ResultsBucket=..."
            )
        results = outputs.get(RESULTS_OUTPUT)
    start(arn, args.bucket, args.prefix, results, args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())

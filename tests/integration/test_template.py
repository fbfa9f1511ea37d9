"""template.yaml, the SAM makefile hook and events/: linted by SAM, and holding the promises the README makes.

`sam` lives in its own virtual environment (``.venv-sam``; its pins clash with nothing here, but it
pulls in ~60 packages the project does not need). Found through env SAM_CLI, ``.venv-sam/bin/sam`` or
PATH; missing, these tests skip locally and FAIL under CI=true. Every sam run is kept off the network:
no telemetry, the version check marked as done, and any HTTP(S) it still tries sent to 127.0.0.1:9.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from deploy.cfn_yaml import load_cfn
from lambda_function.bulk import RetryLater
from lambda_function.events import (
    BATCH,
    BULK_KINDS,
    DIRECT,
    MAP_BATCH,
    PROXY_V1,
    PROXY_V2,
    S3_BATCH,
    S3_NOTIFICATION,
    event_kind,
    parse_bulk_event,
    parse_event,
    parse_min_confidence,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
DEPLOY_GUIDE = REPO / "docs" / "deploying.md"
EVENTS = REPO / "events"
LAMBDA_MAKEFILE = REPO / "lambda_function" / "Makefile"
FUNCTION_ID = "ClassifierFunction"
MIN_RUNTIME = (3, 12)  # ai-edge-litert's manylinux_2_27 wheels need Amazon Linux 2023
EXPECTED_EVENT_KINDS = {
    "direct.json": DIRECT,
    "s3.json": DIRECT,
    "batch.json": BATCH,
    "apigw-v1.json": PROXY_V1,
    "http-api-v2.json": PROXY_V2,
    "function-url.json": PROXY_V2,
    "s3-notification.json": S3_NOTIFICATION,
    "s3-batch-operations.json": S3_BATCH,
    "map-batch.json": MAP_BATCH,
}
# Every bulk part switched on (their defaults are all off), for lint and translation.
BULK_ON = {
    "S3BucketName": "my-clothing-photos",
    "ResultsBucket": "my-clothing-results",
    "UploadBucketName": "my-clothing-uploads",
    "TagObjects": "true",
    "BulkStateMachine": "true",
    "BatchOperationsRole": "true",
}
BULK_CONDITIONS = ["HasS3Bucket", "HasResults", "HasUploads", "TagsWanted"]
# Translating the template needs a region; this one is never contacted.
OFFLINE_REGION = "us-east-1"
TRANSLATE = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

template = yaml_parse(open(sys.argv[1]).read())
# The translator insists on an S3 CodeUri (sam package's job); the local folder is checked elsewhere.
template["Resources"][sys.argv[2]]["Properties"]["CodeUri"] = "s3://bucket/code.zip"
print(json.dumps(transform(template, json.loads(sys.argv[3]), NoManagedPolicies())))
"""


# ---------------------------------------------------------------- helpers


def load_template() -> dict:
    return load_cfn(TEMPLATE.read_text(encoding="utf-8"))


def find_sam() -> Path:
    candidates = [os.environ.get("SAM_CLI"), REPO / ".venv-sam" / "bin" / "sam", shutil.which("sam")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    message = (
        "sam not found: set SAM_CLI, or create .venv-sam "
        "(python3 -m venv .venv-sam && .venv-sam/bin/pip install aws-sam-cli)"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def sam() -> Path:
    return find_sam()


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict[str, str]:
    """An environment in which sam has no reason to go online, and could not if it tried."""
    home = tmp_path_factory.mktemp("sam-home")
    (home / "metadata.json").write_text(
        json.dumps({"telemetryEnabled": False, "lastVersionCheck": time.time()})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        SAM_CLI_TELEMETRY="0",
        __SAM_CLI_APP_DIR=str(home),
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(home / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(home / "aws-credentials"),
        AWS_DEFAULT_REGION=OFFLINE_REGION,
        AWS_REGION=OFFLINE_REGION,
    )
    return env


def translate(sam: Path, env: dict[str, str], parameters: dict[str, str]) -> dict:
    python = sam.resolve().parent / "python"
    if not python.is_file():
        pytest.skip(f"no Python with samtranslator next to {sam}")
    result = subprocess.run(
        [str(python), "-c", TRANSLATE, str(TEMPLATE), FUNCTION_ID, json.dumps(parameters)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def is_s3_grant(permission: dict) -> bool:
    """The upload bucket's notification grant: S3 only, from this account and that bucket only."""
    properties = permission["Properties"]
    if properties["Principal"] != "s3.amazonaws.com":
        return False
    assert permission["Condition"] == "HasUploads" and properties["Action"] == "lambda:InvokeFunction"
    assert properties["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert properties["SourceArn"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${UploadBucketName}"}
    return True


def with_defaults(text: str, defaults: dict[str, str]) -> str:
    """template.yaml's text with the Default of each named parameter replaced (comments may sit between)."""
    for name, value in defaults.items():
        pattern = re.compile(
            rf"(\n  {name}:\n    Type: (?:String|Number)\n(?:    #[^\n]*\n)*    Default: )[^\n]*"
        )
        text, count = pattern.subn(lambda m, v=value: m.group(1) + json.dumps(v), text)
        assert count == 1, name
    return text


def guide_parameter_sets() -> dict[str, dict[str, str]]:
    """The parameter sets docs/deploying.md recommends: `name: Key=Value ...` lines in its marked block."""
    text = DEPLOY_GUIDE.read_text(encoding="utf-8")
    block = text.split("<!-- parameter-sets", 1)[1].split("<!-- /parameter-sets -->", 1)[0]
    lines = block.split("```text", 1)[1].split("```", 1)[0].strip().splitlines()
    sets = {}
    for line in lines:
        name, _, rest = line.partition(":")
        sets[name.strip()] = dict(pair.split("=", 1) for pair in rest.split() if "=" in pair)
    return sets


def sam_lint(
    sam: Path, env: dict[str, str], defaults: dict[str, str], tag: str
) -> subprocess.CompletedProcess:
    """`sam validate --lint` of template.yaml with ``defaults`` as its parameters' Defaults.

    cfn-lint resolves parameters to their defaults (and checks them against AllowedValues, patterns and
    bounds): a copy with the wanted values as defaults, beside the original so CodeUri stays relative.
    """
    template = TEMPLATE
    if defaults:
        template = REPO / f".lint-{tag}.yaml"
        template.write_text(with_defaults(TEMPLATE.read_text(encoding="utf-8"), defaults), encoding="utf-8")
    try:
        return subprocess.run(
            [str(sam), "validate", "--lint", "--template", str(template)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=300,
        )
    finally:
        if template != TEMPLATE:
            template.unlink()


def evaluate(expression, parameters: dict[str, str]):
    """A CloudFormation rule or condition expression, with Ref resolved from ``parameters``."""
    if not isinstance(expression, dict):
        return expression
    ((name, args),) = expression.items()
    if name == "Ref":
        return parameters[args]
    if name == "Condition":
        return evaluate(load_template()["Conditions"][args], parameters)
    values = [evaluate(a, parameters) for a in args]
    return {
        "Fn::Equals": lambda: values[0] == values[1],
        "Fn::Not": lambda: not values[0],
        "Fn::And": lambda: all(values),
        "Fn::Or": lambda: any(values),
    }[name]()


def refused_by(parameters: dict[str, str]) -> list[str]:
    """The AssertDescriptions of the template's Rules that ``parameters`` (over the defaults) break."""
    template = load_template()
    values = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    values.update(parameters)
    broken = []
    for rule in template["Rules"].values():
        if not evaluate(rule.get("RuleCondition", True), values):
            continue
        broken += [a["AssertDescription"] for a in rule["Assertions"] if not evaluate(a["Assert"], values)]
    return broken


def make_dry_run(**variables: str) -> str:
    args = [f"{k}={v}" for k, v in {"ARTIFACTS_DIR": "/nonexistent/artifacts", **variables}.items()]
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-f", str(LAMBDA_MAKEFILE), f"build-{FUNCTION_ID}", *args],
        capture_output=True,
        text=True,
        cwd="/",  # sam runs make in a scratch copy: the target must not depend on the working directory
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# ---------------------------------------------------------------- sam itself


@pytest.mark.parametrize("options", ["defaults", "bulk_on"])
def test_sam_validate_lint_passes(sam, offline_env, tmp_path, options):
    result = sam_lint(sam, offline_env, BULK_ON if options == "bulk_on" else {}, tmp_path.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def test_the_deploy_guide_recommends_parameter_sets():
    sets = guide_parameter_sets()
    assert {"private", "public"} <= set(sets) and sets["private"] == {}
    assert sets["public"]["PublicUrl"] == "true" and sets["public"]["ReservedConcurrency"]
    parameters = load_template()["Parameters"]
    assert all(name in parameters for values in sets.values() for name in values)


@pytest.mark.parametrize("name", sorted(guide_parameter_sets()))
def test_every_parameter_set_the_deploy_guide_recommends_translates_and_lints(
    sam, offline_env, tmp_path, name
):
    parameters = guide_parameter_sets()[name]
    resources = translate(sam, offline_env, parameters)["Resources"]
    assert resources[FUNCTION_ID]["Type"] == "AWS::Lambda::Function"
    assert refused_by(parameters) == []
    result = sam_lint(sam, offline_env, parameters, f"{name}-{tmp_path.name}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.mark.parametrize("public", ["false", "true"])
def test_sam_translates_the_template(sam, offline_env, public):
    # cfn-lint accepts some templates the SAM translator (what CloudFormation runs) rejects.
    resources = translate(sam, offline_env, {"PublicUrl": public, "S3BucketName": "photos"})["Resources"]
    types = {logical_id: resource["Type"] for logical_id, resource in resources.items()}
    assert types[FUNCTION_ID] == "AWS::Lambda::Function"
    assert types[f"{FUNCTION_ID}Url"] == "AWS::Lambda::Url"
    assert resources[f"{FUNCTION_ID}Url"]["Properties"]["AuthType"] == {
        "Fn::If": ["IsPublic", "NONE", "AWS_IAM"]
    }
    permissions = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"]
    assert permissions and all(p.get("Condition") == "IsPublic" for p in permissions if not is_s3_grant(p))


# ---------------------------------------------------------------- what the template promises


def test_runtime_build_and_handler():
    function = load_template()["Resources"][FUNCTION_ID]
    properties = function["Properties"]
    match = re.fullmatch(r"python(\d+)\.(\d+)", properties["Runtime"])
    assert match and (int(match[1]), int(match[2])) >= MIN_RUNTIME
    assert function["Metadata"]["BuildMethod"] == "makefile"
    assert properties["Handler"] == "lambda_function.app.lambda_handler"
    assert (REPO / properties["CodeUri"] / "Makefile").resolve() == LAMBDA_MAKEFILE
    assert (REPO / properties["CodeUri"] / "app.py").is_file()


def test_url_needs_iam_unless_made_public_explicitly():
    template = load_template()
    parameter = template["Parameters"]["PublicUrl"]
    assert parameter["Default"] == "false" and set(parameter["AllowedValues"]) == {"false", "true"}
    assert template["Conditions"]["IsPublic"] == {"Fn::Equals": [{"Ref": "PublicUrl"}, "true"]}
    url = template["Resources"][FUNCTION_ID]["Properties"]["FunctionUrlConfig"]
    assert url["AuthType"] == {"Fn::If": ["IsPublic", "NONE", "AWS_IAM"]}
    permissions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"]
    grants = [p for p in permissions if not is_s3_grant(p)]
    assert {g["Properties"]["Action"] for g in grants} == {
        "lambda:InvokeFunctionUrl",
        "lambda:InvokeFunction",
    }
    assert all(g.get("Condition") == "IsPublic" for g in grants)


def test_parameters_reach_the_function():
    template = load_template()
    parameters, properties = template["Parameters"], template["Resources"][FUNCTION_ID]["Properties"]
    assert set(parameters["Architecture"]["AllowedValues"]) == {"x86_64", "arm64"}
    assert parameters["Architecture"]["Default"] == "x86_64"
    assert properties["Architectures"] == [{"Ref": "Architecture"}]
    assert properties["MemorySize"] == {"Ref": "MemorySize"}
    assert properties["Timeout"] == {"Ref": "Timeout"}
    variables = properties["Environment"]["Variables"]
    assert variables["NUM_THREADS"] == {"Ref": "NumThreads"}
    # Local-testing knobs never reach a deployment.
    assert "FETCH_ALLOWED_HOSTS" not in variables and "MODEL_PATH" not in variables
    # The "not sure" threshold: off by default, and only values the function accepts get through.
    assert variables["MIN_CONFIDENCE"] == {"Ref": "MinConfidence"}
    assert parameters["MinConfidence"]["Default"] == ""
    pattern = re.compile(parameters["MinConfidence"]["AllowedPattern"])
    for value in ("", "0.5", ".75", "1", "1.0", "0.05"):
        assert pattern.fullmatch(value) and (not value or parse_min_confidence(value) == float(value))
    for value in ("0", "0.0", "1.5", "2", "high", "-0.5", "0.5 "):
        assert not pattern.fullmatch(value), value
    # The S3 read grant exists only when a bucket is named.
    assert template["Conditions"]["HasS3Bucket"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "S3BucketName"}, ""]}]
    }
    assert parameters["S3BucketName"]["Default"] == ""
    # Every grant exists only when its part is switched on; the first is the s3:// URL bucket's.
    policies = properties["Policies"]
    assert [p["Fn::If"][0] for p in policies] == BULK_CONDITIONS
    assert all(p["Fn::If"][2] == {"Ref": "AWS::NoValue"} for p in policies)


def test_outputs_name_the_function_and_url():
    outputs = load_template()["Outputs"]
    assert {"FunctionName", "FunctionArn", "FunctionUrl"} <= set(outputs)
    assert outputs["FunctionUrl"]["Value"] == {"Fn::GetAtt": [f"{FUNCTION_ID}Url", "FunctionUrl"]}


# ---------------------------------------------------------------- the makefile hook


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_builds_for_the_template_runtime_and_chosen_arch_and_backend():
    runtime = load_template()["Resources"][FUNCTION_ID]["Properties"]["Runtime"]
    default = make_dry_run()
    assert "deploy/build_artifact.py" in default and "--platform lambda" in default
    assert f"--python-version {runtime.removeprefix('python')}" in default
    assert "--arch x86_64" in default and '--out "/nonexistent/artifacts"' in default
    assert "--arch arm64" in make_dry_run(ARCH="arm64")
    assert "--backend tflite" in default and "--backend onnx" in make_dry_run(BACKEND="onnx")


# ---------------------------------------------------------------- events/


def test_every_sample_event_is_accepted_by_the_handler_parser():
    files = sorted(p.name for p in EVENTS.glob("*.json"))
    assert files == sorted(EXPECTED_EVENT_KINDS)
    for name in files:
        event = json.loads((EVENTS / name).read_text(encoding="utf-8"))
        if EXPECTED_EVENT_KINDS[name] in BULK_KINDS:
            kind = event_kind(event)
            assert kind == EXPECTED_EVENT_KINDS[name], name
            items = parse_bulk_event(event, kind, num_labels=10).items
            assert items and all(i.problem is None and " " in i.key for i in items[:1]), name
            continue
        request = parse_event(event, num_labels=10)
        assert request.kind == EXPECTED_EVENT_KINDS[name], name
        assert request.urls and all(isinstance(u, str) for u in request.urls), name
        assert request.top_k == 3, name
        scheme = "s3://" if name == "s3.json" else "https://"
        assert all(u.startswith(scheme) for u in request.urls), name


# ---------------------------------------------------------------- bulk (docs/bulk.md)


def test_bulk_parts_translate_with_every_option_on(sam, offline_env):
    resources = translate(sam, offline_env, BULK_ON)["Resources"]
    expected = {
        "UploadBucket": ("AWS::S3::Bucket", "HasUploads"),
        "UploadInvokePermission": ("AWS::Lambda::Permission", "HasUploads"),
        "ClassifyBucketStateMachine": ("AWS::StepFunctions::StateMachine", "HasStateMachine"),
        "ClassifyBucketRole": ("AWS::IAM::Role", "HasStateMachine"),
        "BatchOperationsInvokeRole": ("AWS::IAM::Role", "HasBatchOperationsRole"),
    }
    for logical_id, (kind, condition) in expected.items():
        assert (resources[logical_id]["Type"], resources[logical_id].get("Condition")) == (kind, condition)
    variables = resources[FUNCTION_ID]["Properties"]["Environment"]["Variables"]
    assert variables["RESULTS_BUCKET"] == {"Ref": "ResultsBucket"}
    assert variables["RESULTS_PREFIX"] == {"Ref": "ResultsPrefix"}
    assert variables["TAG_OBJECTS"] == {"Ref": "TagObjects"}
    role_policies = resources[f"{FUNCTION_ID}Role"]["Properties"]["Policies"]
    assert [p["Fn::If"][0] for p in role_policies] == BULK_CONDITIONS


def test_every_bulk_part_is_off_by_default():
    template = load_template()
    parameters = template["Parameters"]
    for name in ("ResultsBucket", "UploadBucketName", "S3BucketName"):
        assert parameters[name]["Default"] == ""
    for name in ("TagObjects", "BulkStateMachine", "BatchOperationsRole"):
        assert parameters[name]["Default"] == "false" and set(parameters[name]["AllowedValues"]) == {
            "false",
            "true",
        }
    bulk = [r for r in template["Resources"] if r.startswith(("Upload", "ClassifyBucket", "BatchOperations"))]
    assert len(bulk) == 5
    for logical_id in bulk:
        condition = template["Resources"][logical_id]["Condition"]
        assert (
            evaluate({"Condition": condition}, {n: str(p.get("Default", "")) for n, p in parameters.items()})
            is False
        )


def test_a_template_where_results_could_retrigger_the_function_is_refused():
    assert refused_by({}) == []
    assert refused_by(BULK_ON) == []
    same_bucket = {**BULK_ON, "ResultsBucket": BULK_ON["UploadBucketName"]}
    (reason,) = refused_by(same_bucket)
    assert "trigger the function again" in reason
    assert refused_by({"UploadBucketName": "uploads"}) == [
        "UploadBucketName needs a ResultsBucket to write the results to."
    ]
    assert refused_by({"BulkStateMachine": "true", "ResultsBucket": "r"})  # no S3BucketName to read
    assert refused_by({"BatchOperationsRole": "true"})
    assert refused_by({"TagObjects": "true"})
    # The results prefix can never be empty (it is what the function skips as its own output).
    pattern = re.compile(load_template()["Parameters"]["ResultsPrefix"]["AllowedPattern"])
    assert pattern.fullmatch("classifications/") and not pattern.fullmatch("") and not pattern.fullmatch("x")


def test_notifications_fire_on_created_objects_under_the_upload_prefix_only():
    bucket = load_template()["Resources"]["UploadBucket"]["Properties"]
    (config,) = bucket["NotificationConfiguration"]["LambdaConfigurations"]
    assert config["Event"] == "s3:ObjectCreated:*"
    assert config["Filter"]["Fn::If"][1] == {
        "S3Key": {"Rules": [{"Name": "prefix", "Value": {"Ref": "UploadPrefix"}}]}
    }
    assert all(bucket["PublicAccessBlockConfiguration"].values())


def test_state_machine_is_a_distributed_map_with_its_knobs():
    template = load_template()
    text = template["Resources"]["ClassifyBucketStateMachine"]["Properties"]["DefinitionString"]["Fn::Sub"]
    values = {"MapItemsPerBatch": "20", "MapMaxConcurrency": "50", "MapToleratedFailurePercentage": "5"}

    def substitute(match: re.Match) -> str:
        return values.get(match[1], f"<{match[1]}>")

    definition = json.loads(re.sub(r"\$\{([^}]+)\}", substitute, text))
    state = definition["States"][definition["StartAt"]]
    assert state["Type"] == "Map"
    assert state["ItemReader"]["Resource"].endswith(":states:::s3:listObjectsV2")
    assert state["ItemBatcher"]["MaxItemsPerBatch"] == 20
    assert state["ItemBatcher"]["BatchInput"] == {"bucket.$": "$.bucket"}  # what events.py reads
    # Inputs and answers both stay under Step Functions' 256 KiB, at any MapItemsPerBatch.
    from deploy.classify_bucket import MAX_INPUT_BYTES_PER_BATCH
    from lambda_function.bulk import MAX_MAP_RESPONSE_BYTES

    assert state["ItemBatcher"]["MaxInputBytesPerBatch"] == MAX_INPUT_BYTES_PER_BATCH < 256 * 1024
    assert MAX_MAP_RESPONSE_BYTES < 256 * 1024
    assert (state["MaxConcurrency"], state["ToleratedFailurePercentage"]) == (50, 5)
    assert state["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}
    assert state["ResultWriter"]["Resource"].endswith(":states:::s3:putObject")
    task = state["ItemProcessor"]["States"][state["ItemProcessor"]["StartAt"]]
    assert task["Parameters"]["Payload.$"] == "$"
    # Every field the selector names is in every answer of the function (a missing one fails the state).
    assert set(task["ResultSelector"]) == {"summary.$", "results.$", "results_omitted.$"}
    # The error the function raises when a batch should be retried is the one the Retry names.
    assert task["Retry"][0]["ErrorEquals"] == [RetryLater.__name__]
    for name in values:
        parameter = template["Parameters"][name]
        assert (
            parameter["Type"] == "Number"
            and parameter["MinValue"] <= int(values[name]) <= parameter["MaxValue"]
        )

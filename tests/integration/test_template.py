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
import yaml

from lambda_function.events import BATCH, DIRECT, PROXY_V1, PROXY_V2, parse_event

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "template.yaml"
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
}
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


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !If, !Sub...) read as their long JSON forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict:
    return yaml.load(TEMPLATE.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506 (SafeLoader)


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


def test_sam_validate_lint_passes(sam, offline_env):
    result = subprocess.run(
        [str(sam), "validate", "--lint", "--template", str(TEMPLATE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=offline_env,
        timeout=300,
    )
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
    assert permissions and all(p.get("Condition") == "IsPublic" for p in permissions)


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
    grants = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Permission"]
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
    # The S3 read grant exists only when a bucket is named.
    assert template["Conditions"]["HasS3Bucket"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "S3BucketName"}, ""]}]
    }
    assert parameters["S3BucketName"]["Default"] == ""
    (policy,) = properties["Policies"]
    assert policy["Fn::If"][0] == "HasS3Bucket" and policy["Fn::If"][2] == {"Ref": "AWS::NoValue"}


def test_outputs_name_the_function_and_url():
    outputs = load_template()["Outputs"]
    assert {"FunctionName", "FunctionArn", "FunctionUrl"} <= set(outputs)
    assert outputs["FunctionUrl"]["Value"] == {"Fn::GetAtt": [f"{FUNCTION_ID}Url", "FunctionUrl"]}


# ---------------------------------------------------------------- the makefile hook


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_builds_for_the_template_runtime_and_chosen_arch():
    runtime = load_template()["Resources"][FUNCTION_ID]["Properties"]["Runtime"]
    default = make_dry_run()
    assert "scripts/build_artifact.py" in default and "--platform lambda" in default
    assert f"--python-version {runtime.removeprefix('python')}" in default
    assert "--arch x86_64" in default and '--out "/nonexistent/artifacts"' in default
    assert "--arch arm64" in make_dry_run(ARCH="arm64")


# ---------------------------------------------------------------- events/


def test_every_sample_event_is_accepted_by_the_handler_parser():
    files = sorted(p.name for p in EVENTS.glob("*.json"))
    assert files == sorted(EXPECTED_EVENT_KINDS)
    for name in files:
        event = json.loads((EVENTS / name).read_text(encoding="utf-8"))
        request = parse_event(event, num_labels=10)
        assert request.kind == EXPECTED_EVENT_KINDS[name], name
        assert request.urls and all(isinstance(u, str) for u in request.urls), name
        assert request.top_k == 3, name
        scheme = "s3://" if name == "s3.json" else "https://"
        assert all(u.startswith(scheme) for u in request.urls), name

"""The Makefile cannot ship the wrong thing: `make deploy` and `make invoke`'s Docker branch need a build,
and deploy refuses an architecture other than the build's. `make help` groups every target.

GNU make runs the real Makefile; only `sam` and `docker` are stand-ins (shell scripts that log their
arguments), with BUILD_DIR, SAM_VENV and SAMCONFIG pointed at a scratch folder. The check itself is
deploy/check_build.py, run with this Python.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.fixtures.builds import fake_build, samconfig

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

REPO = Path(__file__).resolve().parents[2]
HELP_GROUPS = [
    "Use the bundled model",
    "Train your own classes",
    "Deploy to AWS",
    "Measure",
    "Develop",
]


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def tools(tmp_path) -> SimpleNamespace:
    """A SAM venv whose `sam` logs its arguments, a `docker` that answers, a build folder and samconfig."""
    venv = tmp_path / "sam-venv"
    log = tmp_path / "sam.log"
    script(venv / "bin" / "sam", f'echo "$*" >> "{log}"')
    script(venv / "bin" / "python", f'exec "{sys.executable}" "$@"')
    (venv / ".installed").touch()
    script(tmp_path / "bin" / "docker", "exit 0")
    return SimpleNamespace(root=tmp_path, venv=venv, log=log, build=tmp_path / "build")


def make(tools, target: str, *variables: str, docker: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("ARCH", None)
    if docker:
        env["PATH"] = f"{tools.root / 'bin'}{os.pathsep}{env['PATH']}"
    command = ["make", "--no-print-directory", target, f"BUILD_DIR={tools.build}", f"SAM_VENV={tools.venv}"]
    command.append(f"SAMCONFIG={tools.root / 'samconfig.toml'}")
    return subprocess.run(
        [*command, *variables], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def sam_calls(tools) -> list[str]:
    return tools.log.read_text().splitlines() if tools.log.exists() else []


def fresh_build(tools, arch: str) -> None:
    """A build newer than every source, as `make build` leaves it."""
    fake_build(tools.build, arch)
    for path in tools.build.rglob("*"):
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 3600))


def test_deploy_refuses_an_arch_other_than_the_builds(tools):
    fresh_build(tools, "arm64")
    result = make(tools, "deploy", "ARCH=x86_64")
    assert result.returncode != 0
    assert "built artifact is arm64" in result.stderr and "make build ARCH=x86_64" in result.stderr
    assert sam_calls(tools) == []  # nothing reached sam


def test_deploy_ships_the_build_with_its_own_arch(tools):
    fresh_build(tools, "arm64")
    result = make(tools, "deploy")  # no ARCH: its default (x86_64) must not decide
    assert result.returncode == 0, result.stderr
    assert "deploying the arm64 build" in result.stdout
    (call,) = sam_calls(tools)
    assert call.startswith("deploy --guided ") and f"--template-file {tools.build}/template.yaml" in call
    assert "Architecture" not in call  # the built template allows only arm64 (check_build --pin)
    assert make(tools, "deploy", "ARCH=arm64").returncode == 0


def test_deploy_refuses_an_arch_saved_in_samconfig(tools):
    fresh_build(tools, "arm64")
    samconfig(tools.root, 'Architecture="x86_64" PublicUrl="false"')
    result = make(tools, "deploy")
    assert result.returncode != 0 and "saved Architecture=x86_64" in result.stderr
    assert sam_calls(tools) == []


@pytest.mark.parametrize("state", ["missing", "stale"])
def test_deploy_builds_first_when_there_is_no_current_build(tools, state):
    if state == "stale":
        fake_build(tools.build, "x86_64")
        for path in tools.build.rglob("*"):
            os.utime(path, (0, 0))  # older than every source file
    result = make(tools, "deploy")
    calls = sam_calls(tools)
    assert calls and calls[0].startswith(f"build --build-dir {tools.build} ")
    if state == "missing":
        # The stand-in sam builds nothing, so the build's own check stops it before any deploy.
        assert result.returncode != 0 and not any(c.startswith("deploy") for c in calls)
    else:
        assert [c.split()[0] for c in calls] == ["build", "deploy"]


def test_invoke_with_docker_uses_the_build(tools):
    fresh_build(tools, "x86_64")
    result = make(tools, "invoke", "EVENT=events/direct.json", docker=True)
    assert result.returncode == 0, result.stderr
    assert sam_calls(tools) == [
        f"local invoke ClassifierFunction -e events/direct.json --template-file {tools.build}/template.yaml"
    ]


def test_invoke_with_docker_builds_first(tools):
    result = make(tools, "invoke", docker=True)
    calls = sam_calls(tools)
    assert calls and calls[0].startswith("build ") and not any(c.startswith("local") for c in calls)
    assert result.returncode != 0


def test_help_groups_every_target_by_what_a_user_does(tools):
    result = make(tools, "help")
    assert result.returncode == 0, result.stderr
    headings = [line.split(" (")[0].rstrip(":") for line in result.stdout.splitlines() if line.endswith(":")]
    assert headings == HELP_GROUPS
    listed = re.findall(r"^  ([a-z0-9-]+) ", result.stdout, re.M)
    documented = re.findall(r"^([a-z0-9-]+):.*## ", (REPO / "Makefile").read_text(), re.M)
    assert sorted(listed) == sorted(documented)  # a target without a [group] tag would be missing
    assert {"demo", "train", "deploy", "bench-serve", "test"} <= set(listed)

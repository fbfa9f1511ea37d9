"""What `make deploy` may ship: the built architecture, read from the build (deploy/check_build.py), and a
build whose libraries are of another architecture is refused when it is made (deploy/build_artifact.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploy import build_artifact, check_build
from deploy.build_artifact import BuildError
from tests.fixtures.builds import fake_build, samconfig
from tests.fixtures.elf import EM_AARCH64, EM_X86_64, make_elf

REPO = Path(__file__).resolve().parents[2]


def test_the_built_arch_is_what_deploys(tmp_path):
    build = fake_build(tmp_path / "build", "arm64")
    assert check_build.check(build)["arch"] == "arm64"
    assert check_build.check(build, "arm64")["arch"] == "arm64"
    assert check_build.main(["--build-dir", str(build)]) == 0


def test_an_arch_other_than_the_builds_is_refused_with_the_fix(tmp_path, capsys):
    build = fake_build(tmp_path / "build", "arm64")
    with pytest.raises(check_build.CheckError, match=r"built artifact is arm64 .* but ARCH=x86_64"):
        check_build.check(build, "x86_64")
    assert check_build.main(["--build-dir", str(build), "--arch", "x86_64"]) == 2
    assert "make build ARCH=x86_64" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides",
    ['Architecture="x86_64" PublicUrl="false"', ["PublicUrl=true", "Architecture=x86_64"]],
    ids=["string", "list"],
)
def test_an_arch_saved_by_an_earlier_guided_deploy_must_agree(tmp_path, overrides):
    build = fake_build(tmp_path / "build", "arm64")
    with pytest.raises(check_build.CheckError, match="saved Architecture=x86_64"):
        check_build.check(build, None, samconfig(tmp_path, overrides))
    assert check_build.check(build, None, samconfig(tmp_path, 'Architecture="arm64"'))["arch"] == "arm64"
    assert check_build.check(build, None, REPO / "samconfig.toml")  # the committed one saves no answers


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (None, "no build to deploy"),
        ({"platform": "local"}, "does not describe a Lambda build"),
        ({"elf_machines": {"x86_64": 2, "aarch64": 1}}, "holds ['aarch64', 'x86_64'] libraries"),
    ],
)
def test_no_build_or_a_strange_one_is_refused(tmp_path, change, message):
    build = tmp_path / "build"
    if change is not None:
        fake_build(build, "arm64", **change)
    with pytest.raises(check_build.CheckError, match=message.replace("[", r"\[")):
        check_build.check(build)


def test_the_built_template_allows_only_the_built_arch(tmp_path):
    build = fake_build(tmp_path / "build", "arm64")
    assert check_build.pin_template(build) == "arm64"
    pinned = yaml.safe_load((build / "template.yaml").read_text())
    assert pinned["Parameters"]["Architecture"] == {
        **pinned["Parameters"]["Architecture"],
        "Default": "arm64",
        "AllowedValues": ["arm64"],
    }
    # Everything else is as sam build wrote it.
    original = yaml.safe_load(yaml.safe_dump(pinned))
    assert original["Resources"]["ClassifierFunction"]["Properties"]["Architectures"] == [
        {"Ref": "Architecture"}
    ]


def test_a_build_with_libraries_of_another_arch_fails_when_made(tmp_path):
    for name, machine in (("numpy/core.so", EM_AARCH64), ("ai_edge_litert/lib.so", EM_AARCH64)):
        (tmp_path / name).parent.mkdir(parents=True)
        (tmp_path / name).write_bytes(make_elf({}, machine))
    assert build_artifact.check_machines(tmp_path, "arm64") == {"aarch64": 2}
    (tmp_path / "PIL").mkdir()
    (tmp_path / "PIL" / "_imaging.so").write_bytes(make_elf({}, EM_X86_64))
    with pytest.raises(
        BuildError, match=r"(?s)for arm64 but 1 of its libraries are not.*PIL/_imaging.so: x86_64"
    ):
        build_artifact.check_machines(tmp_path, "arm64")

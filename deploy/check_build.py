"""What ``make deploy`` may ship: the architecture of the built artifact, read from the build itself.

``make build`` writes ``build-info.json`` into the artifact (deploy/build_artifact.py: the architecture
it installed wheels for, and the e_machine of every shipped library, which the build checked). This
module, run with the SAM environment's Python (PyYAML is there; the rest is the standard library):

* ``--pin`` (after ``sam build``): the built template's ``Architecture`` parameter may only be the built
  one (Default and AllowedValues), so no answer typed at ``sam deploy --guided``'s prompt, and no value
  saved in samconfig.toml, can deploy these wheels as another architecture: CloudFormation refuses it;
* without it (before ``sam deploy``): refuse, with the fix, when ``--arch`` (the ARCH a user passed) or
  the ``Architecture`` saved in samconfig.toml differs from the build, or when there is no build.

    python -m deploy.check_build --build-dir .aws-sam/build [--arch arm64] [--samconfig samconfig.toml]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tomllib
from pathlib import Path

from deploy.build_artifact import BUILD_INFO_NAME, ELF_MACHINE

DEFAULT_BUILD_DIR = Path(".aws-sam/build")
FUNCTION_ID = "ClassifierFunction"
PARAMETER = "Architecture"
# sam deploy reads its saved answers from these tables of samconfig.toml (config env "default").
SAMCONFIG_TABLES = (("default", "deploy", "parameters"), ("default", "global", "parameters"))


class CheckError(Exception):
    """The build cannot be deployed as asked; the message says why and what to run."""


def read_build_info(build_dir: Path) -> dict:
    path = Path(build_dir) / FUNCTION_ID / BUILD_INFO_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckError(
            f"no build to deploy ({path} is missing): run `make build [ARCH=arm64]` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckError(f"{path} is unreadable ({exc}): run `make build` again") from None
    if not isinstance(info, dict) or info.get("platform") != "lambda" or info.get("arch") not in ELF_MACHINE:
        raise CheckError(f"{path} does not describe a Lambda build: run `make build` again")
    machines = info.get("elf_machines") or {}
    if set(machines) - {ELF_MACHINE[info["arch"]]}:
        raise CheckError(
            f"{path}: an {info['arch']} build holds {sorted(machines)} libraries: run `make build` again"
        )
    return info


def saved_architecture(samconfig: Path) -> str | None:
    """The ``Architecture`` a previous ``sam deploy --guided`` saved in samconfig.toml, if any."""
    try:
        config = tomllib.loads(Path(samconfig).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckError(f"{samconfig} is unreadable: {exc}") from None
    for keys in SAMCONFIG_TABLES:
        table = config
        for key in keys:
            table = table.get(key, {}) if isinstance(table, dict) else {}
        overrides = table.get("parameter_overrides") if isinstance(table, dict) else None
        pairs = shlex.split(overrides) if isinstance(overrides, str) else overrides or []
        for pair in pairs:
            name, _, value = str(pair).partition("=")
            if name == PARAMETER:
                return value
    return None


def check(build_dir: Path, arch: str | None = None, samconfig: Path | None = None) -> dict:
    """The build's info if it may be deployed with ``arch`` (None: whatever was built); else CheckError."""
    info = read_build_info(build_dir)
    built = info["arch"]
    if arch and arch != built:
        where = Path(build_dir) / FUNCTION_ID / BUILD_INFO_NAME
        raise CheckError(
            f"the built artifact is {built} ({where}) but ARCH={arch}: "
            f"run `make build ARCH={arch}` first, or `make deploy` without ARCH to deploy the {built} build"
        )
    saved = saved_architecture(samconfig) if samconfig else None
    if saved and saved != built:
        raise CheckError(
            f"{samconfig} saved {PARAMETER}={saved} from an earlier deploy, but the build is {built}: "
            f"run `make build ARCH={saved}`, or change {PARAMETER} to {built} in its parameter_overrides"
        )
    return info


def pin_template(build_dir: Path) -> str:
    """Allow only the built architecture in the built template; returns it."""
    import yaml  # the SAM environment has it; the check above needs only the standard library

    built = read_build_info(build_dir)["arch"]
    path = Path(build_dir) / "template.yaml"
    template = yaml.safe_load(path.read_text(encoding="utf-8"))
    parameter = template["Parameters"][PARAMETER]
    parameter["Default"], parameter["AllowedValues"] = built, [built]
    path.write_text(yaml.safe_dump(template, sort_keys=False, width=1000), encoding="utf-8")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR, help="sam build's output folder")
    parser.add_argument("--arch", help="the architecture asked for (ARCH=...); default: the built one")
    parser.add_argument("--samconfig", type=Path, help="samconfig.toml, whose saved Architecture must agree")
    parser.add_argument(
        "--pin", action="store_true", help="allow only the built architecture in the template"
    )
    args = parser.parse_args(argv)
    try:
        if args.pin:
            built = pin_template(args.build_dir)
            print(f"{args.build_dir / 'template.yaml'}: {PARAMETER} pinned to the build's, {built}")
            return 0
        info = check(args.build_dir, args.arch, args.samconfig)
    except CheckError as exc:
        print(f"make deploy: refused: {exc}", file=sys.stderr)
        return 2
    libraries = ", ".join(f"{n} {m}" for m, n in sorted((info.get("elf_machines") or {}).items()))
    where = f"python{info['python_version']}; libraries: {libraries or 'none'}"
    print(f"deploying the {info['arch']} build ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

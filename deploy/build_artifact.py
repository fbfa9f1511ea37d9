"""Build the Lambda deployment artifact: the ``lambda_function`` package (code + ``model/``) and its
pip-installed dependencies, flat in one directory (what Lambda unzips into ``/var/task``).

One code path for both users of it:

* ``sam build`` (``lambda_function/Makefile``, ``BuildMethod: makefile``) calls it with
  ``--platform lambda``: wheels for Amazon Linux 2023 (python3.12+ runtimes), no Docker needed;
* ``tests/integration/test_artifact.py`` calls it with ``--platform local``, so this machine can import
  the native wheels and run the handler from the artifact. Local builds copy the requirements (and
  their dependencies) from the running interpreter's environment instead of asking pip: no network
  in tests, and exactly the versions the tests ran against. ``--deps pip`` asks pip anyway.

    python -m deploy.build_artifact --platform lambda --arch arm64 --out build/artifact

``--backend onnx`` builds the ONNX Runtime flavour instead of LiteRT's: its own requirements
(``lambda_function/requirements-onnx.txt``) and the bundled ONNX model (``model/onnx/``) instead of
the TFLite one; the same ABI gate and size limits apply.
"""

from __future__ import annotations

import argparse
import atexit
import compileall
import fnmatch
import json
import platform as host
import py_compile
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tools the build itself needs and the artifact never ships (the ABI gate's ELF reader).
BUILD_REQUIREMENTS = Path(__file__).resolve().with_name("build-requirements.txt")
PACKAGE_DIR = REPO_ROOT / "lambda_function"
DEFAULT_REQUIREMENTS = PACKAGE_DIR / "requirements.txt"
# Per serving backend: its requirements and the bundled model files it ships without (the other
# backend's model, ~22 MB that would only be dead weight). LiteRT is the default (template: Backend).
# "model": the bundled model the build must contain (lambda_function/classifier.py's BUNDLED_MODELS).
BACKENDS = {
    "tflite": {
        "requirements": DEFAULT_REQUIREMENTS,
        "model": "model/model.tflite",
        "model_excludes": ("model/onnx",),
    },
    "onnx": {
        "requirements": PACKAGE_DIR / "requirements-onnx.txt",
        "model": "model/onnx/model.onnx",
        "model_excludes": ("model/model.tflite", "model/model.json", "model/MODEL_CARD.md"),
    },
}
DEFAULT_BACKEND = "tflite"
DEFAULT_OUT = REPO_ROOT / "build" / "artifact"
DEFAULT_PLATFORM = "lambda"
# Where the dependencies come from: pip (download wheels) or env (copy what this interpreter has).
DEFAULT_DEPS = {"lambda": "pip", "local": "env"}
# Must match `Runtime:` in template.yaml (test_template.py checks the Makefile default against it).
DEFAULT_LAMBDA_PYTHON = "3.12"
DEFAULT_ARCH = "x86_64"
# ai-edge-litert publishes manylinux_2_27 wheels only, which the python3.12+ runtimes (Amazon Linux
# 2023, glibc 2.34) can load; pip also needs the older tags for pure-C wheels such as protobuf's.
LAMBDA_PLATFORM_TAGS = {
    "x86_64": ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux2014_x86_64"),
    "arm64": ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64"),
}
# Versions pip cannot choose by itself, per architecture (pip constraints). pip picks the newest wheel
# whose platform tag fits, but the tag says only "glibc 2.27" while a library may need a newer
# libstdc++ than Lambda's, and then its import fails on Lambda. Measured 2026-12-03 with
# deploy/abi_gate.py on the cp312 manylinux_2_27_aarch64 wheels of ai-edge-litert:
#   2.1.1 ... 2.3.0  need GLIBCXX_3.4.30 (Amazon Linux 2023 has 3.4.29): fail the gate;
#   2.1.0            needs GLIBCXX_3.4.26 / GLIBC_2.34 at most: passes, 24 MB;
#   2.0.2, 2.0.3     pass, but one 291 MB library makes the artifact 395 MB (Lambda's limit: 250 MB).
# The x86_64 wheels (2.3.0 included) need GLIBCXX_3.4.22 at most: no pin. An environment marker in
# requirements.txt cannot do this: pip evaluates markers for the machine it runs on, not --platform.
ARCH_PINS = {
    "x86_64": (),
    "arm64": ("ai-edge-litert==2.1.0",),
}
# Never shipped: dev caches and build-only files (the Makefile, requirements, tests).
EXCLUDE = ("__pycache__", "*.pyc", "*.pyo", ".*", "Makefile", "requirements*.txt", "tests", "*.egg-info")
# Installed files the handler never loads (checked: the interpreter maps only _pywrap_litert_interpreter_
# wrapper, libLiteRt and libpywrap_litert_common), pruned to keep well under the size budget.
PRUNE = {
    "bin": "console scripts; nothing runs them on Lambda",
    "numpy/**/tests": "numpy's own test suite",
    "ai_edge_litert/libLiteRtWebGpuAccelerator.so": "GPU accelerator; Lambda has no GPU",
    "ai_edge_litert/vendors": "NPU compiler/dispatch plugins, loaded only for NPU targets",
    "ai_edge_litert/tools/apply_plugin_main": "ahead-of-time NPU compiler executable",
    # The ONNX build: `import onnxruntime` loads only onnxruntime/capi (checked); these are offline tools.
    "onnxruntime/transformers": "transformer-model optimization scripts",
    "onnxruntime/tools": "model conversion and profiling tools",
    "onnxruntime/quantization": "the quantizer (convert/onnx.py runs it at build time, not here)",
    "onnxruntime/datasets": "sample models",
    # 35 MB: the C API library for non-Python hosts; the Python binding (onnxruntime_pybind11_state) has
    # the runtime built in, and a session on it never maps this file (checked 2026-12-05, onnxruntime 1.32).
    "onnxruntime/capi/libonnxruntime.so*": "the C API library; the Python binding does not load it",
}
# Lambda's /var/task is read-only, so Python can never cache bytecode there: without .pyc files shipped,
# every cold start compiles numpy & co. again (~0.2 s measured here). Hash-based, unchecked .pyc files
# are used as they are, whatever timestamps the zip round trip leaves on the sources.
PYC_MODE = "UNCHECKED_HASH"
# Lambda's unzipped limit is 250 MB; our budget is lower so a bigger model still fits.
SIZE_BUDGET_BYTES = 160 * 1000 * 1000
# Lambda refuses a deployment package (function code and layers) over this, unzipped: a build error.
LAMBDA_UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
# What was built, written into the artifact's root: `make deploy` reads the architecture from here
# (deploy/check_build.py), never from a variable, so it cannot ship arm64 wheels as an x86_64 function.
BUILD_INFO_NAME = "build-info.json"
# Lambda's architecture name -> the e_machine its shared libraries carry (deploy/abi_gate.py's names).
ELF_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}


class BuildError(RuntimeError):
    """The artifact could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class Artifact:
    path: Path
    size_bytes: int
    platform: str
    python_version: str
    arch: str
    pruned_bytes: int
    bytecode: bool
    backend: str = DEFAULT_BACKEND
    # ELF files the ABI gate checked (None: the gate did not run)
    abi_checked: int | None = None
    # e_machine -> how many shipped ELF files carry it (None: the gate did not run)
    elf_machines: dict[str, int] | None = None

    def info(self) -> dict:
        """The build-info.json record: what a deploy must agree with."""
        return {
            "platform": self.platform,
            "arch": self.arch,
            "python_version": self.python_version,
            "backend": self.backend,
            "elf_machines": self.elf_machines,
            "bytecode": self.bytecode,
        }


def pip_install_command(
    requirements: Path, target: Path, platform: str, python_version: str, arch: str
) -> list[str]:
    """The pip command that installs ``requirements`` (wheels only) flat into ``target``."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--no-compile",  # bytecode is compiled afterwards, and only by the target Python
        "--target",
        str(target),
        "--requirement",
        str(requirements),
    ]
    if platform == "lambda":
        # Cross-install for the Lambda runtime; pip then resolves without touching this interpreter.
        command += ["--implementation", "cp", "--python-version", python_version]
        for tag in LAMBDA_PLATFORM_TAGS[arch]:
            command += ["--platform", tag]
    return command


def install_dependencies(
    requirements: Path, target: Path, platform: str, python_version: str, arch: str
) -> None:
    read_requirements(requirements)  # a clear error for a missing file before pip's long one
    command = pip_install_command(requirements, target, platform, python_version, arch)
    with tempfile.TemporaryDirectory() as scratch:
        pins = ARCH_PINS.get(arch, ()) if platform == "lambda" else ()
        if pins:
            constraints = Path(scratch) / f"constraints-{arch}.txt"
            constraints.write_text("".join(f"{pin}\n" for pin in pins), encoding="utf-8")
            command += ["--constraint", str(constraints)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"pip failed (exit {result.returncode}) installing {requirements} for {platform} "
            f"python {python_version} {arch}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )


def read_requirements(requirements: Path) -> list[str]:
    """Requirement specifiers from a requirements file (comments, blanks and pip options dropped)."""
    if not requirements.is_file():
        raise BuildError(f"Requirements file not found: {requirements}")
    lines = []
    for raw in requirements.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def _requirement_class():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare interpreter still has pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def installed_closure(specifiers: list[str]) -> list[metadata.Distribution]:
    """The installed distributions for ``specifiers`` and everything they require, transitively."""
    requirement = _requirement_class()
    pending = [(requirement(spec), "") for spec in specifiers]
    found: dict[str, metadata.Distribution] = {}
    while pending:
        req, extra = pending.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = req.name.lower().replace("_", "-").replace(".", "-")
        if key in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise BuildError(f"{req.name} is not installed here; pip install it or use --deps pip") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise BuildError(f"{req.name} {dist.version} is installed but {req} is required")
        found[key] = dist
        for extra_name in ("", *sorted(req.extras)):
            pending += [(requirement(child), extra_name) for child in dist.requires or ()]
    return list(found.values())


def copy_installed(specifiers: list[str], target: Path) -> None:
    """Copy the files (as listed in RECORD) of ``installed_closure(specifiers)`` into ``target``."""
    for dist in installed_closure(specifiers):
        root = Path(dist.locate_file("")).resolve()
        if dist.files is None:
            raise BuildError(f"{dist.metadata['Name']} has no RECORD; reinstall it with pip")
        for entry in dist.files:
            source = Path(dist.locate_file(entry)).resolve()
            if not source.is_relative_to(root) or "__pycache__" in entry.parts or not source.is_file():
                continue  # console scripts outside site-packages, bytecode, files already removed
            destination = target / source.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def _ignore(_directory: str, names: list[str]) -> set[str]:
    return {name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDE)}


def copy_package(source: Path, target: Path, backend: str = DEFAULT_BACKEND) -> None:
    """Copy the runtime package (``*.py`` and ``model/``) to ``target/lambda_function``, without the
    bundled model files of the other backend."""
    if not (source / "__init__.py").is_file():
        raise BuildError(f"{source} is not a Python package (no __init__.py)")
    package = target / source.name
    shutil.copytree(source, package, ignore=_ignore, dirs_exist_ok=True)
    for relative in BACKENDS[backend]["model_excludes"]:
        doomed = package / relative
        if doomed.is_dir():
            shutil.rmtree(doomed)
        elif doomed.exists():
            doomed.unlink()


def check_bundled_model(source: Path, backend: str) -> None:
    """BuildError unless ``source`` holds the backend's bundled model and its sidecar."""
    model = Path(BACKENDS[backend]["model"])
    for needed in (model, model.with_suffix(".json")):
        if not (source / needed).is_file():
            raise BuildError(
                f"The {backend} build bundles {source.name}/{needed}, which is missing. `python -m convert "
                "... --install auto --target TARGET` installs the variant chosen for TARGET there "
                "(docs/conversion.md), or copy an exported model and its sidecar JSON to that path."
            )


def prune(target: Path) -> int:
    """Remove bytecode caches and the :data:`PRUNE` entries; return the bytes removed."""
    doomed = list(target.rglob("__pycache__"))
    for pattern in PRUNE:
        doomed += target.glob(pattern)
    removed = 0
    for path in sorted(set(doomed), key=lambda p: len(p.parts), reverse=True):
        if not path.exists():
            continue  # inside something already removed
        if path.is_dir() and not path.is_symlink():
            removed += directory_size(path)
            shutil.rmtree(path)
        else:
            removed += path.stat().st_size
            path.unlink()
    return removed


def compile_bytecode(target: Path) -> None:
    """Write ``__pycache__/*.cpython-XY.pyc`` for every module in ``target``, for this interpreter."""
    mode = getattr(py_compile.PycInvalidationMode, PYC_MODE)
    if not compileall.compile_dir(target, quiet=1, workers=0, invalidation_mode=mode):
        raise BuildError(f"compiling bytecode in {target} failed (a syntax error in a shipped module?)")


def directory_size(path: Path) -> int:
    """Bytes of all regular files under ``path`` (what `du -sb` reports, minus directory entries)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def prepare_output(out: Path) -> None:
    """Make ``out`` an empty directory, refusing to wipe anything that is not a previous artifact."""
    if out.exists():
        if not out.is_dir():
            raise BuildError(f"{out} exists and is not a directory")
        entries = list(out.iterdir())
        if entries and not (out / PACKAGE_DIR.name).is_dir():
            raise BuildError(f"{out} is not empty and does not look like an artifact; refusing to clear it")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def build_artifact(
    out: Path = DEFAULT_OUT,
    platform: str = DEFAULT_PLATFORM,
    python_version: str | None = None,
    arch: str = DEFAULT_ARCH,
    requirements: Path | None = None,
    package: Path = PACKAGE_DIR,
    deps: str | None = None,
    bytecode: bool | None = None,
    gate: bool | None = None,
    backend: str = DEFAULT_BACKEND,
) -> Artifact:
    """Build the artifact in ``out`` and return its size.

    ``platform="local"`` is for the interpreter running this script (for tests);
    ``platform="lambda"`` cross-installs for the Lambda runtime ``python_version`` on ``arch``.
    ``deps`` is "pip" or "env" (copy from this environment; local only), default per platform.
    ``bytecode``: ship .pyc files; None = when this interpreter is the target Python (it compiles them).
    ``gate``: check the libraries against the Lambda ABI baseline (deploy/abi_gate.py) and Lambda's
    size limit; None = for ``platform="lambda"``. A failed gate raises BuildError.
    ``backend``: "tflite" (LiteRT) or "onnx" (ONNX Runtime); ``requirements`` default to the backend's.
    """
    if backend not in BACKENDS:
        raise BuildError(f"Unknown backend {backend!r}; expected one of {sorted(BACKENDS)}")
    requirements = Path(requirements or BACKENDS[backend]["requirements"])
    local_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if platform == "local":
        if python_version not in (None, local_version):
            raise BuildError(
                f"--platform local builds for this interpreter (Python {local_version}), "
                f"not {python_version}; run it with that Python instead"
            )
        python_version = local_version
        # The wheels are this machine's, whatever --arch says.
        arch = {machine: name for name, machine in ELF_MACHINE.items()}.get(host.machine(), host.machine())
    elif platform == "lambda":
        if arch not in LAMBDA_PLATFORM_TAGS:
            raise BuildError(f"Unknown architecture {arch!r}; expected one of {sorted(LAMBDA_PLATFORM_TAGS)}")
        python_version = python_version or DEFAULT_LAMBDA_PYTHON
    else:
        raise BuildError(f"Unknown platform {platform!r}; expected 'local' or 'lambda'")
    if bytecode is None:
        bytecode = python_version == local_version
    elif bytecode and python_version != local_version:
        raise BuildError(
            f"bytecode for Python {python_version} must be compiled by that Python, not {local_version}; "
            f"run this script with python{python_version}"
        )
    deps = deps or DEFAULT_DEPS[platform]
    if deps not in ("pip", "env") or (deps == "env" and platform != "local"):
        raise BuildError(f"--deps {deps} is not possible for platform {platform}")

    check_bundled_model(Path(package), backend)  # before minutes of downloads
    out = Path(out).resolve()
    prepare_output(out)
    if deps == "env":
        copy_installed(read_requirements(requirements), out)
    else:
        install_dependencies(requirements, out, platform, python_version, arch)
    copy_package(Path(package), out, backend)
    pruned = prune(out)
    checked = machines = None
    if platform == "lambda" if gate is None else gate:
        checked = check_abi(out)
        machines = check_machines(out, arch)
    if bytecode:
        compile_bytecode(out)
    size = directory_size(out)
    if checked is not None and size > LAMBDA_UNZIPPED_LIMIT_BYTES:
        raise BuildError(
            f"the artifact is {size / 1e6:.1f} MB unzipped; Lambda refuses more than "
            f"{LAMBDA_UNZIPPED_LIMIT_BYTES / 1e6:.1f} MB. Fix: a smaller wheel (see ARCH_PINS) or model."
        )
    artifact = Artifact(
        out, size, platform, python_version, arch, pruned, bytecode, backend, checked, machines
    )
    (out / BUILD_INFO_NAME).write_text(json.dumps(artifact.info(), indent=2) + "\n", encoding="utf-8")
    return artifact


def load_abi_gate():
    """deploy/abi_gate.py, with its build-time tool importable. ``sam build`` runs this script with the
    target Python (python3.12), not a virtual environment of ours: where that Python lacks pyelftools,
    pip installs BUILD_REQUIREMENTS into a scratch folder for this process only."""
    try:
        import elftools  # noqa: F401
    except ImportError:
        tools = Path(tempfile.mkdtemp(prefix="build-tools-"))
        atexit.register(shutil.rmtree, tools, ignore_errors=True)
        command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        command += ["--quiet", "--target", str(tools), "--requirement", str(BUILD_REQUIREMENTS)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BuildError(
                f"pip failed (exit {result.returncode}) installing the build tools {BUILD_REQUIREMENTS}:\n"
                f"{result.stderr[-4000:]}"
            ) from None
        sys.path.append(str(tools))
    try:  # run as a script (sam build, make) or imported as deploy.build_artifact (tests)
        import abi_gate
    except ImportError:
        from deploy import abi_gate
    return abi_gate


def check_abi(root: Path) -> int:
    """Run the ABI gate on ``root``; return the number of ELF files checked, or raise BuildError."""
    checked, violations = load_abi_gate().check_tree(root)
    if violations:
        lines = "\n".join(f"  {violation.message(root)}" for violation in violations)
        raise BuildError(
            f"{len(violations)} symbol version(s) in {root} would not load on Lambda "
            f'(the import fails there with "version ... not found"):\n{lines}'
        )
    return checked


def check_machines(root: Path, arch: str) -> dict[str, int]:
    """e_machine -> count over the artifact's ELF files; BuildError if any is not ``arch``'s."""
    gate = load_abi_gate()
    counts: dict[str, int] = {}
    foreign = []
    for path in gate.elf_files(root):
        try:
            machine = gate.read_elf(path).machine
        except gate.NotElf:
            continue
        counts[machine] = counts.get(machine, 0) + 1
        if machine != ELF_MACHINE.get(arch):
            foreign.append(f"  {path.relative_to(root)}: {machine}")
    if foreign:
        raise BuildError(
            f"the artifact is for {arch} but {len(foreign)} of its libraries are not "
            f"({ELF_MACHINE.get(arch)} expected); they would fail to load on Lambda:\n"
            + "\n".join(foreign[:10])
        )
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"artifact directory ({DEFAULT_OUT})")
    parser.add_argument("--platform", choices=("local", "lambda"), default=DEFAULT_PLATFORM)
    parser.add_argument(
        "--python-version",
        help=f"Lambda runtime Python (default {DEFAULT_LAMBDA_PYTHON}; local: this interpreter)",
    )
    parser.add_argument("--arch", choices=sorted(LAMBDA_PLATFORM_TAGS), default=DEFAULT_ARCH)
    parser.add_argument(
        "--backend",
        choices=sorted(BACKENDS),
        default=DEFAULT_BACKEND,
        help="serving runtime: tflite (LiteRT, the default) or onnx (ONNX Runtime)",
    )
    parser.add_argument("--requirements", type=Path, help="default: the backend's requirements file")
    parser.add_argument(
        "--deps",
        choices=("pip", "env"),
        help="pip: download wheels (lambda default); env: copy from this environment (local default)",
    )
    parser.add_argument(
        "--bytecode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ship .pyc files (default: yes when this interpreter is the target Python)",
    )
    parser.add_argument(
        "--abi-gate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check every ELF file against the Lambda ABI baseline (default: for --platform lambda)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        artifact = build_artifact(
            args.out,
            args.platform,
            args.python_version,
            args.arch,
            args.requirements,
            deps=args.deps,
            bytecode=args.bytecode,
            gate=args.abi_gate,
            backend=args.backend,
        )
    except BuildError as exc:
        print(f"build_artifact: error: {exc}", file=sys.stderr)
        return 1
    megabytes = artifact.size_bytes / 1e6
    print(
        f"Built {artifact.path} for {artifact.platform} python{artifact.python_version} {artifact.arch} "
        f"({artifact.backend}): "
        f"{artifact.size_bytes} bytes ({megabytes:.1f} MB) unzipped "
        f"({artifact.pruned_bytes / 1e6:.1f} MB pruned)"
    )
    if artifact.abi_checked is not None:
        print(f"ABI gate: {artifact.abi_checked} ELF files load on {load_abi_gate().LAMBDA_AL2023.name}")
    if not artifact.bytecode:
        print(
            f"note: no bytecode shipped (built by Python {sys.version_info.major}.{sys.version_info.minor}); "
            f"cold starts compile every module. Build with python{artifact.python_version} to ship it."
        )
    if artifact.size_bytes > SIZE_BUDGET_BYTES:
        print(f"warning: over the {SIZE_BUDGET_BYTES / 1e6:.0f} MB budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

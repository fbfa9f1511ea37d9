"""The arm64 artifact, really run: Debian's arm64 Python under qemu user-mode emulation classifies
samples/ through the Lambda handler, once as is and once with /sys/devices/system/cpu/{possible,present}
hidden, as arm64 Lambda hides them (XNNPACK's CPU detection reads them).

Needs root (a private mount namespace hides the two files), ``qemu-aarch64-static`` and an arm64 root
filesystem with python3.11 (``make check-arm64`` installs and makes both). Build the artifact for that
Python first: ``build_artifact.py --platform lambda --arch arm64 --python-version 3.11``. Each emulated
inference takes ~15 s: this checks imports, the ABI and correctness, never speed.

    python -m deploy.check_arm64 --root build/arm64-root --artifact build/arm64-artifact
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_FILES = ("/sys/devices/system/cpu/possible", "/sys/devices/system/cpu/present")
MARKER = "ARM64-CHECK "
GUEST_PYTHON = "usr/bin/python3.11"
# One interpreter thread: emulation is slow either way, and the machine is shared.
NUM_THREADS = "1"
# The CPU qemu emulates. arm64 Lambda runs on Graviton2 (Neoverse N1: NEON, dot product, no SVE, no
# i8mm); qemu's default "max" adds SVE and i8mm, which selects other XNNPACK kernels.
DEFAULT_CPU = "neoverse-n1"

# Runs inside the emulated Python: argv = [artifact, samples, marker]. One marker line per result.
CHILD = r"""
import base64, json, os, platform, sys, time
artifact, samples, marker = sys.argv[1:4]
sys.path.insert(0, artifact)

def say(**fields):
    print(marker + json.dumps(fields), flush=True)

started = time.perf_counter()
import lambda_function.app as app
from lambda_function.classifier import runs_on_xnnpack
classifier = app.get_classifier()
say(kind="loaded", machine=platform.machine(), seconds=round(time.perf_counter() - started, 1),
    xnnpack=runs_on_xnnpack(classifier.engine.interpreter), model=classifier.model_id)
for name in sorted(os.listdir(samples)):
    if not name.lower().endswith((".jpg", ".jpeg", ".png")):
        continue
    with open(os.path.join(samples, name), "rb") as handle:
        body = base64.b64encode(handle.read()).decode()
    event = {"version": "2.0", "requestContext": {"http": {"method": "POST"}},
             "headers": {"content-type": "image/jpeg"}, "body": body, "isBase64Encoded": True}
    started = time.perf_counter()
    response = app.lambda_handler(event, None)
    answer = json.loads(response["body"])
    label = answer["predictions"][0]["label"] if "predictions" in answer else None
    say(kind="image", file=name, status=response["statusCode"], label=label, scores=answer.get("scores"),
        seconds=round(time.perf_counter() - started, 1))
"""

# $0: an empty file bind-mounted over each CPU file, in a mount namespace of the check's own.
HIDE_SCRIPT = " && ".join(f'mount --bind "$0" {path}' for path in CPU_FILES) + ' && exec "$@"'


def guest_command(qemu: str, root: Path, artifact: Path, samples: Path, cpu: str = DEFAULT_CPU) -> list[str]:
    python = root / GUEST_PYTHON
    return [
        *(qemu, "-cpu", cpu, "-L", str(root), str(python), "-I", "-S", "-c", CHILD),
        *(str(artifact), str(samples), MARKER),
    ]


def host_command(samples: Path) -> list[str]:
    """The same child on this machine's interpreter and the source tree: the reference answers."""
    return [sys.executable, "-c", CHILD, str(REPO_ROOT), str(samples), MARKER]


def run_pass(name: str, command: list[str], timeout_s: float, reference: dict | None = None) -> dict:
    """Run one pass, echoing its progress; return what it reported.

    ``reference``: file -> the host's answer; each image then records whether its label agrees and
    the largest difference between the two score vectors.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "NUM_THREADS": NUM_THREADS}
    shown = " ".join("<child script>" if part == CHILD else part for part in command)
    print(f"[{name}] {shown}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    loaded, images, warnings, other = None, [], [], []
    for line in process.stdout:
        line = line.rstrip("\n")
        if line.startswith(MARKER):
            fields = json.loads(line[len(MARKER) :])
            if fields.pop("kind") == "loaded":
                loaded = fields
                print(
                    f"[{name}] loaded on {fields['machine']} in {fields['seconds']} s, "
                    f"xnnpack={fields['xnnpack']}"
                )
            else:
                expected = Path(fields["file"]).stem
                fields["expected"], fields["correct"] = expected, fields["label"] == expected
                mark = "= file name" if fields["correct"] else f"!= file name ({expected})"
                host = (reference or {}).get(fields["file"])
                if host is not None:
                    fields["agrees"] = fields["label"] == host["label"]
                    fields["max_score_diff"] = max_difference(fields["scores"], host["scores"])
                    same = "same as" if fields["agrees"] else "DIFFERENT FROM"
                    mark += (
                        f", {same} x86_64 ({host['label']}), max |score diff| {fields['max_score_diff']:.4f}"
                    )
                images.append(fields)
                print(
                    f"[{name}] {fields['file']}: {fields['label']} ({fields['seconds']} s) {mark}", flush=True
                )
        elif '"level": "WARNING"' in line or '"level": "ERROR"' in line:
            warnings.append(line)
            print(f"[{name}] log: {line}", flush=True)
        elif line.strip() and not line.startswith("{"):
            other.append(line)  # the runtime's own messages (cpuinfo, TFLite INFO lines)
            print(f"[{name}] stderr: {line}", flush=True)
        if time.monotonic() - started > timeout_s:
            process.kill()
            break
    returncode = process.wait()
    return {
        "pass": name,
        "returncode": returncode,
        "loaded": loaded,
        "images": images,
        "warnings": warnings,
        "runtime_messages": other,
        "seconds": round(time.monotonic() - started, 1),
    }


def max_difference(scores: dict | None, reference: dict | None) -> float:
    if not scores or not reference or set(scores) != set(reference):
        return float("inf")
    return max(abs(scores[label] - reference[label]) for label in scores)


def qemu_version(qemu: str) -> str:
    result = subprocess.run([qemu, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT / "build" / "arm64-root")
    parser.add_argument("--artifact", type=Path, default=REPO_ROOT / "build" / "arm64-artifact")
    parser.add_argument("--samples", type=Path, default=REPO_ROOT / "samples")
    parser.add_argument("--qemu", default="qemu-aarch64-static")
    parser.add_argument("--cpu", default=DEFAULT_CPU, help=f"qemu -cpu model ({DEFAULT_CPU}; 'max' for all)")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "build" / "check_arm64.json")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per pass")
    args = parser.parse_args(argv)

    problems = []
    if shutil.which(args.qemu) is None:
        problems.append(f"{args.qemu} not found (apt-get install qemu-user-static)")
    if not (args.root / GUEST_PYTHON).exists():
        problems.append(f"no {GUEST_PYTHON} under {args.root} (make check-arm64 creates it with mmdebstrap)")
    if not (args.artifact / "lambda_function").is_dir():
        problems.append(f"{args.artifact} is not a built artifact")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        problems.append("hiding the CPU files needs root and unshare (a private mount namespace)")
    if problems:
        for problem in problems:
            print(f"check_arm64: {problem}", file=sys.stderr)
        return 2

    artifact, samples, root = args.artifact.resolve(), args.samples.resolve(), args.root.resolve()
    command = guest_command(args.qemu, root, artifact, samples, args.cpu)
    host = run_pass("x86_64 reference", host_command(samples), args.timeout)
    reference = {image["file"]: image for image in host["images"]}
    hide = ["unshare", "-m", "sh", "-c", HIDE_SCRIPT]
    with tempfile.NamedTemporaryFile(prefix="empty-cpu-list-") as empty:
        passes = [
            run_pass("cpu files present", command, args.timeout, reference),
            run_pass("cpu files hidden", [*hide, empty.name, *command], args.timeout, reference),
        ]
    expected = sorted(p.name for p in samples.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "qemu": qemu_version(args.qemu),
        "cpu": args.cpu,
        "artifact": str(artifact),
        "litert": sorted(p.name for p in artifact.glob("ai_edge_litert-*.dist-info")),
        "reference": host,
        "passes": passes,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    # Pass: every sample served, each with the label the x86_64 build gives it (same model, same code).
    # How many labels match the file names is the model's business, reported next to it.
    ok = host["returncode"] == 0
    print(f"\narm64 check {report['date']}, {report['qemu']} -cpu {args.cpu}, {', '.join(report['litert'])}")
    host_correct = sum(image["correct"] for image in host["images"])
    print(f"  x86_64 reference: {host_correct}/{len(expected)} labels match the file names")
    for result in passes:
        correct = sum(image["correct"] for image in result["images"])
        agree = sum(image.get("agrees", False) for image in result["images"])
        seen = sorted(image["file"] for image in result["images"])
        passed = result["returncode"] == 0 and seen == expected and agree == len(expected)
        ok &= passed
        worst = max((image.get("max_score_diff", float("inf")) for image in result["images"]), default=0.0)
        seconds = [image["seconds"] for image in result["images"]]
        mean = sum(seconds) / len(seconds) if seconds else float("nan")
        xnnpack = (result["loaded"] or {}).get("xnnpack")
        print(
            f"  {result['pass']}: {agree}/{len(expected)} agree with x86_64 (max |score diff| {worst:.4f}), "
            f"{correct}/{len(expected)} match the file names, xnnpack={xnnpack}, "
            f"{len(result['warnings'])} warning(s), {mean:.1f} s per image emulated "
            f"-> {'PASS' if passed else 'FAIL'}"
        )
    print(f"report: {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

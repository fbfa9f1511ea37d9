"""Run a benchmark as if this CPU had AVX2 only: ``python -m bench.isa avx2 -- COMMAND ...``.

Lambda's x86_64 promises AVX2 and nothing more, and the build machines here often have AVX-512 with VNNI
or AMX, which onnxruntime and LiteRT use whenever CPUID reports them (neither has a setting to stop).
``bench/cpuid_avx2.c``, preloaded into COMMAND and everything it starts, traps CPUID (Linux's CPUID
faulting, ``cpuid_fault`` in /proc/cpuinfo) and clears the AVX-512, VNNI and AMX bits, so the libraries
take their AVX2 kernels on the same cores. What it measures is those code paths on this chip (its
clock, caches and memory), not an AVX2-only chip. Every ``bench/record.py`` record written under it says
so (``measured_on.isa_mask``) and leaves the hidden extensions out of its ``isa`` list.

    python -m bench.isa avx2 -- python -m bench.serve --model lambda_function/model/onnx/model.onnx
    make bench-serve ISA=avx2     # the same through make (power-tune too)

Needs a C compiler (``cc``) and CPUID faulting; without either it says why and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIM_SOURCE = REPO_ROOT / "bench" / "cpuid_avx2.c"
SHIM_DIR = REPO_ROOT / "build" / "isa"
# Read by bench.record.machine(): the name of the mask a record was measured under.
MASK_ENV = "BENCH_ISA_MASK"
# The /proc/cpuinfo flags the AVX2 mask hides (those of bench.record.SPEED_FLAGS and their kin).
HIDDEN_FLAGS = {
    "avx2": frozenset(
        {
            "avx512f",
            "avx512dq",
            "avx512ifma",
            "avx512cd",
            "avx512bw",
            "avx512vl",
            "avx512_vbmi",
            "avx512_vbmi2",
            "avx512_vnni",
            "avx512_bitalg",
            "avx512_vpopcntdq",
            "avx512_bf16",
            "avx512_fp16",
            "avx_vnni",
            "avx_ifma",
            "amx_tile",
            "amx_int8",
            "amx_bf16",
        }
    )
}
SHIMS = {"avx2": SHIM_SOURCE}
CHECK_LINE = re.compile(r"AVX512F (on|off), AVX512_VNNI (on|off), AMX_INT8 (on|off)")


def unavailable_reason(cpuinfo: str | None = None) -> str | None:
    """Why the mask cannot work here (not x86, no CPUID faulting, no cc), or None when it can."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            return f"cannot read /proc/cpuinfo ({error.strerror})"
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []
    )
    if not flags:
        return "not an x86 CPU (no flags line in /proc/cpuinfo)"
    if "cpuid_fault" not in flags:
        return "this CPU or hypervisor has no CPUID faulting (cpuid_fault not in /proc/cpuinfo)"
    if shutil.which("cc") is None:
        return "no C compiler (cc) to build bench/cpuid_avx2.c"
    return None


def build_shim(isa: str, out_dir: Path = SHIM_DIR) -> Path:
    """Compile the shim for ``isa`` once per source version; returns the .so path."""
    source = SHIMS[isa]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    shared = out_dir / f"cpuid_{isa}-{digest}.so"
    if not shared.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = shared.with_suffix(".so.partial")
        subprocess.run(
            ["cc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(partial), str(source), "-ldl"],
            check=True,
        )
        partial.replace(shared)
    return shared


def masked_env(isa: str, shared: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the shim preloaded first and the mask named for the records."""
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(shared), env.get("LD_PRELOAD", "")]))
    env[MASK_ENV] = isa
    return env


def seen_through(env: dict[str, str]) -> dict[str, bool]:
    """What a program started with ``env`` reads from CPUID: {"AVX512F": bool, "AVX512_VNNI": ..., ...}."""
    probe = subprocess.run(
        [sys.executable, "-c", "pass"],
        env={**env, "CPUID_AVX2_REPORT": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = CHECK_LINE.search(probe.stderr)
    if found is None:
        raise RuntimeError(f"the CPUID mask did not report (stderr: {probe.stderr.strip()!r})")
    return {
        name: state == "on"
        for name, state in zip(("AVX512F", "AVX512_VNNI", "AMX_INT8"), found.groups(), strict=True)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("isa", choices=sorted(SHIMS), help="the instruction set the command may see")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run under the mask")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench.isa: cannot hide extensions from CPUID here: {reason}", file=sys.stderr)
        return 2
    env = masked_env(args.isa, build_shim(args.isa))
    still_on = [name for name, on in seen_through(env).items() if on]
    if still_on:
        print(f"bench.isa: the mask left {', '.join(still_on)} visible; not running", file=sys.stderr)
        return 2
    print(
        f"bench.isa: running as {args.isa} only (CPUID masked): {' '.join(command)}",
        file=sys.stderr,
        flush=True,
    )
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())

"""bench/isa.py + bench/cpuid_avx2.c: a command run as "AVX2 only" sees no AVX-512/VNNI/AMX in CPUID,
still serves the same answers, still crashes on a real fault, and its records say they were masked."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import isa, record
from tests.fixtures import tiny_onnx

REPO = Path(__file__).resolve().parents[2]
REASON = isa.unavailable_reason()
needs_mask = pytest.mark.skipif(REASON is not None, reason=f"no CPUID mask here: {REASON}")

VNNI_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_int8 amx_bf16 cpuid_fault
"""


def test_a_record_made_under_the_mask_lists_only_what_the_libraries_saw(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(VNNI_CPUINFO)
    monkeypatch.setattr(record, "CPUINFO", cpuinfo)

    monkeypatch.delenv(isa.MASK_ENV, raising=False)
    plain = record.machine()
    monkeypatch.setenv(isa.MASK_ENV, "avx2")
    masked = record.machine()

    assert "avx512_vnni" in plain["isa"] and "isa_mask" not in plain
    assert masked["isa"] == ["avx2", "fma"]
    assert "cpuid_avx2.c" in masked["isa_mask"]
    assert "CPUID mask" in record.describe(masked)


def test_says_why_the_mask_cannot_work():
    assert "cpuid_fault" in isa.unavailable_reason(VNNI_CPUINFO.replace(" cpuid_fault", ""))
    assert "not an x86" in isa.unavailable_reason("processor\t: 0\nFeatures\t: fp asimd asimddp\n")


def test_every_flag_the_records_track_that_avx2_lacks_is_hidden():
    beyond_avx2 = {flag for flag in record.SPEED_FLAGS if flag.startswith(("avx512", "avx_vnni", "amx"))}
    assert beyond_avx2 <= isa.HIDDEN_FLAGS["avx2"]


@needs_mask
def test_a_masked_process_reads_no_avx512_vnni_or_amx_from_cpuid(tmp_path):
    env = isa.masked_env("avx2", isa.build_shim("avx2", tmp_path))
    assert isa.seen_through(env) == {"AVX512F": False, "AVX512_VNNI": False, "AMX_INT8": False}


@needs_mask
def test_the_command_runs_masked_and_its_exit_status_comes_back(tmp_path):
    code = "import os, sys; print(os.environ['BENCH_ISA_MASK']); sys.exit(3)"
    run = subprocess.run(
        [sys.executable, "-m", "bench.isa", "avx2", "--", sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert run.stdout.strip() == "avx2"


@needs_mask
@pytest.mark.parametrize("faulthandler", [False, True], ids=["default", "faulthandler"])
def test_a_real_segfault_still_kills_the_process(faulthandler, tmp_path):
    """With the default action, and with the program's own SIGSEGV handler (Python's faulthandler), which
    must get the real fault: its report is printed, then the process dies as it would have."""
    env = isa.masked_env("avx2", isa.build_shim("avx2", tmp_path))
    flags = ["-X", "faulthandler"] if faulthandler else []
    crash = subprocess.run(
        [sys.executable, *flags, "-c", "import ctypes; ctypes.string_at(0)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crash.returncode == -signal.SIGSEGV
    assert ("Fatal Python error: Segmentation fault" in crash.stderr) == faulthandler


@needs_mask
def test_a_program_with_its_own_sigsegv_handler_still_reads_the_masked_cpuid(tmp_path):
    """faulthandler sets its SIGSEGV handler before any library asks CPUID: the traps must stay the shim's."""
    env = isa.masked_env("avx2", isa.build_shim("avx2", tmp_path))
    code = "import faulthandler, onnxruntime; print(faulthandler.is_enabled())"
    run = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        env={**env, "CPUID_AVX2_REPORT": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "True"
    trapped = int(re.search(r"(\d+) CPUID instructions trapped", run.stderr).group(1))
    assert trapped > 2  # the report's own two reads, then onnxruntime's


@needs_mask
@pytest.mark.parametrize("backend", ["tflite", "onnx"])
def test_both_backends_give_the_same_scores_masked(backend, tmp_path):
    model = REPO / "tests/fixtures/tiny_model.tflite" if backend == "tflite" else tiny_onnx.write(tmp_path)
    env = isa.masked_env("avx2", isa.build_shim("avx2", tmp_path))
    command = [sys.executable, "-m", "lambda_function.predict", "--model", str(model), "--json"]

    def scores(environ=None) -> dict:
        run = subprocess.run(
            [*command, "samples/pants.jpg"], cwd=REPO, env=environ, capture_output=True, text=True, check=True
        )
        return json.loads(run.stdout)["scores"]

    plain, masked = scores(), scores(env)
    assert masked.keys() == plain.keys()
    assert all(abs(masked[label] - plain[label]) < 1e-5 for label in plain)

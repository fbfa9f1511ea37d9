"""bench/record.py: every benchmark's JSON names the CPU it ran on, and the PNG is written beside it."""

from __future__ import annotations

import json

from bench import record

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 sha_ni

processor\t: 1
model name\t: something else
flags\t\t: fpu
"""
ARM64 = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_reads_the_first_processors_model_and_speed_flags():
    model, flags = record.cpuinfo_fields(X86)
    assert model == "AMD EPYC 9B45"
    assert [f for f in record.SPEED_FLAGS if f in flags] == [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
    ]


def test_reads_arm64_features():
    _, flags = record.cpuinfo_fields(ARM64)
    assert "asimddp" in flags and "i8mm" not in flags


def test_write_stamps_the_machine_and_draws_the_png(tmp_path):
    drawn = []

    def draw(figure, data):
        drawn.append(data["figures"])
        record.bars(figure.subplots(), ["a", "b"], [1.0, 2.5], "ms", target=2.0)

    written = record.write(tmp_path / "out" / "bench.json", {"figures": [1, 2]}, draw)

    assert [p.name for p in written] == ["bench.json", "bench.png"]
    saved = json.loads(written[0].read_text())
    assert saved["figures"] == [1, 2] and drawn == [[1, 2]]
    stamp = saved["measured_on"]
    assert stamp["cpu"] and stamp["cpus_visible"] >= 1 and isinstance(stamp["isa"], list)
    assert written[1].read_bytes()[:4] == b"\x89PNG"


def test_without_a_drawing_only_the_json_is_written(tmp_path):
    assert record.write(tmp_path / "r.json", {"x": 1}) == [tmp_path / "r.json"]
    assert not (tmp_path / "r.png").exists()

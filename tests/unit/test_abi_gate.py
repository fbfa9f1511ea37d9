"""The ABI gate reads the symbol versions ELF files need and refuses what Lambda's libraries lack."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import abi_gate, build_artifact
from tests.fixtures.elf import EM_AARCH64, make_elf

AT_BASELINE = {
    "libc.so.6": ["GLIBC_2.17", "GLIBC_2.34"],
    "libstdc++.so.6": ["GLIBCXX_3.4.29", "CXXABI_1.3.13"],
    "libgcc_s.so.1": ["GCC_3.0"],  # not a namespace the baseline checks
}
TOO_NEW = {"libc.so.6": ["GLIBC_2.17"], "libstdc++.so.6": ["CXXABI_1.3.5", "GLIBCXX_3.4.30"]}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_reads_the_version_needs_of_an_aarch64_library(tmp_path):
    elf = abi_gate.read_elf(write(tmp_path / "lib.so", make_elf(TOO_NEW, machine=EM_AARCH64)))

    assert elf.machine == "aarch64"
    assert elf.versions == {
        "libc.so.6": ("GLIBC_2.17",),
        "libstdc++.so.6": ("CXXABI_1.3.5", "GLIBCXX_3.4.30"),
    }


def test_reads_32_bit_big_endian_files_too(tmp_path):
    elf = abi_gate.read_elf(write(tmp_path / "lib.so", make_elf(TOO_NEW, is64=False, big_endian=True)))

    assert elf.versions["libstdc++.so.6"] == ("CXXABI_1.3.5", "GLIBCXX_3.4.30")


def test_versions_up_to_the_baseline_pass(tmp_path):
    write(tmp_path / "pkg" / "ok.so", make_elf(AT_BASELINE))
    write(tmp_path / "pkg" / "module.py", b"\x7fELF is only text here")  # not an ELF file: ignored

    checked, violations = abi_gate.check_tree(tmp_path)

    assert (checked, violations) == (1, [])
    assert abi_gate.main([str(tmp_path)]) == 0


def test_a_newer_libstdcxx_fails_naming_library_version_and_fix(tmp_path, capsys):
    bad = write(tmp_path / "ai_edge_litert" / "libLiteRt.so", make_elf(TOO_NEW, machine=EM_AARCH64))
    write(tmp_path / "ai_edge_litert" / "ok.so", make_elf(AT_BASELINE))
    record = "ai_edge_litert/libLiteRt.so,sha256=x,1\nai_edge_litert/ok.so,,\n"
    write(tmp_path / "ai_edge_litert-2.3.0.dist-info" / "RECORD", record.encode())

    checked, violations = abi_gate.check_tree(tmp_path)

    assert checked == 2
    assert [(v.path, v.library, v.version, v.owner) for v in violations] == [
        (bad, "libstdc++.so.6", "GLIBCXX_3.4.30", "ai-edge-litert 2.3.0")
    ]
    message = violations[0].message(tmp_path)
    assert message.startswith("ai_edge_litert/libLiteRt.so (from ai-edge-litert 2.3.0) needs GLIBCXX_3.4.30")
    assert "at most GLIBCXX_3.4.29" in message and "ARCH_PINS" in message

    assert abi_gate.main([str(tmp_path)]) == 1
    assert "GLIBCXX_3.4.30 from libstdc++.so.6" in capsys.readouterr().err


def test_a_newer_glibc_fails(tmp_path):
    write(tmp_path / "x.so", make_elf({"libc.so.6": ["GLIBC_2.35"]}))

    _, violations = abi_gate.check_tree(tmp_path)

    assert [v.version for v in violations] == ["GLIBC_2.35"]


def test_the_build_stops_with_the_gate_message(tmp_path):
    write(tmp_path / "lambda_function" / "__init__.py", b"")
    write(tmp_path / "numpy" / "_core.so", make_elf(TOO_NEW))

    with pytest.raises(build_artifact.BuildError) as caught:
        build_artifact.check_abi(tmp_path)

    text = str(caught.value)
    assert "numpy/_core.so needs GLIBCXX_3.4.30 from libstdc++.so.6" in text and "Fix:" in text
    assert build_artifact.check_abi(tmp_path / "lambda_function") == 0


def test_a_truncated_elf_file_is_not_a_crash(tmp_path):
    whole = make_elf(TOO_NEW)
    with pytest.raises(abi_gate.NotElf):
        abi_gate.parse_elf(whole[:80])
    with pytest.raises(abi_gate.NotElf):
        abi_gate.read_elf(write(tmp_path / "empty.so", b""))


def test_version_order_is_numeric_not_textual():
    baseline = abi_gate.LAMBDA_AL2023
    assert baseline.allows("GLIBCXX_3.4.9") and baseline.allows("GLIBC_2.4")
    assert not baseline.allows("GLIBCXX_3.4.100") and not baseline.allows("CXXABI_1.3.14")
    assert baseline.allows("GLIBC_PRIVATE")  # no number: not comparable, not refused


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_agrees_with_objdump_on_a_real_library():
    # A library this interpreter really loads: the pure-Python reader must see what binutils sees.
    import _ctypes

    library = Path(_ctypes.__file__)
    dump = subprocess.run(["objdump", "-p", str(library)], capture_output=True, text=True, check=True).stdout
    expected: dict[str, set[str]] = {}
    current = None
    for line in dump.split("Version References:", 1)[-1].splitlines():
        if match := re.match(r"\s+required from (\S+):", line):
            current = expected.setdefault(match[1], set())
        elif current is not None and (match := re.match(r"\s+0x[0-9a-f]+ 0x[0-9a-f]+ \d+ (\S+)$", line)):
            current.add(match[1])

    found = abi_gate.read_elf(library)

    assert expected, f"objdump listed no version references for {library}"
    assert {lib: set(names) for lib, names in found.versions.items()} == expected
    assert sys.platform == "linux"

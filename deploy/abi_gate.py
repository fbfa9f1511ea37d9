"""The ABI gate: every ELF file in a built artifact must load on the Lambda runtime's system libraries.

A wheel tagged ``manylinux_2_27`` promises glibc 2.27 but may still need a newer libstdc++ than the
one Lambda ships (ai-edge-litert 2.1.6+ on aarch64 needs ``GLIBCXX_3.4.30``; Amazon Linux 2023 has
3.4.29), and pip has no way to know. The dynamic loader would refuse to load such a library at the
first import on Lambda ("version `GLIBCXX_3.4.30' not found"); this gate refuses to build it instead.

It reads the symbol versions each ELF file needs (its ``SHT_GNU_verneed`` section, what ``objdump -T``
prints after the symbol names) with pyelftools, the pure-Python ELF reader auditwheel is built on, so
the check runs wherever the build runs, for any architecture, with no binutils. pyelftools is a
build-time tool only: it never ships in the artifact. Only the version namespaces in the baseline are
checked (GLIBC, GLIBCXX, CXXABI): those are the libraries the runtime provides and a wheel does not vendor.

    python -m deploy.abi_gate build/artifact        # exit 1 and one line per problem
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection

ELF_MAGIC = b"\x7fELF"
# e_machine values we expect to meet (anything else is named by pyelftools' own constant).
MACHINES = {"EM_386": "i386", "EM_X86_64": "x86_64", "EM_AARCH64": "aarch64"}
# What pyelftools raises on a file that starts like ELF but is cut short or malformed.
MALFORMED = (ELFError, ConstructError, struct.error, EOFError, ValueError, KeyError, IndexError)


@dataclass(frozen=True)
class Baseline:
    """The newest symbol version of each namespace the target's system libraries provide."""

    name: str
    # namespace (the part of "GLIBCXX_3.4.29" before the last "_") -> newest version provided
    newest: dict[str, tuple[int, ...]]
    # shown with every violation: what to do about it
    fix: str

    def allows(self, version: str) -> bool:
        namespace, number = split_version(version)
        limit = self.newest.get(namespace)
        return limit is None or number is None or number <= limit

    def newest_name(self, version: str) -> str:
        namespace, _ = split_version(version)
        return f"{namespace}_{'.'.join(map(str, self.newest[namespace]))}"


# The python3.12+ Lambda runtimes run on Amazon Linux 2023: glibc 2.34 and the libstdc++ of gcc 11
# (GLIBCXX_3.4.29, CXXABI_1.3.13). Keep in step with `Runtime:` in template.yaml; a runtime on a newer
# OS may raise these numbers, never an older one.
LAMBDA_AL2023 = Baseline(
    name="AWS Lambda python3.12+ (Amazon Linux 2023: glibc 2.34, GLIBCXX_3.4.29, CXXABI_1.3.13)",
    newest={"GLIBC": (2, 34), "GLIBCXX": (3, 4, 29), "CXXABI": (1, 3, 13)},
    fix=(
        "pin an older release of this wheel for the architecture (ARCH_PINS in deploy/build_artifact.py; "
        "docs/lambda-runtime.md lists the known-good versions), or use a wheel built for glibc 2.34 / gcc 11"
    ),
)


@dataclass(frozen=True)
class ElfFile:
    machine: str
    soname: str | None
    needed: tuple[str, ...]
    # library file name (e.g. "libstdc++.so.6") -> the symbol versions required from it
    versions: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Violation:
    path: Path
    library: str
    version: str
    baseline: Baseline
    # "ai-edge-litert 2.1.5": the installed distribution the file came from, when its RECORD says so
    owner: str | None = None

    def message(self, root: Path | None = None) -> str:
        shown = self.path.relative_to(root) if root and self.path.is_relative_to(root) else self.path
        owner = f" (from {self.owner})" if self.owner else ""
        return (
            f"{shown}{owner} needs {self.version} from {self.library}, but {self.baseline.name} "
            f"provides at most {self.baseline.newest_name(self.version)}. Fix: {self.baseline.fix}."
        )


class NotElf(ValueError):
    """The file is not an ELF file (or is truncated / malformed)."""


def split_version(version: str) -> tuple[str, tuple[int, ...] | None]:
    """``"GLIBCXX_3.4.29"`` -> ``("GLIBCXX", (3, 4, 29))``; a non-numeric tail gives ``None``."""
    namespace, _, number = version.rpartition("_")
    try:
        return namespace, tuple(int(part) for part in number.split("."))
    except ValueError:
        return version, None


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_elf(path: Path) -> ElfFile:
    """The needed libraries and symbol versions of an ELF file, from its section headers."""
    # Read through the open file, section by section: ai-edge-litert's libraries reach 290 MB and only a
    # few KB of each are looked at.
    with open(path, "rb") as handle:
        return _parse(handle)


def parse_elf(data: bytes) -> ElfFile:
    return _parse(io.BytesIO(data))


def _parse(stream: BinaryIO) -> ElfFile:
    if stream.read(4) != ELF_MAGIC:
        raise NotElf("not an ELF file")
    stream.seek(0)
    try:
        elf = ELFFile(stream)
        needed, soname, versions = [], None, {}
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_SONAME":
                        soname = tag.soname
            elif isinstance(section, GNUVerNeedSection):
                for need, auxiliaries in section.iter_versions():
                    versions[need.name] = tuple(aux.name for aux in auxiliaries)
        machine = elf["e_machine"]
    except MALFORMED as exc:
        raise NotElf(f"malformed ELF file: {exc}") from None
    return ElfFile(MACHINES.get(machine, str(machine)), soname, tuple(needed), versions)


def check_file(path: Path, baseline: Baseline = LAMBDA_AL2023) -> list[Violation]:
    elf = read_elf(path)
    return [
        Violation(path, library, version, baseline)
        for library, wanted in sorted(elf.versions.items())
        for version in sorted(set(wanted))
        if not baseline.allows(version)
    ]


def elf_files(root: Path) -> list[Path]:
    """Every regular ELF file under ``root`` (shared objects and executables), sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p))


def check_tree(root: Path, baseline: Baseline = LAMBDA_AL2023) -> tuple[int, list[Violation]]:
    """``(ELF files checked, violations)`` for everything under ``root``."""
    owners = distribution_owners(root)
    checked, violations = 0, []
    for path in elf_files(root):
        try:
            found = check_file(path, baseline)
        except NotElf:
            continue  # starts with the magic but is not a loadable file; the loader would never see it
        checked += 1
        owner = owners.get(path.relative_to(root).as_posix())
        violations += [Violation(v.path, v.library, v.version, v.baseline, owner) for v in found]
    return checked, violations


def distribution_owners(root: Path) -> dict[str, str]:
    """Relative path -> "name version" for every file a ``*.dist-info/RECORD`` under ``root`` lists."""
    owners = {}
    for record in root.glob("*.dist-info/RECORD"):
        name, _, version = record.parent.name.removesuffix(".dist-info").partition("-")
        for line in record.read_text(encoding="utf-8", errors="replace").splitlines():
            owners[line.split(",", 1)[0]] = f"{name.replace('_', '-')} {version}"
    return owners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the artifact directory (what Lambda unzips into /var/task)")
    args = parser.parse_args(argv)
    checked, violations = check_tree(args.root)
    for violation in violations:
        print(f"abi_gate: {violation.message(args.root)}", file=sys.stderr)
    if violations:
        return 1
    print(f"abi_gate: {checked} ELF files load on {LAMBDA_AL2023.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

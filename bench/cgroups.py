"""A Lambda-sized box for one child process: cgroup v1 CPU quota and memory limit, always removed after.

Lambda gives CPU in proportion to memory through a CFS quota (one vCPU at 1,769 MB) and kills a function
that passes its memory size. cgroup v1 does the same here: ``cpu.cfs_quota_us`` = period × MB / 1,769
and ``memory.limit_in_bytes`` = the size (and the same memory+swap limit: Lambda has no swap). The boxes
are made under the cgroups this process already runs in, so any limit above them still holds.
Needs root and the v1 ``cpu`` and ``memory`` hierarchies; ``unavailable_reason`` says what is missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory")
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1000  # the kernel refuses a smaller quota (only sizes far below Lambda's 128 MB need it)
# rmdir of a cgroup fails with EBUSY for a moment after its last task exits; try for this long.
REMOVE_TIMEOUT_S = 5.0
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def unavailable_reason(root: Path | None = None) -> str | None:
    """Why limits cannot be set here (not root, no cgroup v1 cpu/memory), or None when they can."""
    root = CGROUP_ROOT if root is None else root
    if os.geteuid() != 0:
        return "not running as root"
    for controller, probe in (("cpu", "cpu.cfs_quota_us"), ("memory", "memory.limit_in_bytes")):
        if not (root / controller / probe).is_file():
            return f"no cgroup v1 {controller} controller at {root / controller}"
    return None


def own_cgroup(controller: str, proc_cgroup: Path = PROC_SELF_CGROUP) -> str:
    """This process's path in the v1 hierarchy of ``controller`` ("/" when at its root)."""
    for line in proc_cgroup.read_text(encoding="ascii").splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return path
    return "/"


class LambdaBox:
    """The cpu and memory cgroups of one Lambda memory size; ``wrap(argv)`` starts a command inside them.

    Use as a context manager: the cgroups exist inside the block and are removed at its end, whatever
    happened (the child must have exited by then: ``PowerTune`` waits for or kills it first).
    """

    def __init__(self, name: str, memory_mb: int, mb_per_vcpu: int, root: Path | None = None):
        self.root = CGROUP_ROOT if root is None else root
        self.memory_mb = memory_mb
        self.quota_us = max(MIN_QUOTA_US, round(CFS_PERIOD_US * memory_mb / mb_per_vcpu))
        self.dirs = {c: self.root / c / own_cgroup(c).lstrip("/") / name for c in CONTROLLERS}

    def __enter__(self) -> LambdaBox:
        try:
            for path in self.dirs.values():
                path.mkdir()
            cpu, memory = self.dirs["cpu"], self.dirs["memory"]
            (cpu / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(self.quota_us))
            limit = self.memory_mb * 2**20
            (memory / "memory.limit_in_bytes").write_text(str(limit))
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # absent when the kernel does not account swap
                memsw.write_text(str(limit))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into both cgroups, then execs it: the child is
        limited from its first instruction, its memory charged to the box from the start."""
        procs = [str(path / "cgroup.procs") for path in self.dirs.values()]
        script = 'for f in "$1" "$2"; do echo $$ > "$f" || exit 97; done; shift 2; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *procs, *argv]

    def stats(self) -> dict:
        """Peak memory of the box, how often it hit its limit, and whether the kernel killed for it."""
        memory = self.dirs["memory"]
        oom_kills = 0
        for line in (memory / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                oom_kills = int(value)
        cpu_stat = dict(
            line.split(" ", 1)
            for line in (self.dirs["cpu"] / "cpu.stat").read_text().splitlines()
            if " " in line
        )
        return {
            "peak_mb": round(int((memory / "memory.max_usage_in_bytes").read_text()) / 2**20, 1),
            "limit_hits": int((memory / "memory.failcnt").read_text()),
            "oom_kills": oom_kills,
            "throttled_periods": int(cpu_stat.get("nr_throttled", 0)),
        }

    def remove(self) -> list[Path]:
        """rmdir both cgroups (retrying while the kernel lets go of an exited task); the ones left."""
        left = []
        for path in self.dirs.values():
            deadline = time.monotonic() + REMOVE_TIMEOUT_S
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(path)
                        break
                    time.sleep(0.05)
        return left

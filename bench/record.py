"""What every benchmark writes: its figures as JSON, stamped with the machine they were measured on, and a
PNG beside it for a person to look at.

A figure without its CPU means little here: the build machines change generation from session to session
(AVX2 only, AVX-512 with VNNI, AMX), and int8 inference is 1.4x faster or slower depending on which.
So every record carries the CPU's model name, the instruction-set extensions that decide inference speed,
the CPUs visible and the load average while it ran.
Standard library only, matplotlib only for the PNG (absent in the runtime venv: the PNG is then skipped).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from bench import isa

# The extensions that change how fast a CNN runs (x86: /proc/cpuinfo "flags"; arm64: "Features").
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimddp",  # arm64 int8 dot products (Graviton2's Neoverse N1)
    "i8mm",
    "sve",
)
CPUINFO = Path("/proc/cpuinfo")


def proc_status_kb(field: str) -> int | None:
    """One ``/proc/self/status`` figure in kB (``VmRSS``, ``VmHWM``...); None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpuinfo_fields(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from the text of /proc/cpuinfo (first processor; x86 or arm64 layout)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def machine() -> dict:
    """The machine a figure was measured on, as a JSON-ready dict."""
    try:
        model, flags = cpuinfo_fields(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        model, flags = "", set()
    # Under ``python -m bench.isa`` the libraries see fewer extensions than /proc/cpuinfo lists.
    mask = os.environ.get(isa.MASK_ENV)
    hidden = isa.HIDDEN_FLAGS.get(mask, frozenset())
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": model or platform.processor() or "unknown",
        "isa": [flag for flag in SPEED_FLAGS if flag in flags and flag not in hidden],
        "cpus_visible": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "arch": platform.machine(),
        "python": platform.python_version(),
    }
    if mask:
        info["isa_mask"] = f"{mask} only: CPUID masked by bench/cpuid_{mask}.c (this chip's AVX2 code paths)"
    return info


def describe(info: dict) -> str:
    """One line for a table's caption: 'Intel(R) Xeon(R) Processor (avx2, avx512f, ...), 2 CPUs, load 0.4'."""
    isa = ", ".join(info["isa"]) or "no AVX2"
    if info.get("isa_mask"):
        isa += "; the rest hidden by a CPUID mask"
    return f"{info['cpu']} ({isa}), {info['cpus_visible']} CPUs, load {info['load_average_1m']}"


def write(path: Path, record: dict, draw: Callable | None = None) -> list[Path]:
    """Write ``record`` with a "measured_on" stamp (``machine()``) to ``path`` as JSON and, with ``draw``,
    ``draw(figure, record)`` to the PNG of the same stem. Returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"measured_on": machine(), **record}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    written = [path]
    if draw is not None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            print(f"note: matplotlib is not installed here: no PNG beside {path}")
            return written
        figure = pyplot.figure(figsize=(9, 4.5))
        draw(figure, record)
        figure.text(
            0.01, 0.01, describe(record["measured_on"]) + f", {record['measured_on']['date']}", fontsize=7
        )
        png = path.with_suffix(".png")
        figure.savefig(png, dpi=110, bbox_inches="tight")
        pyplot.close(figure)
        written.append(png)
    return written


def bars(axes, labels: list[str], values: list[float], unit: str, target: float | None = None) -> None:
    """Horizontal bars with their values written on them (and a dashed target line)."""
    positions = range(len(labels))
    axes.barh(positions, values, color="#4c72b0")
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    for y, value in zip(positions, values, strict=True):
        axes.text(value, y, f" {value:.3g}", va="center", fontsize=7)
    if target is not None:
        axes.axvline(target, color="#c44e52", linestyle="--", linewidth=1, label=f"target {target:g}")
        axes.legend(fontsize=7, loc="lower right")

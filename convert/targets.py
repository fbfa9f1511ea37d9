"""Which converted variant ships for a declared target (``python -m convert --target``).

``host`` (the default) keeps ``--install auto``'s rule: the fastest validated TFLite variant *as timed on
this build machine*. What a user deploys then depends on where they ran convert (dynamic-range on an
AVX2-only CPU, int8 on one with VNNI), not on where the model runs. Every other target uses a rule no
build machine's timing enters (docs/conversion.md, "Choosing for a target"):

1. **Qualify** (the same gates as ``host``): validated against Keras, within ``MAX_ACCURACY_DROP`` points
   of its accuracy, at most ``MAX_INSTALL_MB``, in a format the target serves.
2. **Rank** by the p50 in :data:`LATENCY_TABLES` of the measured machine that stands for the target: the
   entry whose CPU flags the target guarantees, the one with the most of them (Lambda x86_64 promises
   AVX2 and FMA only, so it is ranked on the AVX2-only Zen 3 even when convert runs on a Zen 5). Ties, and
   variants the table lacks (ranked last), go to the smaller file, then the more accurate, then the name.
   A target no table entry stands for (no measured machine has its flags: arm64, devices) is ranked by
   accuracy, then size, then name.

So the same training output gives the same choice on every build machine; only the accuracies enter, and
they come from the same files run on the same images (kernels may round differently by ISA: a variant at
the very edge of the accuracy gate could flip, which the report shows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from convert.errors import ConversionError
from convert.install import MAX_ACCURACY_DROP, MAX_INSTALL_MB, choose_variant, qualified

DEFAULT_TARGET = "host"


@dataclass(frozen=True)
class LatencyTable:
    """p50 ms per variant id on one measured machine: 352 px model, batch 1, 2 threads (make convert)."""

    cpu: str
    isa: frozenset[str]  # its speed-relevant CPU flags, as bench/record.py names them
    measured: str  # date
    p50_ms: dict[str, float]


# The measured machines, keyed by their CPU flags; docs/benchmarks.md ("Latency by CPU") has the same
# table. Each is one `make convert` run's report (2-core build machines, shared, 5-20 ms noise).
# The AMD rows' onnx-int8 is the earlier S8S8 file (int8 activations); onnxruntime ran most of it as U8S8
# anyway, with 7 convolutions left float. Today's U8S8 file on the Intel Xeon's AVX2 code paths (CPUID
# masked, python -m bench.isa): 76.0 ms, the fastest variant there too (docs/benchmarks.md). That masked
# run is not a row: it is the Xeon's microarchitecture with AVX2's instructions, not a machine Lambda has.
LATENCY_TABLES = (
    LatencyTable(
        cpu="AMD EPYC (Zen 3), 2 cores",
        isa=frozenset({"avx2", "fma"}),
        measured="2026-11-29",
        p50_ms={
            "tflite-fp32": 146.0,
            "tflite-float16": 146.1,
            "tflite-dynamic": 148.3,
            "tflite-int8": 157.7,
            "onnx-fp32": 137.8,
            "onnx-int8": 104.7,
        },
    ),
    LatencyTable(
        cpu="AMD EPYC (Zen 5), 2 cores",
        isa=frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}),
        measured="2026-12",
        p50_ms={"tflite-fp32": 50.0, "tflite-dynamic": 57.0, "tflite-int8": 40.6, "onnx-int8": 28.6},
    ),
    # onnx-int8 is the U8S8 file of convert/onnx.py (the S8S8 one took 56.1 ms); the machine was idle.
    LatencyTable(
        cpu="Intel Xeon (KVM, family 6 model 167), 2 cores",
        isa=frozenset(
            {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}
        ),
        measured="2026-12-05",
        p50_ms={
            "tflite-fp32": 85.5,
            "tflite-float16": 88.1,
            "tflite-dynamic": 66.2,
            "tflite-int8": 47.9,
            "onnx-fp32": 79.4,
            "onnx-int8": 36.2,
        },
    ),
)


@dataclass(frozen=True)
class Target:
    formats: tuple[str, ...]  # what the target's runtime serves
    isa: frozenset[str] | None  # CPU flags it guarantees (None: not a CPU we pick a table for)
    about: str


TARGETS = {
    "host": Target(("tflite",), None, "this build machine, timed here (today's --install auto)"),
    "lambda-x86_64": Target(
        ("tflite", "onnx"),
        frozenset({"avx2", "fma"}),
        "AWS Lambda x86_64: AVX2 guaranteed, several processor generations",
    ),
    # Graviton2 (Neoverse N1): NEON with int8 dot products. Only the TFLite build has run on arm64
    # (make check-arm64, emulated); no arm64 latency is measured, so no table stands for it.
    "lambda-arm64": Target(("tflite",), frozenset({"asimd", "asimddp"}), "AWS Lambda arm64 (Graviton2)"),
    # The MediaPipe file (convert.ondevice) is derived from a TFLite variant; phones and browsers vary.
    "device": Target(("tflite",), None, "the on-device MediaPipe file (phones, browsers)"),
}


def check_target(target: str) -> None:
    """ConversionError unless ``target`` is one of TARGETS."""
    if target not in TARGETS:
        raise ConversionError(f"Unknown target {target!r}; choose from: {', '.join(TARGETS)}.")


def table_for(target: str, tables: tuple[LatencyTable, ...] = LATENCY_TABLES) -> LatencyTable | None:
    """The measured machine that stands for ``target``: flags all guaranteed by it, the most of them."""
    isa = TARGETS[target].isa
    if isa is None:
        return None
    fitting = [table for table in tables if table.isa <= isa]
    return max(fitting, key=lambda table: len(table.isa), default=None)


def rank_key(row: dict, table: LatencyTable | None) -> tuple:
    if table is None:
        return (-row["accuracy"], row.get("size_mb", 0.0), row["variant"])
    return (
        table.p50_ms.get(row["variant"], math.inf),
        row.get("size_mb", 0.0),
        -row["accuracy"],
        row["variant"],
    )


def choose_for_target(
    rows: list[dict],
    keras_accuracy: float | None,
    target: str,
    formats: tuple[str, ...] | None = None,
    tables: tuple[LatencyTable, ...] = LATENCY_TABLES,
    max_drop: float = MAX_ACCURACY_DROP,
    max_size_mb: float = MAX_INSTALL_MB,
) -> dict:
    """The report row to install for ``target`` (``formats``: narrow the target's own)."""
    check_target(target)
    if target == "host":
        return choose_variant(rows, keras_accuracy, max_drop, max_size_mb)
    allowed = tuple(f for f in TARGETS[target].formats if formats is None or f in formats)
    candidates = qualified(rows, keras_accuracy, allowed, max_drop, max_size_mb)
    table = table_for(target, tables)
    return min(candidates, key=lambda row: rank_key(row, table))

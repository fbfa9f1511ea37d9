"""What a million images cost on AWS, from a measured time per image: the one copy of the list prices.

Every figure is itemised with its formula, so a reader can check the arithmetic and swap a price.
Prices: us-east-1 list prices as of 2026-12 (check the AWS pricing pages before relying on a total);
free tiers and data transfer (none within a region) are left out. Lambda bills duration per 1 ms, so a
per-image mean time is the billed time per image up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

IMAGES = 1_000_000  # the unit of every total: $ per million images
# Lambda: $ per GB-second by architecture, $ per request.
LAMBDA_GB_S = {"x86_64": 0.0000166667, "arm64": 0.0000133334}
LAMBDA_REQUEST = 0.20 / 1e6
# S3 Standard: GET and LIST/PUT requests.
S3_GET = 0.0004 / 1000
S3_LIST = 0.005 / 1000
S3_PUT = 0.005 / 1000  # per-image result objects (ResultObjects=all) and tags are PUT-class requests
S3_KEYS_PER_LIST = 1000
# Step Functions: the Standard parent's state transitions (one per child execution), the Express
# children's requests and duration (64 MB is the smallest Express memory size billed).
SFN_TRANSITION = 0.025 / 1000
EXPRESS_REQUEST = 1.00 / 1e6
EXPRESS_GB_S = 0.00001667
EXPRESS_GB = 0.0625
# S3 Batch Operations: per job and per object processed.
BATCH_OPS_JOB = 0.25
BATCH_OPS_OBJECT = 1.00 / 1e6
# Lambda gives one full vCPU at this memory size, CPU in proportion below and above it.
MB_PER_VCPU = 1769
# How the images reach the function: a direct call per image, or one of the two bulk engines.
ENGINES = ("direct", "distributed_map", "batch_operations")


def price(usd: float) -> str:
    """A unit price as written on the AWS pages: $0.0000166667 (not 1.66667e-05), $0.20, $0.0004."""
    whole, _, fraction = f"{usd:.10f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def per_thousand(usd: float) -> str:
    return f"{price(usd * 1000)}/1,000"


def per_million(usd: float) -> str:
    return f"{price(usd * 1e6)}/10⁶"


# The formulas behind cost_items, written into every power-tune record and printed with it.
FORMULAS = {
    "gb_s_per_image": "t × M: mean seconds per image × memory MB / 1024",
    "compute": f"N × t × M × $ per GB-s (x86_64 {price(LAMBDA_GB_S['x86_64'])},"
    f" arm64 {price(LAMBDA_GB_S['arm64'])})",
    "direct": f"compute + N requests × {per_million(LAMBDA_REQUEST)} (one image per call)",
    "distributed_map": f"compute + N/B requests × {per_million(LAMBDA_REQUEST)} + N S3 GET ×"
    f" {per_thousand(S3_GET)} + N/{S3_KEYS_PER_LIST:,} S3 LIST × {per_thousand(S3_LIST)} + N/B parent"
    f" transitions × {per_thousand(SFN_TRANSITION)} + N/B Express requests × {per_million(EXPRESS_REQUEST)}"
    f" + N × t × {EXPRESS_GB} GB × {price(EXPRESS_GB_S)}/GB-s Express duration",
    "batch_operations": f"compute + N requests × {per_million(LAMBDA_REQUEST)} + N S3 GET ×"
    f" {per_thousand(S3_GET)} + {price(BATCH_OPS_JOB)} per job + N × {per_million(BATCH_OPS_OBJECT)} objects",
}


def gb_s_per_image(seconds_per_image: float, memory_mb: int) -> float:
    """GB-seconds one image costs: its billed time times the function's memory (GB = MB / 1024)."""
    return seconds_per_image * memory_mb / 1024


def vcpus(memory_mb: int) -> float:
    """The CPU share Lambda gives at ``memory_mb`` (one vCPU at MB_PER_VCPU)."""
    return memory_mb / MB_PER_VCPU


def cost_items(
    engine: str, seconds_per_image: float, memory_mb: int, arch: str, batch: int = 1
) -> list[dict]:
    """Itemised $ per million images: [{"item", "formula", "usd"}], last the total.

    ``batch`` is images per invocation (a Distributed Map batch; 1 for the other engines).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    n, t, gb = IMAGES, seconds_per_image, memory_mb / 1024
    invocations = n / batch
    items = [
        (
            f"Lambda compute ({arch})",
            f"N × t × M = {n:,} × {t:.4f} s × {gb:.3f} GB × {price(LAMBDA_GB_S[arch])}/GB-s",
            n * t * gb * LAMBDA_GB_S[arch],
        ),
        (
            "Lambda requests",
            f"N / B × {per_million(LAMBDA_REQUEST)} = {invocations:,.0f} invocations",
            invocations * LAMBDA_REQUEST,
        ),
    ]
    if engine != "direct":
        items.append(("S3 GET of the images", f"N × {per_thousand(S3_GET)}", n * S3_GET))
    if engine == "distributed_map":
        items += [
            (
                "S3 LIST by the ItemReader",
                f"N / {S3_KEYS_PER_LIST:,} keys per page × {per_thousand(S3_LIST)}",
                n / S3_KEYS_PER_LIST * S3_LIST,
            ),
            (
                "Step Functions parent (one transition per child)",
                f"N / B × {per_thousand(SFN_TRANSITION)}",
                invocations * SFN_TRANSITION,
            ),
            (
                "Express children: requests",
                f"N / B × {per_million(EXPRESS_REQUEST)}",
                invocations * EXPRESS_REQUEST,
            ),
            (
                "Express children: duration",
                f"N × t × {EXPRESS_GB} GB × {price(EXPRESS_GB_S)}/GB-s",
                n * t * EXPRESS_GB * EXPRESS_GB_S,
            ),
        ]
    if engine == "batch_operations":
        items.append(
            (
                "S3 Batch Operations",
                f"{price(BATCH_OPS_JOB)} per job + N × {per_million(BATCH_OPS_OBJECT)}",
                BATCH_OPS_JOB + n * BATCH_OPS_OBJECT,
            )
        )
    rows = [{"item": item, "formula": formula, "usd": round(usd, 4)} for item, formula, usd in items]
    rows.append(
        {"item": "total", "formula": "sum of the above", "usd": round(sum(usd for *_, usd in items), 4)}
    )
    return rows


def total(items: list[dict]) -> float:
    return items[-1]["usd"]


def cheapest(rows: list[dict], max_p90_ms: float, cost: Callable[[dict], float]) -> dict | None:
    """The row of least ``cost(row)`` among those that finished (no out-of-memory, no error) with a p90
    within ``max_p90_ms``; None when no row qualifies. Ties go to the smaller memory size."""
    fit = [
        row
        for row in rows
        if not row.get("oom")
        and not row.get("error")
        and row.get("p90_ms") is not None
        and row["p90_ms"] <= max_p90_ms
    ]
    return min(fit, key=lambda row: (cost(row), row["memory_mb"] or 0), default=None)

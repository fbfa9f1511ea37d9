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
    """A unit price as written on the AWS pages: 0.0000166667, not 1.66667e-05."""
    return f"${usd:.10f}".rstrip("0").rstrip(".")


# The formulas behind cost_items, written into every power-tune record and printed with it.
FORMULAS = {
    "gb_s_per_image": "t × M: mean seconds per image × memory MB / 1024",
    "compute": f"N × t × M × $ per GB-s (x86_64 {price(LAMBDA_GB_S['x86_64'])},"
    f" arm64 {price(LAMBDA_GB_S['arm64'])})",
    "direct": "compute + N requests × $0.20/10⁶ (one image per call)",
    "distributed_map": "compute + N/B requests × $0.20/10⁶ + N S3 GET × $0.0004/1,000 + N/1,000 S3 LIST"
    " × $0.005/1,000 + N/B parent transitions × $0.025/1,000 + N/B Express requests × $1.00/10⁶"
    f" + N × t × {EXPRESS_GB} GB × {price(EXPRESS_GB_S)}/GB-s Express duration",
    "batch_operations": "compute + N requests × $0.20/10⁶ + N S3 GET × $0.0004/1,000 + $0.25 per job"
    " + N × $1.00/10⁶ objects",
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
            f"N / B × $0.20/10⁶ = {invocations:,.0f} invocations",
            invocations * LAMBDA_REQUEST,
        ),
    ]
    if engine != "direct":
        items.append(("S3 GET of the images", "N × $0.0004/1,000", n * S3_GET))
    if engine == "distributed_map":
        items += [
            (
                "S3 LIST by the ItemReader",
                f"N / {S3_KEYS_PER_LIST:,} keys per page × $0.005/1,000",
                n / S3_KEYS_PER_LIST * S3_LIST,
            ),
            (
                "Step Functions parent (one transition per child)",
                "N / B × $0.025/1,000",
                invocations * SFN_TRANSITION,
            ),
            ("Express children: requests", "N / B × $1.00/10⁶", invocations * EXPRESS_REQUEST),
            (
                "Express children: duration",
                f"N × t × {EXPRESS_GB} GB × {price(EXPRESS_GB_S)}/GB-s",
                n * t * EXPRESS_GB * EXPRESS_GB_S,
            ),
        ]
    if engine == "batch_operations":
        items.append(
            ("S3 Batch Operations", "$0.25 per job + N × $1.00/10⁶", BATCH_OPS_JOB + n * BATCH_OPS_OBJECT)
        )
    rows = [{"item": item, "formula": formula, "usd": round(usd, 4)} for item, formula, usd in items]
    rows.append(
        {"item": "total", "formula": "sum of the above", "usd": round(sum(usd for *_, usd in items), 4)}
    )
    return rows


def total(items: list[dict]) -> float:
    return items[-1]["usd"]


def cheapest(rows: list[dict], max_p90_ms: float, price: Callable[[dict], float]) -> dict | None:
    """The row of least ``price(row)`` among those that finished (no out-of-memory, no error) with a p90
    within ``max_p90_ms``; None when no row qualifies. Ties go to the smaller memory size."""
    fit = [
        row
        for row in rows
        if not row.get("oom")
        and not row.get("error")
        and row.get("p90_ms") is not None
        and row["p90_ms"] <= max_p90_ms
    ]
    return min(fit, key=lambda row: (price(row), row["memory_mb"] or 0), default=None)

"""One table per conversion run (Markdown + JSON + PNG); convert/install.py chooses and installs from it.

Latency is single-image (batch 1) on 2 threads, the median of ``LATENCY_RUNS`` runs after warm-up, on
the runtime that would serve the file: ai-edge-litert for .tflite, onnxruntime for .onnx.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from convert.runners import load_runner

LATENCY_RUNS = 30
WARMUP_RUNS = 3
COLUMNS = (
    ("variant", "variant", "{}"),
    ("size_mb", "size (MB)", "{:.2f}"),
    ("accuracy", "accuracy (%)", "{:.2f}"),
    ("top1_agreement", "top-1 agreement", "{:.4f}"),
    ("max_abs_diff", "max Δp", "{:.2g}"),
    ("mean_abs_diff", "mean Δp", "{:.2g}"),
    ("load_ms", "load (ms)", "{:.0f}"),
    ("latency_p50_ms", "latency p50 (ms)", "{:.2f}"),
    ("passed", "validation", "{}"),
)


def benchmark(
    path: str | Path, image: np.ndarray, runs: int = LATENCY_RUNS, warmup: int = WARMUP_RUNS
) -> dict:
    """Load time and single-image latency p50 (ms) of a model file."""
    runner = load_runner(path)
    batch = np.asarray(image, dtype=np.float32)[None]
    p50 = latency_p50_ms(lambda: runner.predict_logits(batch), runs, warmup)
    return {"load_ms": runner.load_seconds * 1000.0, "latency_p50_ms": p50}


def latency_p50_ms(call, runs: int = LATENCY_RUNS, warmup: int = WARMUP_RUNS) -> float:
    """Median wall time of ``call()`` in ms over ``runs`` calls, after ``warmup`` untimed ones.

    The one latency measurement of the conversion report and the model card.
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def variant_row(variant: str, path: str | Path, validation: dict | None, bench: dict | None) -> dict:
    path = Path(path)
    validation = validation or {}
    accuracy = validation.get("accuracy")
    return {
        "variant": variant,
        "format": path.suffix.lstrip("."),
        "file": path.name,
        "size_mb": path.stat().st_size / 1e6,
        "accuracy": None if accuracy is None else 100.0 * accuracy,
        "top1_agreement": validation.get("top1_agreement"),
        "max_abs_diff": validation.get("max_abs_diff"),
        "mean_abs_diff": validation.get("mean_abs_diff"),
        "passed": validation.get("passed"),
        **(bench or {}),
    }


def keras_row(model_path: str | Path, accuracy: float | None) -> dict:
    return {
        "variant": "keras",
        "format": "keras",
        "file": Path(model_path).name,
        "size_mb": Path(model_path).stat().st_size / 1e6,
        "accuracy": None if accuracy is None else 100.0 * accuracy,
        "top1_agreement": 1.0,
        "max_abs_diff": 0.0,
        "mean_abs_diff": 0.0,
    }


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    if key == "passed":
        return "pass" if value else "FAIL"
    return fmt.format(value)


def to_markdown(rows: list[dict], title: str = "Conversion report") -> str:
    lines = [f"# {title}", "", "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["variant"] for row in rows]
    panels = (
        ("size_mb", "size (MB)"),
        ("latency_p50_ms", "latency p50 (ms, 2 threads)"),
        ("accuracy", "accuracy (%)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [row.get(key) or 0.0 for row in rows]
        bars = ax.bar(names, values, color="tab:blue")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=45)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        if key == "accuracy" and any(values):
            low = min(v for v in values if v) - 5
            ax.set_ylim(max(0.0, low), 102.0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(rows: list[dict], output_dir: str | Path, extra: dict | None = None) -> dict[str, Path]:
    output_dir = Path(output_dir)
    paths = {
        "md": output_dir / "report.md",
        "json": output_dir / "report.json",
        "png": output_dir / "report.png",
    }
    paths["md"].write_text(to_markdown(rows), encoding="utf-8")
    paths["json"].write_text(json.dumps({"rows": rows, **(extra or {})}, indent=2) + "\n", encoding="utf-8")
    plot(rows, paths["png"])
    return paths

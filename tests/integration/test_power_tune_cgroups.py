"""bench.power_tune for real: the tiny model in children limited by cgroup v1, both paths, then no cgroup
left behind. Needs root and the v1 cpu and memory hierarchies; skipped (with the reason) elsewhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cgroups, lambda_cost, power_tune
from tests.fixtures.images import BLUE, GREEN, RED, solid

REPO = Path(__file__).resolve().parents[2]
REASON = cgroups.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"power-tune needs cgroup v1 limits: {REASON}")


def _procs(box: Path) -> list[str]:
    try:
        return (box / "cgroup.procs").read_text().split()
    except OSError:  # the box is being made or removed
        return []


def leftover_boxes() -> list[str]:
    found = []
    for controller in cgroups.CONTROLLERS:
        parent = cgroups.CGROUP_ROOT / controller / cgroups.own_cgroup(controller).lstrip("/")
        found += [str(path) for path in parent.glob("power-tune-*")]
    return found


def test_two_sizes_one_thread_three_images_on_the_tiny_model(tmp_path, tiny_model_path):
    before = leftover_boxes()
    images = tmp_path / "images"
    images.mkdir()
    for name, colour in (("red", RED), ("green", GREEN), ("blue", BLUE)):
        (images / f"{name}.png").write_bytes(solid(colour))
    out = tmp_path / "power_tune.json"
    argv = ["--model", str(tiny_model_path), "--memory", "1024", "2048", "--threads", "1", "--images", "3"]
    assert power_tune.main([*argv, "--bulk-batch", "3", "--images-dir", str(images), "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["measured_on"]["cpu"] and report["limits"].startswith("cgroup v1")
    assert [(r["path"], r["memory_mb"]) for r in report["runs"]] == [
        ("single", 1024),
        ("single", 2048),
        ("bulk", 1024),
        ("bulk", 2048),
    ]
    for row in report["runs"]:
        assert row["limited"] and not row["oom"] and "error" not in row, row
        assert row["failures"] == 0 and row["warm_invocations"] == (3 if row["path"] == "single" else 1)
        assert 0 < row["p50_ms"] <= row["p90_ms"] and row["cold_start_s"] > 0
        assert 0 < row["peak_mb"] < row["memory_mb"]
        assert set(row["usd_per_million"]) == set(power_tune.ENGINES_BY_PATH[row["path"]])
    assert row["throttled_periods"] >= 0 and row["vcpus"] == pytest.approx(2048 / 1769, abs=1e-3)
    assert "bulk/distributed_map/x86_64" in report["cheapest"]
    assert out.with_suffix(".png").is_file()
    assert leftover_boxes() == before


def test_a_child_past_its_memory_size_is_reported_out_of_memory(tmp_path, monkeypatch, tiny_model_path):
    before = leftover_boxes()
    # A whole vCPU at 16 MB, so the child gets to its out-of-memory kill in a second, not a minute.
    monkeypatch.setattr(lambda_cost, "MB_PER_VCPU", 16)
    images = tmp_path / "images"
    images.mkdir()
    (images / "red.png").write_bytes(solid(RED))
    out = tmp_path / "oom.json"
    argv = ["--model", str(tiny_model_path), "--memory", "16", "--threads", "1", "--paths", "single"]
    assert power_tune.main([*argv, "--images", "1", "--images-dir", str(images), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["runs"]
    assert row["oom"] and row["oom_kills"] >= 1 and row["p90_ms"] is None
    assert leftover_boxes() == before


def test_an_onnx_model_is_tuned_as_its_own_backend(tmp_path):
    pytest.importorskip("onnxruntime")
    from tests.fixtures import tiny_onnx

    model = tiny_onnx.write(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (images / "green.png").write_bytes(solid(GREEN))
    out = tmp_path / "onnx.json"
    argv = ["--model", str(model), "--memory", "1769", "--threads", "2", "--paths", "single", "--images", "2"]
    assert power_tune.main([*argv, "--images-dir", str(images), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["runs"]
    assert row["backend"] == "onnx" and row["failures"] == 0 and "error" not in row
    assert row["usd_per_million"]["direct"]["x86_64"] > 0


def test_a_stopped_run_kills_its_child_and_leaves_no_cgroup(tmp_path, tiny_model_path):
    """kill (SIGTERM) while the child runs (loading, then 2000 photos): it is gone and both boxes removed."""
    before = leftover_boxes()
    images = tmp_path / "images"
    images.mkdir()
    (images / "red.png").write_bytes(solid(RED))
    argv = ["--model", str(tiny_model_path), "--memory", "1769", "--threads", "1", "--paths", "single"]
    command = [sys.executable, "-m", "bench.power_tune", *argv, "--images", "2000"]
    run = subprocess.Popen(
        [*command, "--images-dir", str(images), "--json", str(tmp_path / "stopped.json")],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        children: list[str] = []
        while not children:  # until the child has moved itself into its box
            assert time.monotonic() < deadline and run.poll() is None, "the child never entered a box"
            time.sleep(0.05)
            boxes = sorted(set(leftover_boxes()) - set(before))
            children = [pid for box in boxes for pid in _procs(Path(box))]
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if run.poll() is None:
            run.kill()
    assert leftover_boxes() == before
    assert children and not any(Path("/proc", pid).exists() for pid in children)

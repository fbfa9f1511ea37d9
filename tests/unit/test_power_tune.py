"""bench.power_tune's arithmetic and choices: cost per million images, the cheapest size within a latency
bound, the docs table rendered from its JSON, and what it says where it cannot set Lambda's limits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench import cgroups, lambda_cost, power_tune

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_gb_seconds_and_the_cpu_share_follow_lambdas_rules():
    assert lambda_cost.gb_s_per_image(0.2, 2048) == pytest.approx(0.4)
    assert lambda_cost.vcpus(1769) == 1.0
    assert lambda_cost.vcpus(1024) == pytest.approx(0.5789, abs=1e-4)


def test_a_direct_call_costs_compute_plus_one_request():
    items = lambda_cost.cost_items("direct", 0.2, 2048, "x86_64")
    by_item = {item["item"]: item["usd"] for item in items}
    # 10^6 images x 0.2 s x 2 GB = 400,000 GB-s at $0.0000166667
    assert by_item["Lambda compute (x86_64)"] == pytest.approx(6.66668, abs=1e-4)
    assert by_item["Lambda requests"] == pytest.approx(0.20)
    assert items[-1] == {
        "item": "total",
        "formula": "sum of the above",
        "usd": pytest.approx(6.86668, abs=1e-4),
    }
    assert "0.0000166667" in items[0]["formula"] and "e-05" not in items[0]["formula"]


def test_prices_are_written_as_on_the_aws_pages():
    assert [lambda_cost.price(x) for x in (0.0000166667, 0.2, 0.025, 1.0, 0.0004)] == [
        "$0.0000166667",
        "$0.20",
        "$0.025",
        "$1.00",
        "$0.0004",
    ]
    assert lambda_cost.per_thousand(lambda_cost.SFN_TRANSITION) == "$0.025/1,000"
    assert lambda_cost.per_million(lambda_cost.LAMBDA_REQUEST) == "$0.20/10⁶"


def test_arm64_is_charged_its_own_gb_second_price():
    x86 = lambda_cost.cost_items("direct", 0.2, 2048, "x86_64")[0]["usd"]
    arm = lambda_cost.cost_items("direct", 0.2, 2048, "arm64")[0]["usd"]
    assert arm == pytest.approx(400_000 * 0.0000133334, abs=1e-4)
    assert arm < x86


def test_a_distributed_map_pays_per_batch_for_the_workflow_and_per_image_for_s3():
    items = {i["item"]: i["usd"] for i in lambda_cost.cost_items("distributed_map", 0.2, 2048, "x86_64", 20)}
    assert items["Lambda requests"] == pytest.approx(50_000 * 0.20 / 1e6)
    assert items["S3 GET of the images"] == pytest.approx(0.40)
    assert items["Step Functions parent (one transition per child)"] == pytest.approx(1.25)
    assert items["Express children: requests"] == pytest.approx(0.05)
    # The docs' hand-made figure before power-tune: $8.6 with no per-image result objects.
    assert items["total"] == pytest.approx(8.6, abs=0.05)


def test_batch_operations_pay_per_job_and_per_object():
    items = {i["item"]: i["usd"] for i in lambda_cost.cost_items("batch_operations", 0.1, 1024, "x86_64")}
    assert items["S3 Batch Operations"] == pytest.approx(0.25 + 1.00)
    assert items["Lambda requests"] == pytest.approx(0.20)


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine"):
        lambda_cost.cost_items("sqs", 0.1, 1024, "x86_64")


def row(memory_mb, p90_ms, usd, **extra):
    return {"memory_mb": memory_mb, "p90_ms": p90_ms, "usd": usd, **extra}


def test_the_cheapest_size_is_chosen_among_those_within_the_bound():
    rows = [row(1024, 1200, 5.0), row(1769, 700, 6.0), row(2048, 600, 6.5), row(3008, 400, 9.0)]
    assert lambda_cost.cheapest(rows, 1000, lambda r: r["usd"])["memory_mb"] == 1769
    assert lambda_cost.cheapest(rows, 2000, lambda r: r["usd"])["memory_mb"] == 1024
    assert lambda_cost.cheapest(rows, 100, lambda r: r["usd"]) is None


def test_sizes_that_ran_out_of_memory_or_failed_are_never_chosen():
    rows = [row(512, 300, 1.0, oom=True), row(768, 300, 2.0, error="no answer"), row(1024, 300, 3.0)]
    assert lambda_cost.cheapest(rows, 1000, lambda r: r["usd"])["memory_mb"] == 1024


def test_a_tie_in_price_goes_to_the_smaller_memory_size():
    rows = [row(2048, 300, 3.0), row(1024, 300, 3.0)]
    assert lambda_cost.cheapest(rows, 1000, lambda r: r["usd"])["memory_mb"] == 1024


def test_percentiles_are_nearest_rank():
    values = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    assert power_tune.percentile(values, 50) == 50.0
    assert power_tune.percentile(values, 90) == 90.0
    assert power_tune.percentile([7.0], 90) == 7.0


def test_bulk_events_cover_the_warm_images_after_one_cold_batch():
    events = power_tune.bulk_events(["a", "b", "c"], count=4, batch=2)
    assert len(events) == 1 + 2
    assert [item["Key"] for item in events[1]["Items"]] == ["c", "a"]
    assert events[0]["BatchInput"] == {"bucket": power_tune.BUCKET}


def test_the_map_is_costed_at_the_templates_batch_size():
    template = (REPO_ROOT / "template.yaml").read_text(encoding="utf-8")
    default = re.search(r"MapItemsPerBatch:\n(?:\s+#.*\n|\s+Type:.*\n)*\s+Default: (\d+)", template)
    assert default, "MapItemsPerBatch's Default not found in template.yaml"
    assert power_tune.MAP_ITEMS_PER_BATCH == int(default.group(1))


def measured(path, memory_mb, p50, p90, mean, **extra):
    case = {
        "path": path,
        "backend": "tflite",
        "model": "m.tflite",
        "num_threads": 1,
        "memory_mb": memory_mb,
        "limited": True,
        "images_per_invocation": 5 if path == "bulk" else 1,
    }
    per_event = case["images_per_invocation"]
    outcome = {
        "returncode": 0,
        "cold_s": 1.25,
        "first": {"init_s": 0.5, "ok": True},
        "done": {
            "durations_ms": [(x or 0) * per_event for x in (p50, p90, mean)],
            "failures": 0,
            "peak_rss_mb": 1.0,
        },
        "stderr": [],
    }
    if p50 is None:  # killed before it answered
        outcome.update(first=None, done=None, returncode=-9)
    stats = {"peak_mb": 290.0, "limit_hits": 0, "oom_kills": 0, "throttled_periods": 3, **extra}
    return power_tune.summarise(case, outcome, stats, per_event)


SAMPLE = {
    "measured_on": {
        "date": "2026-12-05 09:00 UTC",
        "cpu": "Test CPU",
        "isa": ["avx2"],
        "cpus_visible": 2,
        "load_average_1m": 0.1,
    },
    "command": "python -m bench.power_tune --json build/power_tune.json",
    "images": 3,
    "bulk_batch": 5,
    "map_items_per_batch": 20,
    "max_p90_ms": 500.0,
}


def sample_report() -> dict:
    runs = [
        measured("single", 1024, 300, 400, 320),
        measured("single", 2048, 150, 200, 160),
        measured("bulk", 1024, 280, 600, 300),
        measured("bulk", 2048, 140, 180, 150),
        measured("bulk", 512, None, None, None, oom_kills=1),
    ]
    return {**SAMPLE, "runs": runs, "cheapest": power_tune.choose(runs, SAMPLE["max_p90_ms"])}


def test_an_out_of_memory_child_is_a_row_marked_oom_not_an_error():
    outcome = {"returncode": -9, "cold_s": None, "first": None, "done": None, "stderr": ["Killed"]}
    case = {"path": "single", "memory_mb": 128, "images_per_invocation": 1}
    stats = {"peak_mb": 128.0, "limit_hits": 4, "oom_kills": 1, "throttled_periods": 0}
    result = power_tune.summarise(case, outcome, stats, 1)
    assert result["oom"] is True and "error" not in result and result["p90_ms"] is None


def test_a_child_that_dies_otherwise_is_an_error_with_its_last_words():
    outcome = {"returncode": 1, "cold_s": None, "first": None, "done": None, "stderr": ["boom"]}
    case = {"path": "single", "memory_mb": 2048, "images_per_invocation": 1}
    stats = {"peak_mb": 90.0, "limit_hits": 0, "oom_kills": 0, "throttled_periods": 0}
    result = power_tune.summarise(case, outcome, stats, 1)
    assert result["oom"] is False and result["error"] == "no answer: boom"


def test_rows_carry_per_image_figures_and_their_cost():
    result = measured("bulk", 2048, 140, 180, 150)
    assert (result["p50_ms"], result["p90_ms"]) == (150.0, 180.0)  # nearest rank of 140, 150, 180
    assert result["gb_s_per_image"] == pytest.approx(0.1567 * 2, abs=1e-3)  # mean 156.7 ms x 2 GB
    cost = lambda_cost.cost_items(
        "distributed_map", result["mean_ms"] / 1000, 2048, "x86_64", power_tune.MAP_ITEMS_PER_BATCH
    )
    assert result["usd_per_million"]["distributed_map"]["x86_64"] == lambda_cost.total(cost)


def test_the_choice_names_the_cheapest_size_per_path_engine_and_arch():
    picks = sample_report()["cheapest"]
    # bulk 1024 MB has a p90 of 600 ms > 500: 2048 MB is the cheapest within the bound.
    assert picks["bulk/distributed_map/x86_64"]["memory_mb"] == 2048
    assert picks["single/direct/arm64"]["memory_mb"] in (1024, 2048)
    assert set(picks) == {
        f"{k}/{a}"
        for k in ("single/direct", "single/batch_operations", "bulk/distributed_map")
        for a in ("x86_64", "arm64")
    }


def test_the_docs_table_is_rendered_from_the_json():
    report = sample_report()
    table = power_tune.render_docs(json.loads(json.dumps(report)))
    assert "Test CPU (avx2), 2 CPUs, load 0.1, 2026-12-05 09:00 UTC" in table
    assert "`python -m bench.power_tune --json build/power_tune.json`" in table
    assert "| single | tflite | 1 | 1024 (0.58) |" in table
    assert "| bulk | tflite | 1 | 512 (0.29) | out of memory | — | 290.0 / — |" in table
    assert "| single | tflite | 1 | 2048 (1.16) | 160 / 200 | 1.25 | 290.0 / 1.0 |" in table
    pick = report["cheapest"]["bulk/distributed_map/x86_64"]
    total = f"${pick['usd_per_million']:,.2f}"
    assert f"| **total** | sum of the above | {total} |" in table
    assert "**Distributed map, cheapest within the bound**: 2048 MB" in table


def test_write_docs_replaces_only_what_lies_between_the_markers(tmp_path):
    docs = tmp_path / "bulk.md"
    docs.write_text(f"before\n{power_tune.DOCS_BEGIN}\nold table\n{power_tune.DOCS_END}\nafter\n")
    report_path = tmp_path / "power_tune.json"
    report_path.write_text(json.dumps(sample_report()))
    assert power_tune.main(["--write-docs", str(report_path), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith(f"before\n{power_tune.DOCS_BEGIN}\n") and text.endswith(
        f"{power_tune.DOCS_END}\nafter\n"
    )
    assert "old table" not in text and "| bulk | tflite |" in text


def test_write_docs_renders_the_machines_run_then_the_avx2_masked_one(tmp_path):
    docs = tmp_path / "bulk.md"
    docs.write_text(f"{power_tune.DOCS_BEGIN}\n{power_tune.DOCS_END}\n")
    plain, masked = sample_report(), sample_report()
    masked["measured_on"] = {**masked["measured_on"], "isa_mask": "avx2 only: CPUID masked"}
    paths = [tmp_path / "power_tune.json", tmp_path / "power_tune_avx2.json"]
    for path, report in zip(paths, (plain, masked), strict=True):
        path.write_text(json.dumps(report))
    assert power_tune.main(["--write-docs", *map(str, paths), "--docs", str(docs)]) == 0
    text = docs.read_text()
    masked_at = text.index(
        "**The AVX2 code paths** (`make power-tune ISA=avx2`: AVX-512, VNNI and AMX hidden"
    )
    assert text.count("**The AVX2 code paths**") == 1 and text.index("Generated from") < masked_at
    assert "hidden by a CPUID mask" in text[masked_at:] and "hidden by a CPUID mask" not in text[:masked_at]
    assert text.count("**Distributed map, cheapest within the bound**") == 2


def test_the_real_docs_have_the_markers():
    text = power_tune.DOCS.read_text(encoding="utf-8")
    assert power_tune.DOCS_BEGIN in text and power_tune.DOCS_END in text


def test_without_root_or_cgroup_v1_the_reason_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    assert cgroups.unavailable_reason(tmp_path) == "not running as root"
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)
    assert cgroups.unavailable_reason(tmp_path) == f"no cgroup v1 cpu controller at {tmp_path / 'cpu'}"
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert "memory controller" in cgroups.unavailable_reason(tmp_path)


def test_without_cgroups_it_says_so_and_runs_unlimited(tmp_path, monkeypatch, capsys, tiny_model_path):
    from tests.fixtures.images import BLUE, solid

    monkeypatch.setattr(cgroups, "CGROUP_ROOT", tmp_path / "no-cgroups")
    images = tmp_path / "images"
    images.mkdir()
    (images / "blue.png").write_bytes(solid(BLUE))
    out = tmp_path / "out.json"
    argv = ["--model", str(tiny_model_path), "--paths", "single", "--threads", "1", "--images", "2"]
    assert power_tune.main([*argv, "--images-dir", str(images), "--json", str(out)]) == 0
    assert "cannot set Lambda's CPU quota and memory limit here" in capsys.readouterr().err
    report = json.loads(out.read_text())
    (only,) = report["runs"]
    assert only["memory_mb"] is None and only["limited"] is False and "usd_per_million" not in only
    assert only["p90_ms"] > 0 and only["failures"] == 0
    assert report["limits"].startswith("none (no cgroup v1 cpu controller")
    assert report["cheapest"] == {}


def test_a_child_that_never_answers_is_stopped_at_the_timeout():
    import sys

    outcome = power_tune.run_child([sys.executable, "-c", "import time; time.sleep(30)"], {}, None, 0.5)
    assert outcome["returncode"] == -9 and outcome["done"] is None
    assert outcome["stderr"][0] == "stopped after the 0.5 s timeout"

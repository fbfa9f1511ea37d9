"""--target: the variant chosen for where the model will run, the same on every build machine (no timing).

Two fake build machines convert the same training output: same files, same accuracies and sizes, their
own measured latencies (an AVX2-only one where dynamic-range is the fastest TFLite variant, a VNNI one
where int8 is). ``host`` follows each machine's clock; every other target must not.
"""

from __future__ import annotations

import json

import pytest

from convert import targets
from convert.errors import ConversionError
from convert.install import install
from convert.metadata import write_sidecar
from convert.targets import LATENCY_TABLES, TARGETS, LatencyTable, choose_for_target, table_for
from convert.variants import VARIANTS, variant_id
from lambda_function.classifier import Classifier
from tests.fixtures import tiny_onnx

KERAS = 0.93  # Keras test accuracy (fraction, as the pipeline passes it)
# One training output: (accuracy %, size MB) per variant, identical on every machine.
OUTPUT = {
    "tflite-fp32": (93.0, 85.0),
    "tflite-float16": (93.0, 42.6),
    "tflite-dynamic": (93.2, 22.0),
    "tflite-int8": (92.6, 24.0),
    "onnx-fp32": (93.0, 85.0),
    "onnx-int8": (92.4, 23.5),
}
ZEN3_LIKE = {"tflite-fp32": 146, "tflite-float16": 146, "tflite-dynamic": 148, "tflite-int8": 158}
ZEN5_LIKE = {"tflite-fp32": 50, "tflite-float16": 51, "tflite-dynamic": 57, "tflite-int8": 41}


def rows_measured_on(machine: dict[str, float], output: dict = OUTPUT) -> list[dict]:
    """The report rows one build machine writes: the training output's figures, its own timings."""
    rows = [{"variant": "keras", "format": "keras", "accuracy": 100 * KERAS}]
    for vid, (accuracy, size) in output.items():
        row = {"variant": vid, "format": vid.split("-")[0], "accuracy": accuracy, "size_mb": size}
        rows.append({**row, "passed": True, "latency_p50_ms": machine.get(vid, 30.0)})
    return rows


def chosen(machine: dict, target: str, **kwargs) -> str:
    return choose_for_target(rows_measured_on(machine), KERAS, target, **kwargs)["variant"]


def test_host_follows_the_build_machine_and_the_other_targets_do_not():
    assert chosen(ZEN3_LIKE, "host") == "tflite-dynamic"  # the 25 MB budget leaves dynamic and int8
    assert chosen(ZEN5_LIKE, "host") == "tflite-int8"
    for target in ("lambda-x86_64", "lambda-arm64", "device"):
        assert chosen(ZEN3_LIKE, target) == chosen(ZEN5_LIKE, target), target


def test_the_choice_per_target_from_the_repo_table():
    # Lambda x86_64 is ranked on the AVX2-only machine: ONNX int8 (104.7 ms) beats dynamic (148.3 ms).
    assert chosen(ZEN3_LIKE, "lambda-x86_64") == "onnx-int8"
    assert chosen(ZEN3_LIKE, "lambda-x86_64", formats=("tflite",)) == "tflite-dynamic"
    # No measured machine stands for arm64 or devices: TFLite only, most accurate, then smallest.
    assert chosen(ZEN3_LIKE, "lambda-arm64") == "tflite-dynamic"
    assert chosen(ZEN3_LIKE, "device") == "tflite-dynamic"


def test_lambda_x86_64_assumes_avx2_only():
    assert table_for("lambda-x86_64").isa == frozenset({"avx2", "fma"})
    assert table_for("lambda-arm64") is None and table_for("device") is None and table_for("host") is None
    # A machine with more flags than the target guarantees never stands for it, however fast.
    avx2 = LatencyTable("avx2 box", frozenset({"avx2"}), "2026-12-05", {"tflite-int8": 9.0, "onnx-int8": 99})
    vnni = LatencyTable("vnni box", frozenset({"avx2", "avx512_vnni"}), "2026-12-05", {"onnx-int8": 1.0})
    assert chosen(ZEN3_LIKE, "lambda-x86_64", tables=(vnni, avx2)) == "tflite-int8"
    # Of the machines that fit, the one with the most of the target's flags.
    fma = LatencyTable("avx2+fma box", frozenset({"avx2", "fma"}), "2026-12-05", {"tflite-dynamic": 1.0})
    assert chosen(ZEN3_LIKE, "lambda-x86_64", tables=(avx2, fma)) == "tflite-dynamic"


def test_the_accuracy_and_size_gates_come_before_the_table():
    worse_onnx = {**OUTPUT, "onnx-int8": (91.5, 23.5)}  # 1.5 points below Keras
    rows = rows_measured_on(ZEN3_LIKE, worse_onnx)
    assert choose_for_target(rows, KERAS, "lambda-x86_64")["variant"] == "tflite-dynamic"
    failed = [{**row, "passed": row["variant"] != "onnx-int8"} for row in rows_measured_on(ZEN3_LIKE)]
    assert choose_for_target(failed, KERAS, "lambda-x86_64")["variant"] == "tflite-dynamic"
    assert choose_for_target(rows, KERAS, "lambda-x86_64", max_size_mb=100)["variant"] == "onnx-fp32"


def test_ties_and_unmeasured_variants_are_settled_by_size_then_accuracy():
    table = LatencyTable(
        "box", frozenset({"avx2", "fma"}), "2026-12-05", {"tflite-int8": 5.0, "onnx-int8": 5.0}
    )
    # Equal latency: the smaller file (onnx-int8 23.5 MB < tflite-int8 24.0 MB); unmeasured ones last.
    assert chosen(ZEN3_LIKE, "lambda-x86_64", tables=(table,)) == "onnx-int8"
    empty = LatencyTable("box", frozenset({"avx2"}), "2026-12-05", {})
    assert chosen(ZEN3_LIKE, "lambda-x86_64", tables=(empty,)) == "tflite-dynamic"  # all unmeasured: size


def test_no_qualifying_variant_and_unknown_targets_fail_clearly():
    with pytest.raises(ConversionError, match="within 1.0 point"):
        choose_for_target(rows_measured_on(ZEN3_LIKE), 0.999, "lambda-x86_64")
    with pytest.raises(ConversionError, match="Unknown target"):
        choose_for_target(rows_measured_on(ZEN3_LIKE), KERAS, "gpu")


def test_the_repo_table_names_only_variants_convert_makes():
    known = {variant_id(fmt, v) for fmt, names in VARIANTS.items() for v in names}
    for table in LATENCY_TABLES:
        assert set(table.p50_ms) <= known and table.p50_ms and table.measured.startswith("20")
    assert set(TARGETS) == {"host", "lambda-x86_64", "lambda-arm64", "device"}
    assert targets.DEFAULT_TARGET == "host"


def test_an_onnx_choice_is_installed_where_serving_and_the_onnx_build_look(tmp_path):
    built = tiny_onnx.write(tmp_path, name="onnx_int8")
    meta = json.loads(built.with_suffix(".json").read_text())
    source = tmp_path / "model.keras"
    source.write_bytes(b"k")
    size = (meta["input"]["height"], meta["input"]["width"])
    write_sidecar(built, "onnx", "int8", meta["labels"], size, source, {}, {"passed": True})
    dest = tmp_path / "model"
    installed = install(built, dest)
    assert installed == dest / "onnx" / "model.onnx"
    assert sorted(p.name for p in installed.parent.iterdir()) == ["model.json", "model.onnx"]
    assert not (dest / "model.json").exists()  # the TFLite sidecar's name stays free
    assert Classifier.from_path(installed, num_threads=1).backend == "onnx"


@pytest.mark.parametrize("target", ["host", "lambda-x86_64", "lambda-arm64", "device"])
def test_the_on_device_file_is_never_installed_even_when_it_ranks_first(target):
    # It outputs probabilities (softmax inside) and is derived from the installed variant; the same
    # size and accuracy as dynamic-range, and faster here by the clock's noise.
    rows = rows_measured_on(ZEN3_LIKE)
    rows.append(
        {
            "variant": "tflite-ondevice",
            "format": "tflite",
            "accuracy": 93.2,
            "size_mb": 21.9,
            "passed": True,
            "latency_p50_ms": 1.0,
        }
    )
    assert choose_for_target(rows, KERAS, target)["variant"] != "tflite-ondevice"

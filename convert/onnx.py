"""SavedModel -> ONNX fp32 (tf2onnx, opset 17) and ONNX int8 (onnxruntime static QDQ quantization)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from convert.errors import ConversionError
from convert.onnx_rounding import repair_weight_rounding

OPSET = 17
# tf2onnx is run in a child process: it reconfigures TF logging and can take a few GB on Xception,
# both of which are better kept out of the converting process.
TF2ONNX_TIMEOUT_S = 1800
# Activation ranges: this percentile of every value the calibration images produced, cut on each side
# (onnxruntime's histogram calibrator, asymmetric), so the few most extreme values, from whichever
# images, do not set a range. Chosen on the 341 validation photos against the float model (2026-12-05,
# Intel Xeon; KL(fp32 || int8) / mean |logit difference|): 99.9995 0.0020 / 0.18; 99.999 0.0027 / 0.21;
# 99.9999 0.0031 / 0.20; 99.99 0.014 / 0.48; the mean of per-image min/max used before 0.0045 / 0.28
# (docs/conversion.md "ONNX int8 on x86").
CALIBRATION_PERCENTILE = 99.9995
# The histogram calibrator keeps every intermediate output of a pass until its end (tens of MB per
# image on Xception: 200 images in one pass ran this 24 GB machine out of memory), so it runs in passes
# of at most this many calibration batches, their histograms merged.
CALIBRATION_PASS_BATCHES = 20
# Activations as uint8 and weights as int8 (U8S8): onnxruntime's native int8 format on x86. With int8
# activations (S8S8) it rewrites most Q/DQ pairs to uint8 itself, but not all: on the bundled Xception
# 7 convolutions stayed float between ~120 Quantize/Dequantize nodes, 84 ms against 52 ms for U8S8 (one
# thread, Intel Xeon with VNNI, 2026-12-05; docs/conversion.md "ONNX int8 on x86").
ACTIVATION_TYPE = "QUInt8"
WEIGHT_TYPE = "QInt8"
# 7-bit weights. Without a VNNI instruction (AVX2: all Lambda x86_64 promises) onnxruntime multiplies
# U8S8 with VPMADDUBSW, whose 16-bit pair sums saturate (255 x 127 x 2 > 32767), so an AVX2 machine gave
# other logits than a VNNI one (mean |difference| 0.36, top-1 agreement with fp32 97.4% vs 98.2%, 114
# validation photos, AVX2 emulated by qemu -cpu Haswell). With 7-bit weights no pair sum saturates: the
# two gave identical logits (docs/conversion.md "ONNX int8 on x86").
REDUCE_RANGE = True


def to_onnx_fp32(saved_model_dir: str | Path, out_path: str | Path, opset: int = OPSET) -> dict:
    command = [
        sys.executable,
        "-m",
        "tf2onnx.convert",
        "--saved-model",
        str(saved_model_dir),
        "--signature_def",
        "serving_default",
        "--opset",
        str(opset),
        "--output",
        str(out_path),
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TF2ONNX_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise ConversionError(f"tf2onnx did not finish within {TF2ONNX_TIMEOUT_S} s.") from None
    if done.returncode != 0 or not Path(out_path).is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ConversionError(f"tf2onnx failed (exit {done.returncode}):\n{tail}")
    return {"method": "none", "converter": "tf2onnx", "opset": opset}


def calibration_arrays(representative: Callable[[], Iterable]) -> list[np.ndarray]:
    """The representative batches, read once, as float32 arrays (a TFLite-style step is ``[batch]``)."""
    return [
        np.asarray(step[0] if isinstance(step, list | tuple) else step, dtype=np.float32)
        for step in representative()
    ]


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration batches, in passes (``set_range``)."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self._input_name = input_name
        self._batches = batches
        self.set_range(0, len(batches))

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._batches[start_index:end_index])

    def get_next(self):
        batch = next(self._pending, None)
        return None if batch is None else {self._input_name: batch}


def pass_size(batches: int, most: int = CALIBRATION_PASS_BATCHES) -> int:
    """The largest pass of at most ``most`` batches that divides ``batches`` (onnxruntime's rule)."""
    return next(size for size in range(min(most, batches), 0, -1) if batches % size == 0)


def pooling_and_head_nodes(model_path: str | Path) -> list[str]:
    """Names of the global-average-pool nodes and every node downstream of them.

    These stay float in the int8 model, as in TFLite int8 (see ``convert.tflite.INT8_DEFAULTS``): the
    pooled features are standardized (divided by small per-channel spreads), so int8 steps there become
    logit jumps.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, None] = {}
    pending = [node for node in graph.node if node.op_type in ("GlobalAveragePool", "ReduceMean")]
    while pending:
        node = pending.pop()
        if node.name in found:
            continue
        found[node.name] = None
        for output in node.output:
            pending.extend(consumers.get(output, []))
    return list(found)


def to_onnx_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    representative: Callable[[], Iterable[np.ndarray]],
    per_channel: bool = True,
) -> dict:
    """Static QDQ int8 (uint8 activations per-tensor, int8 weights per-channel; the float head gets int8
    weights too), float32 input and output; the convolutions' weight rounding repaired afterwards
    (``convert.onnx_rounding``)."""
    from lambda_function.onnx_engine import import_onnxruntime

    ort = import_onnxruntime()  # first: it turns telemetry off before onnxruntime starts
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if representative is None:
        raise ConversionError("The ONNX int8 variant needs calibration images (pass --data-dir).")
    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    del session

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Folds constants and fuses BN/Conv before calibration; symbolic shapes would need sympy.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        float_nodes = pooling_and_head_nodes(prepared)
        batches = calibration_arrays(representative)  # one read for the ranges and the repair
        if not batches:
            raise ConversionError("The ONNX int8 variant got no calibration images.")
        reader = Reader(input_name, batches)
        quantize_static(
            str(prepared),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=REDUCE_RANGE,
            activation_type=getattr(QuantType, ACTIVATION_TYPE),
            weight_type=getattr(QuantType, WEIGHT_TYPE),
            nodes_to_exclude=float_nodes,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={
                "CalibPercentile": CALIBRATION_PERCENTILE,
                # Asymmetric: most activations follow a ReLU, and a range mirrored around 0 would
                # give half of the uint8 levels to values that never occur.
                "CalibTensorRangeSymmetric": False,
                # (The option's name says MinMax, but onnxruntime applies it to any calibrator.)
                "CalibStridedMinMax": pass_size(len(reader)),
            },
        )
        rounding = repair_weight_rounding(out_path, prepared, batches)
    int8_head_weights(out_path, float_nodes)
    weights = "int8 in a 7-bit range" if REDUCE_RANGE else "int8"
    return {
        "method": "static QDQ (onnxruntime.quantization)",
        "weights": f"{weights}, {'per-channel' if per_channel else 'per-tensor'}",
        "activations": f"uint8 ({CALIBRATION_PERCENTILE}th percentile calibration, each side)",
        "weight_rounding": "per-channel clipped scales, bias correction "
        f"({rounding['clipped_convolutions']} / {rounding['bias_corrected_convolutions']} convolutions)",
        "input_output": "float32",
        "head": "float activations, int8 per-column weights",
    }


def int8_head_weights(model_path: str | Path, head_nodes: list[str]) -> None:
    """Store the float head's Gemm weights as int8 (symmetric, one scale per output column), in place.

    The head's activations stay float (see ``pooling_and_head_nodes``), but its weights need not: an
    ensemble of five Dense(4528 -> 100) layers is 9 MB of float32, which took the int8 file from 22 to
    31 MB, over the install budget. Each weight becomes int8 -> Cast -> Mul(scale) in front of its Gemm:
    constants only, so onnxruntime folds them back to float32 once, when the session loads (a
    DequantizeLinear would not be folded: it ran on every call, +3.8 ms).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    head = set(head_nodes)
    restore = []
    for node in graph.node:
        if node.op_type != "Gemm" or node.name not in head or node.input[1] not in initializers:
            continue
        name = node.input[1]
        weights = numpy_helper.to_array(initializers[name])
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
        columns = 0 if trans_b else 1  # the output columns: B is (K, N), or (N, K) when transposed
        peak = np.abs(weights).max(axis=1 - columns, keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        quantized = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(quantized, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
            ]
        )
        restore += [
            helper.make_node(
                "Cast", [f"{name}_int8"], [f"{name}_cast"], name=f"{name}_cast", to=onnx.TensorProto.FLOAT
            ),
            helper.make_node("Mul", [f"{name}_cast", f"{name}_scale"], [name], name=f"{name}_restore"),
        ]
    if restore:
        # They read initializers only, so the front of the graph keeps it in topological order.
        nodes = restore + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(model_path))

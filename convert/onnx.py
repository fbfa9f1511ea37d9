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

OPSET = 17
# tf2onnx is run in a child process: it reconfigures TF logging and can take a few GB on Xception,
# both of which are better kept out of the converting process.
TF2ONNX_TIMEOUT_S = 1800
MOVING_AVERAGE = True
AVERAGING_CONSTANT = 0.01


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


class _Reader:
    """onnxruntime CalibrationDataReader over the representative batches."""

    def __init__(self, input_name: str, representative: Callable[[], Iterable[np.ndarray]]):
        self._input_name = input_name
        self._batches = iter(representative())

    def get_next(self):
        step = next(self._batches, None)
        if step is None:
            return None
        batch = step[0] if isinstance(step, list | tuple) else step
        return {self._input_name: np.asarray(batch, dtype=np.float32)}


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
    """Static QDQ int8 (weights per-channel, activations per-tensor), float32 input and output."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
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
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(input_name, representative),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            # The mean of per-image min/max (what CalibMovingAverage computes when all images are
            # collected in one pass) rather than the global min/max: with plain min/max
            # the rarest outlier image sets each range (on Xception's residual stream 3x wider than
            # typical), the same failure found for TFLite int8 (docs/conversion.md, int8 findings).
            # (Not CalibMaxIntermediateOutputs: onnxruntime 1.32 drops each full chunk unmerged.)
            nodes_to_exclude=float_nodes,
            extra_options={
                "CalibMovingAverage": MOVING_AVERAGE,
                "CalibMovingAverageConstant": AVERAGING_CONSTANT,
            },
        )
    return {
        "method": "static QDQ (onnxruntime.quantization)",
        "weights": "int8, per-channel" if per_channel else "int8, per-tensor",
        "activations": "int8 (MinMax calibration, mean of per-image ranges)"
        if MOVING_AVERAGE
        else "int8 (MinMax calibration)",
        "input_output": "float32",
    }

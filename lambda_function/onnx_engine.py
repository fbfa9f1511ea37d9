"""The ONNX Runtime backend of the Classifier: an ``.onnx`` model in, the same engine API as LiteRT's out.

Imported only when MODEL_PATH ends in ``.onnx``: ``onnxruntime`` ships only in the ONNX build
(``make build BACKEND=onnx``, ``lambda_function/requirements-onnx.txt``); the default build has LiteRT only.
Anything wrong with the file (truncated, not ONNX, the wrong input or outputs, a graph that fails on its
first run) is a 500 ``model_unavailable`` at load, with the reason in the log, never a crash later.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from lambda_function.errors import model_unavailable as _model_error

# onnxruntime's thread pool spins while it waits for work by default. Under Lambda's CPU quota (a share
# of a vCPU below 1,769 MB) a spinning thread burns the quota the other thread needs, so: no spinning.
ALLOW_SPINNING = False
# onnxruntime (1.29 on) sends usage events to Microsoft from Linux by default and keeps a device ID under
# XDG_CACHE_HOME; a classifier behind a URL has no reason to, and under Lambda's read-only root the attempt
# printed a warning to stderr at import. Read before onnxruntime starts, so set before the import; a value
# the user sets wins.
TELEMETRY_OPT_OUT = {"ORT_DISABLE_TELEMETRY": "1"}
# The input type the serving code writes: float32 pixels 0-255 (scaling is inside the model).
INPUT_TYPE = "tensor(float)"
# "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from ... failed": the part after the code.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def turn_telemetry_off() -> None:
    """``TELEMETRY_OPT_OUT`` into the environment, keeping any value already set there."""
    for name, value in TELEMETRY_OPT_OUT.items():
        os.environ.setdefault(name, value)


def import_onnxruntime():
    """``onnxruntime`` with its telemetry off (``TELEMETRY_OPT_OUT``): how this repo imports it."""
    turn_telemetry_off()
    import onnxruntime

    return onnxruntime


def load_session(path: str | Path, num_threads: int):
    """An onnxruntime InferenceSession on the CPU with ``num_threads`` intra-op threads; 500 if unusable."""
    try:
        ort = import_onnxruntime()
    except ImportError:
        raise _model_error(
            "No ONNX runtime is installed: build with BACKEND=onnx (pip install onnxruntime)."
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings are not ours to show
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if ALLOW_SPINNING else "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for bad files
        raise _model_error(f"onnxruntime could not load {path}: {_first_line(exc)}") from None


class OnnxEngine:
    """One ONNX session behind the engine API: ``input_shape``, ``output_size``, ``run(pixels)``.

    The model must take one float32 NHWC batch of 3-channel pixels (batch 1 or dynamic) and give one
    output; a first run at load (on zeros) checks that it runs and measures its output.
    """

    backend = "onnx"

    def __init__(self, session, path: str | Path = "<memory>"):
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise _model_error(
                f"{path}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}."
            )
        inp = inputs[0]
        if inp.type != INPUT_TYPE:
            raise _model_error(f"{path}: the input is {inp.type}, not {INPUT_TYPE} (float32 pixels).")
        dims = list(inp.shape)
        # A dynamic batch (a name or None, as tf2onnx writes it) is served as batch 1.
        if len(dims) == 4 and not isinstance(dims[0], int):
            dims[0] = 1
        if len(dims) != 4 or not all(isinstance(d, int) for d in dims) or dims[0] != 1 or dims[3] != 3:
            raise _model_error(f"{path}: input shape {tuple(inp.shape)} is not (1, height, width, 3).")
        self.input_shape: tuple[int, ...] = tuple(dims)
        self._input_name, self._output_name = inp.name, outputs[0].name
        # The one input buffer, reused by every request (no float copy of the image per call).
        self._buffer = np.zeros(self.input_shape, np.float32)
        try:
            self.output_size = int(self._run().size)
        except Exception as exc:  # a graph that loads but cannot run (bad shapes inside, missing kernel)
            raise _model_error(f"{path}: the model fails on its first run: {_first_line(exc)}") from None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (height, width, 3) -> the model's raw output, flat (float32)."""
        np.copyto(self._buffer[0], pixels, casting="unsafe")
        return self._run().reshape(-1)

    def _run(self) -> np.ndarray:
        return np.asarray(
            self.session.run([self._output_name], {self._input_name: self._buffer})[0], dtype=np.float32
        )


def _first_line(exc: Exception) -> str:
    # onnxruntime's messages start with its own bracketed prefix and can run to pages of graph dump.
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
    return _ORT_PREFIX.sub("", text)[:300]

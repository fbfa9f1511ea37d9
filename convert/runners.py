"""Run an exported model: LiteRT for .tflite, onnxruntime for .onnx, both with 2 threads.

These are the runtimes the report measures. Each file is opened by the Lambda's own loader
(``lambda_function.classifier.load_interpreter``, ``lambda_function.onnx_engine.load_session``), so the
report times the interpreter or session, with its settings, that the Lambda runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np

from convert.errors import ModelLoadError
from lambda_function.errors import ServingError

NUM_THREADS = 2


class Runner(Protocol):
    input_hw: tuple[int, int]
    input_dtype: np.dtype
    output_dtype: np.dtype
    load_seconds: float

    def predict_logits(self, batch: np.ndarray) -> np.ndarray: ...


class TFLiteRunner:
    def __init__(self, path: str | Path, num_threads: int = NUM_THREADS):
        from lambda_function.classifier import load_interpreter

        start = time.perf_counter()
        try:
            self._interpreter = load_interpreter(path, num_threads)
        except ServingError as exc:
            raise ModelLoadError(f"{path} is not a loadable TFLite model: {exc.message}") from None
        self.load_seconds = time.perf_counter() - start
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = self._input["shape"]
        self.input_hw = (int(shape[1]), int(shape[2]))
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self._batch = int(shape[0])

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.shape[0] != self._batch:
            # The converted model has a dynamic batch; resizing once per new size is cheap.
            self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output["index"]), dtype=np.float32)


class OnnxRunner:
    def __init__(self, path: str | Path, num_threads: int = NUM_THREADS):
        from lambda_function.onnx_engine import load_session

        start = time.perf_counter()
        try:
            self._session = load_session(path, num_threads)
        except ServingError as exc:
            raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc.message}") from None
        self.load_seconds = time.perf_counter() - start
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self._input_name = inp.name
        self.input_hw = (int(inp.shape[1]), int(inp.shape[2]))
        self.input_dtype = np.dtype(_ONNX_TYPES.get(inp.type, "object"))
        self.output_dtype = np.dtype(_ONNX_TYPES.get(out.type, "object"))

    def predict_logits(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(self._session.run(None, {self._input_name: batch})[0], dtype=np.float32)


_ONNX_TYPES = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def load_runner(path: str | Path, num_threads: int = NUM_THREADS) -> Runner:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Model file not found: {path}")
    if path.suffix == ".tflite":
        return TFLiteRunner(path, num_threads)
    if path.suffix == ".onnx":
        return OnnxRunner(path, num_threads)
    raise ModelLoadError(f"{path}: expected a .tflite or .onnx file.")


def predict_all(
    runner: Runner, pixels: np.ndarray, batch_size: int = 16, progress: str | None = None
) -> np.ndarray:
    from tqdm import tqdm

    starts = range(0, len(pixels), batch_size)
    if progress:
        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    outputs = [runner.predict_logits(pixels[s : s + batch_size]) for s in starts]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)

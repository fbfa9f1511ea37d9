"""A TFLite model plus its metadata sidecar: pixels in, class probabilities out.

Only numpy and a TFLite interpreter (``ai_edge_litert``, else ``tflite_runtime``): this ships to Lambda.
The class labels come from the sidecar ``<stem>.json`` written by the conversion step, and the input
size from the model itself (checked against the sidecar), so nothing about the model is hard-coded.
An interpreter is not thread-safe: use one Classifier per thread (Lambda runs one request at a time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lambda_function.errors import ServingError
from lambda_function.preprocess import DEFAULT_RESIZE
from lambda_function.sidecar import (
    SidecarProblem,
    check_model_file,
    file_sha256,  # noqa: F401 - re-exported: its home until sidecar.py
)
from lambda_function.sidecar import read_sidecar as read_checked_sidecar

# The model bundled with the function; env MODEL_PATH overrides it (read by the handler and the CLI).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "model" / "model.tflite"
# Characters of the model's sha256 used as its short id in responses and logs.
MODEL_ID_LENGTH = 12
# Scores in responses are rounded: more digits are noise and only make the JSON longer.
SCORE_DIGITS = 6
# Test-time augmentation: "none" runs the model once; "flip" also runs the mirror image and averages the
# probabilities (twice the inference time). Off by default: docs/lab/accuracy-levers.md has its figures.
TTA_MODES = ("none", "flip")


def default_num_threads(environ: os._Environ | dict = os.environ) -> int:
    """Interpreter threads from env NUM_THREADS, else one per CPU the process can see."""
    raw = environ.get("NUM_THREADS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise _model_error(f"NUM_THREADS must be a positive integer, got {raw!r}.")
        return value
    return os.cpu_count() or 1


def load_interpreter(path: str | Path, num_threads: int):
    """A TFLite interpreter with tensors allocated, from ai_edge_litert or else tflite_runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            # Fallback for older images; it cannot load TF 2.21 dynamic-range models and needs numpy<2.
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise _model_error(
                "No TFLite runtime is installed: pip install ai-edge-litert (or tflite-runtime)."
            ) from None
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as exc:
        # Perhaps XNNPACK (applied by default) is what failed: try once more without it.
        interpreter = _without_default_delegates(Interpreter, path, num_threads)
        if interpreter is None:
            raise _model_error(f"The TFLite runtime could not load {path}: {exc}") from None
        _warn_builtin_kernels(path, f"loading with XNNPACK failed: {exc}")
    else:
        if runs_on_xnnpack(interpreter) is False:
            _warn_builtin_kernels(path, "XNNPACK did not start or took none of the model's operations")
    return interpreter


def runs_on_xnnpack(interpreter) -> bool | None:
    """Whether the default delegate (XNNPACK) took part of the graph; None if the runtime cannot say.

    XNNPACK is the fast CPU path, applied by default; when it cannot start (on arm64 Lambda its CPU
    detection may find no /sys/devices/system/cpu/possible), TFLite quietly runs the built-in kernels,
    ~1.5x slower. A delegate shows up as a DELEGATE node in the interpreter's graph.
    """
    ops_details = getattr(interpreter, "_get_ops_details", None)
    if ops_details is None:
        return None
    try:
        return any(op.get("op_name") == "DELEGATE" for op in ops_details())
    except (RuntimeError, ValueError, TypeError):
        return None


def _without_default_delegates(interpreter_class, path: str | Path, num_threads: int):
    """An interpreter on the built-in kernels only (no XNNPACK), or None if that does not load either."""
    try:
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError:
        return None
    try:
        interpreter = interpreter_class(
            model_path=str(path),
            num_threads=num_threads,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError, OSError, TypeError):
        return None
    return interpreter


def _warn_builtin_kernels(path: str | Path, reason: str) -> None:
    # One warning per model load (once per container): serving still works, only slower.
    from lambda_function.logging_json import get_logger

    get_logger().warning(
        "XNNPACK is not running the model; serving with the built-in kernels (slower)",
        extra={"model_path": str(path), "reason": reason},
    )


def read_sidecar(model_path: str | Path) -> dict:
    """The metadata JSON next to the model (same stem, ``.json``): lambda_function/sidecar.py's schema."""
    try:
        meta = read_checked_sidecar(model_path)
    except SidecarProblem as exc:
        raise _model_error(str(exc)) from None
    if meta["format"] != "tflite":
        raise _model_error(f"{model_path}: format is {meta['format']!r}; this runtime serves tflite only.")
    return meta


@dataclass(frozen=True)
class _Quantization:
    scale: float
    zero_point: int

    @classmethod
    def of(cls, detail: dict) -> _Quantization | None:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return cls(float(scale), int(zero_point)) if scale else None


class Classifier:
    """One loaded model: ``predict(pixels) -> probabilities`` in the sidecar's label order."""

    def __init__(
        self, interpreter, meta: dict, *, sha256: str, path: str | Path = "<memory>", tta: str = "none"
    ):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.tta = tta
        self.path = Path(path)
        self.meta = meta
        self.labels: tuple[str, ...] = tuple(meta["labels"])
        self.sha256 = sha256
        self.model_id = sha256[:MODEL_ID_LENGTH]
        self._interpreter = interpreter
        self._output_is_logits = meta["output"] == "logits"

        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise _model_error(
                f"{path}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}."
            )
        inp, out = inputs[0], outputs[0]
        shape = tuple(int(d) for d in inp["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:
            raise _model_error(f"{path}: input shape {shape} is not (1, height, width, 3).")
        self.input_size: tuple[int, int] = (shape[1], shape[2])
        declared = meta["input"]
        expected = (declared.get("height"), declared.get("width"), declared.get("channels", 3))
        if expected != (shape[1], shape[2], shape[3]):
            raise _model_error(
                f"{path}: the model's input is {shape[1]}x{shape[2]}x{shape[3]} but the metadata "
                f"says {expected[0]}x{expected[1]}x{expected[2]}."
            )
        # How photos are made square for this model; a sidecar from before the key existed means squash,
        # the way every such model was trained.
        # (read_sidecar has checked it is one of RESIZE_MODES)
        self.resize: str = declared.get("resize", DEFAULT_RESIZE)
        n_out = int(np.prod(out["shape"]))
        if n_out != len(self.labels):
            raise _model_error(
                f"{path}: the model has {n_out} outputs but the metadata lists {len(self.labels)} labels."
            )

        self._input_index = inp["index"]
        self._output_index = out["index"]
        self._input_dtype = np.dtype(inp["dtype"])
        self._input_quant = _Quantization.of(inp) if self._input_dtype.kind in "iu" else None
        self._output_quant = _Quantization.of(out) if np.dtype(out["dtype"]).kind in "iu" else None
        # A callable returning a view of the interpreter's own input buffer: writing through it each
        # request avoids allocating a float copy of the image (views must not outlive an invoke()).
        self._input_view = interpreter.tensor(self._input_index)

    @classmethod
    def from_path(
        cls, model_path: str | Path, num_threads: int | None = None, tta: str = "none"
    ) -> Classifier:
        """Load ``model_path`` and its sidecar; raise ServingError(500, "model_unavailable") if unusable."""
        path = Path(model_path)
        if not path.is_file():
            raise _model_error(f"The model file {path} does not exist.")
        meta = read_sidecar(path)
        # 48-78 ms for the 22 MB bundled model here (2026-12-03), once per container.
        try:
            sha256 = check_model_file(path, meta)
        except SidecarProblem as exc:
            raise _model_error(str(exc)) from None
        threads = default_num_threads() if num_threads is None else num_threads
        return cls(load_interpreter(path, threads), meta, sha256=sha256, path=path, tta=tta)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8`` RGB pixels (height, width, 3) at :attr:`input_size` -> float32 probabilities."""
        expected = (*self.input_size, 3)
        if pixels.shape != expected:
            raise ValueError(f"pixels have shape {pixels.shape}, the model needs {expected}")
        probs = self._invoke(pixels)
        if self.tta == "flip":  # garments are left-right symmetric in meaning: average with the mirror
            probs = ((probs.astype(np.float64) + self._invoke(pixels[:, ::-1])) / 2).astype(np.float32)
        return probs

    def _invoke(self, pixels: np.ndarray) -> np.ndarray:
        """One pass of the interpreter on pixels of the right shape -> float32 probabilities."""
        target = self._input_view()[0]
        if self._input_quant is None:
            np.copyto(target, pixels, casting="unsafe")
        else:
            q = self._input_quant
            info = np.iinfo(self._input_dtype)
            quantized = np.rint(pixels.astype(np.float32) / q.scale + q.zero_point)
            np.copyto(target, np.clip(quantized, info.min, info.max), casting="unsafe")
        del target
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._output_index).reshape(-1)
        if self._output_quant is not None:
            raw = (raw.astype(np.float64) - self._output_quant.zero_point) * self._output_quant.scale
        return softmax(raw).astype(np.float32) if self._output_is_logits else renormalise(raw)

    def top_k(self, probs: np.ndarray, k: int) -> list[dict]:
        return top_k(probs, self.labels, k)

    def scores(self, probs: np.ndarray) -> dict[str, float]:
        return {label: round(float(p), SCORE_DIGITS) for label, p in zip(self.labels, probs, strict=True)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64: the one softmax of serving, training and conversion.

    float64 so that large int8-dequantized logits neither overflow nor lose the small classes.
    """
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def renormalise(probs: np.ndarray) -> np.ndarray:
    # A quantized softmax output rarely sums to exactly 1; negative values are quantization noise.
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, None)
    total = p.sum()
    if total <= 0:
        return np.full(p.shape, 1.0 / p.size, dtype=np.float32)
    return (p / total).astype(np.float32)


def top_k(probs: np.ndarray, labels: tuple[str, ...] | list[str], k: int) -> list[dict]:
    """The ``k`` best ``{"label", "score"}``, best first (ties keep label order)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[: max(0, k)]
    return [{"label": labels[i], "score": round(float(probs[i]), SCORE_DIGITS)} for i in order]


def _model_error(message: str) -> ServingError:
    return ServingError(500, "model_unavailable", message)

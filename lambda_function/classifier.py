"""A model plus its metadata sidecar: pixels in, class probabilities out.

Two backends behind one Classifier: a ``.tflite`` file runs on LiteRT (``ai_edge_litert``, else
``tflite_runtime``: the default build), an ``.onnx`` file on ONNX Runtime (lambda_function/onnx_engine.py:
the ONNX build only). Each is an *engine* with ``input_shape``, ``output_size`` and ``run(pixels)``; the
Classifier does the rest (sidecar checks, softmax, top-k) the same way for both. Only numpy and the
runtime: this ships to Lambda. The class labels come from the sidecar ``<stem>.json`` written by the
conversion step, and the input size from the model itself (checked against the sidecar), so nothing
about the model is hard-coded. An engine is not thread-safe: use one Classifier per thread (Lambda runs
one request at a time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lambda_function.errors import model_unavailable as _model_error
from lambda_function.preprocess import DEFAULT_RESIZE
from lambda_function.sidecar import (
    SidecarProblem,
    check_model_file,
    file_sha256,  # noqa: F401 - re-exported: its home until sidecar.py
)
from lambda_function.sidecar import read_sidecar as read_checked_sidecar

# The model bundled with the function; env MODEL_PATH overrides it (read by the handler and the CLI).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "model" / "model.tflite"
# The ONNX build (make build BACKEND=onnx) bundles its model here instead (its own folder: model.json is
# the TFLite sidecar) and ships without the TFLite one, so the bundled model is the one that is there:
# the TFLite one first. Env MODEL_BACKEND names one explicitly (a checkout holding both).
BUNDLED_MODELS = {"tflite": DEFAULT_MODEL_PATH, "onnx": DEFAULT_MODEL_PATH.parent / "onnx" / "model.onnx"}
# Characters of the model's sha256 used as its short id in responses and logs.
MODEL_ID_LENGTH = 12
# Scores in responses are rounded: more digits are noise and only make the JSON longer.
SCORE_DIGITS = 6
# Test-time augmentation: "none" runs the model once; "flip" also runs the mirror image and averages the
# probabilities (twice the inference time). Off by default: docs/lab/accuracy-levers.md has its figures.
TTA_MODES = ("none", "flip")
# The runtime that serves each model file type (the sidecar's "format" must agree).
BACKENDS = {".tflite": "tflite", ".onnx": "onnx"}


def default_num_threads(environ: os._Environ | dict = os.environ) -> int:
    """Inference threads (LiteRT or ONNX Runtime) from env NUM_THREADS, else one per CPU the process sees."""
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


def bundled_model_path(environ: os._Environ | dict = os.environ) -> Path:
    """The bundled model: env MODEL_BACKEND's (tflite or onnx; 500 for another value), else the first of
    BUNDLED_MODELS that exists (a build ships one), else the TFLite path (whose absence load reports)."""
    backend = environ.get("MODEL_BACKEND", "").strip().lower()
    if backend:
        if backend not in BUNDLED_MODELS:
            raise _model_error(f"MODEL_BACKEND must be one of {', '.join(BUNDLED_MODELS)}, got {backend!r}.")
        return BUNDLED_MODELS[backend]
    return next((path for path in BUNDLED_MODELS.values() if path.is_file()), DEFAULT_MODEL_PATH)


def model_path(environ: os._Environ | dict = os.environ) -> Path:
    """The model to serve: env MODEL_PATH, else the bundled model of MODEL_BACKEND (ServingError for an
    unknown backend). The handler and the CLI (after its --model) both ask here."""
    return Path(environ.get("MODEL_PATH") or bundled_model_path(environ))


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


def backend_for(model_path: str | Path) -> str:
    """ "tflite" or "onnx", from the file name; 500 model_unavailable for anything else."""
    backend = BACKENDS.get(Path(model_path).suffix.lower())
    if backend is None:
        raise _model_error(f"{model_path}: expected a .tflite or .onnx model file.")
    return backend


def read_sidecar(model_path: str | Path) -> dict:
    """The metadata JSON next to the model (same stem, ``.json``): lambda_function/sidecar.py's schema."""
    try:
        meta = read_checked_sidecar(model_path)
    except SidecarProblem as exc:
        raise _model_error(str(exc)) from None
    backend = backend_for(model_path)
    if meta["format"] != backend:
        raise _model_error(f"{model_path}: its metadata says format {meta['format']!r}, not {backend!r}.")
    return meta


def load_engine(path: str | Path, num_threads: int):
    """The engine for ``path``'s backend: TFLiteEngine or onnx_engine.OnnxEngine (imported only then)."""
    if backend_for(path) == "onnx":
        from lambda_function.onnx_engine import OnnxEngine, load_session

        return OnnxEngine(load_session(path, num_threads), path)
    return TFLiteEngine(load_interpreter(path, num_threads), path)


@dataclass(frozen=True)
class _Quantization:
    scale: float
    zero_point: int

    @classmethod
    def of(cls, detail: dict) -> _Quantization | None:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return cls(float(scale), int(zero_point)) if scale else None


class TFLiteEngine:
    """A LiteRT interpreter behind the engine API: ``input_shape``, ``output_size``, ``run(pixels)``.

    An int8 input or output is quantized / dequantized here, so ``run`` takes uint8 pixels and returns
    float values whatever the model's tensor types.
    """

    backend = "tflite"

    def __init__(self, interpreter, path: str | Path = "<memory>"):
        self.interpreter = interpreter
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise _model_error(
                f"{path}: expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}."
            )
        inp, out = inputs[0], outputs[0]
        self.input_shape: tuple[int, ...] = tuple(int(d) for d in inp["shape"])
        self.output_size = int(np.prod(out["shape"]))
        self._output_index = out["index"]
        self._input_dtype = np.dtype(inp["dtype"])
        self._input_quant = _Quantization.of(inp) if self._input_dtype.kind in "iu" else None
        self._output_quant = _Quantization.of(out) if np.dtype(out["dtype"]).kind in "iu" else None
        # A callable returning a view of the interpreter's own input buffer: writing through it each
        # request avoids allocating a float copy of the image (views must not outlive an invoke()).
        self._input_view = interpreter.tensor(inp["index"])

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (height, width, 3) -> the model's raw output, flat and dequantized."""
        target = self._input_view()[0]
        if self._input_quant is None:
            np.copyto(target, pixels, casting="unsafe")
        else:
            q = self._input_quant
            info = np.iinfo(self._input_dtype)
            quantized = np.rint(pixels.astype(np.float32) / q.scale + q.zero_point)
            np.copyto(target, np.clip(quantized, info.min, info.max), casting="unsafe")
        del target
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output_index).reshape(-1)
        if self._output_quant is not None:
            raw = (raw.astype(np.float64) - self._output_quant.zero_point) * self._output_quant.scale
        return raw


class Classifier:
    """One loaded model: ``predict(pixels) -> probabilities`` in the sidecar's label order.

    ``engine`` runs the model (TFLiteEngine, or onnx_engine.OnnxEngine); ``backend`` names it.
    """

    def __init__(self, engine, meta: dict, *, sha256: str, path: str | Path = "<memory>", tta: str = "none"):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.tta = tta
        self.path = Path(path)
        self.meta = meta
        self.labels: tuple[str, ...] = tuple(meta["labels"])
        self.sha256 = sha256
        self.model_id = sha256[:MODEL_ID_LENGTH]
        self.engine = engine
        self.backend: str = engine.backend
        self._output_is_logits = meta["output"] == "logits"

        shape = engine.input_shape
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
        if engine.output_size != len(self.labels):
            raise _model_error(
                f"{path}: the model has {engine.output_size} outputs but the metadata lists "
                f"{len(self.labels)} labels."
            )

    @classmethod
    def from_path(
        cls, model_path: str | Path, num_threads: int | None = None, tta: str = "none"
    ) -> Classifier:
        """Load ``model_path`` (.tflite or .onnx) and its sidecar; ServingError(500, "model_unavailable")
        if unusable."""
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
        return cls(load_engine(path, threads), meta, sha256=sha256, path=path, tta=tta)

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
        """One pass of the engine on pixels of the right shape -> float32 probabilities."""
        raw = self.engine.run(pixels)
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

"""SavedModel -> TFLite: fp32, float16, dynamic-range and full-integer int8 (float32 input/output).

Every variant keeps float32 input and output tensors: the Lambda feeds 0-255 float pixels and applies
the softmax to float logits, so scores are never rounded to int8 steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from convert.errors import ConversionError, UnknownVariantError

Representative = Callable[[], Iterable[np.ndarray]]

# int8 settings (docs/conversion.md, int8 findings, says what each one bought on the real model).
INT8_DEFAULTS: dict = {
    "per_channel": True,
    # Activation range = this percentile of the per-image maxima (and the mirror one of the minima);
    # None or 100 = plain min/max over all calibration images (the stock converter's choice).
    "range_percentile": None,
    # Ops kept in float32 (TFLite builtin op names); empty = fully integer. Everything from the
    # pooling on stays float: the MEANs (global average pooling), their CONCATENATION, the
    # standardization (SUB, MUL) and the two FULLY_CONNECTED layers of the head (+1 MB). The
    # standardization divides each pooled feature by its spread across images, which is tiny for
    # some of Xception's middle-flow channels, so an int8 step there became a logit jump: fully int8
    # pooling failed validation (one test image's probability moved by 0.88) on the blocks 11-14
    # model. The logits are never int8 steps either.
    "denylisted_ops": ("MEAN", "CONCATENATION", "SUB", "MUL", "FULLY_CONNECTED"),
    # Tensors (by name) whose producing op stays float32. Every op downstream of the pooling is added to
    # these by :func:`after_pooling`, whatever its type: the calibration layer's ADDs and EXPs too
    # (the residual ADDs of Xception's body stay int8, so ADD cannot be denylisted as a type).
    "denylisted_nodes": (),
}


def _converter(saved_model_dir: str | Path):
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))


def convert_fp32(saved_model_dir: str | Path) -> tuple[bytes, dict]:
    return _converter(saved_model_dir).convert(), {"method": "none"}


def convert_float16(saved_model_dir: str | Path) -> tuple[bytes, dict]:
    import tensorflow as tf

    converter = _converter(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return converter.convert(), {"method": "float16 weights", "activations": "float32"}


def convert_dynamic(saved_model_dir: str | Path) -> tuple[bytes, dict]:
    import tensorflow as tf

    converter = _converter(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert(), {
        "method": "dynamic range",
        "weights": "int8",
        "activations": "float32 (quantized on the fly per op)",
    }


def calibrate(saved_model_dir: str | Path, representative: Representative) -> bytes:
    """The float model annotated with the activation ranges seen on ``representative`` (slow step)."""
    import tensorflow as tf

    converter = _converter(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter._experimental_calibrate_only = True  # the QuantizationDebugger's own route
    return converter.convert()


def activation_ranges(calibrated: bytes, representative: Representative) -> dict[str, np.ndarray]:
    """Per-sample (min, max) of every calibrated activation: ``{tensor name: array (samples, 2)}``.

    Runs the calibrated (still float) model without the XNNPACK delegate, which would hide the
    intermediate tensors inside its fused subgraph.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    names = {
        t.name.decode(): t.quantization
        for t in model.subgraphs[0].tensors
        if t.quantization is not None and t.quantization.min is not None
    }
    interpreter = Interpreter(
        model_content=calibrated,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details() if d["name"] in names}
    input_index = interpreter.get_input_details()[0]["index"]
    ranges: dict[str, list[tuple[float, float]]] = {name: [] for name in index}
    for step in representative():
        interpreter.set_tensor(input_index, np.asarray(step[0], dtype=np.float32))
        interpreter.invoke()
        for name, idx in index.items():
            value = interpreter.get_tensor(idx)
            ranges[name].append((float(value.min()), float(value.max())))
    return {name: np.array(values) for name, values in ranges.items()}


def clip_ranges(calibrated: bytes, ranges: dict[str, np.ndarray], percentile: float) -> bytes:
    """Replace each activation's min/max with a percentile of its per-sample minima/maxima.

    Min/max calibration takes the single most extreme image for every tensor; one outlier image
    then widens a range several-fold and costs that tensor most of its 256 levels. A percentile
    over images (e.g. 99) ignores the rare extremes, which are clipped at run time instead.
    The model input keeps its full 0-255 range (it is never an outlier).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    subgraph = model.subgraphs[0]
    inputs = {subgraph.tensors[i].name.decode() for i in subgraph.inputs}
    for tensor in subgraph.tensors:
        name = tensor.name.decode()
        if name in inputs or name not in ranges or tensor.quantization is None:
            continue
        lows, highs = ranges[name][:, 0], ranges[name][:, 1]
        low = min(float(np.percentile(lows, 100.0 - percentile)), 0.0)
        high = max(float(np.percentile(highs, percentile)), 0.0)
        tensor.quantization.min = np.array([low], dtype=np.float32)
        tensor.quantization.max = np.array([high], dtype=np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def after_pooling(calibrated: bytes) -> list[str]:
    """Output tensor names of the global-average pooling (MEAN) ops and of every op downstream of them:
    the head and the calibration layer, kept float as in the ONNX int8 file
    (``convert.onnx.pooling_and_head_nodes``)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    subgraph = model.subgraphs[0]
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    floating = set()  # tensor indices computed from the pooled features
    names: list[str] = []
    for op in subgraph.operators:  # stored in execution order, so producers come first
        if codes[op.opcodeIndex] == schema.BuiltinOperator.MEAN or floating.intersection(op.inputs):
            floating.update(op.outputs)
            names.extend(subgraph.tensors[i].name.decode() for i in op.outputs)
    return names


def quantize_calibrated(
    calibrated: bytes,
    per_channel: bool = INT8_DEFAULTS["per_channel"],
    denylisted_ops: Iterable[str] = INT8_DEFAULTS["denylisted_ops"],
    denylisted_nodes: Iterable[str] = INT8_DEFAULTS["denylisted_nodes"],
    numeric_verify: bool = False,
) -> bytes:
    """Quantize a calibrated model; cheap, so many settings can be tried on one calibration.

    Input and output stay float32 (``fully_quantize=False``): a Quantize op after the input and a
    Dequantize op before the logits. This is the call ``QuantizationDebugger`` makes for selective
    quantization (denylisted ops/nodes stay float32, with Dequantize/Quantize around them).
    """
    from tensorflow.lite.python import convert as tfl_convert

    return tfl_convert.mlir_quantize(
        calibrated,
        disable_per_channel=not per_channel,
        fully_quantize=False,
        enable_numeric_verify=numeric_verify,
        denylisted_ops=list(denylisted_ops) or None,
        denylisted_nodes=list(denylisted_nodes) or None,
    )


def convert_int8(
    saved_model_dir: str | Path,
    representative: Representative,
    per_channel: bool = INT8_DEFAULTS["per_channel"],
    denylisted_ops: Iterable[str] = INT8_DEFAULTS["denylisted_ops"],
    denylisted_nodes: Iterable[str] = INT8_DEFAULTS["denylisted_nodes"],
    range_percentile: float | None = INT8_DEFAULTS["range_percentile"],
) -> tuple[bytes, dict]:
    """Full-integer weights and activations, float32 in/out; optionally some ops kept in float."""
    denylisted_ops, denylisted_nodes = list(denylisted_ops), list(denylisted_nodes)
    calibrated = calibrate(saved_model_dir, representative)
    if range_percentile is not None and range_percentile < 100:
        calibrated = clip_ranges(calibrated, activation_ranges(calibrated, representative), range_percentile)
    head = after_pooling(calibrated)
    model = quantize_calibrated(calibrated, per_channel, denylisted_ops, [*denylisted_nodes, *head])
    details = {
        "method": "full integer (static)",
        "weights": "int8, per-channel" if per_channel else "int8, per-tensor",
        "activations": "int8",
        "input_output": "float32",
        "activation_ranges": (
            f"{range_percentile}th percentile of per-image min/max"
            if range_percentile is not None and range_percentile < 100
            else "min/max over all calibration images"
        ),
        "kept_float_ops": denylisted_ops,
        "kept_float_nodes": denylisted_nodes,
        "kept_float_after_pooling": f"{len(head)} tensors",
    }
    return model, details


def convert_int8_naive(saved_model_dir: str | Path, representative: Representative) -> bytes:
    """The stock converter recipe (TFLITE_BUILTINS_INT8, defaults): the baseline of the investigation."""
    import tensorflow as tf

    converter = _converter(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def to_tflite(
    saved_model_dir: str | Path,
    out_path: str | Path,
    variant: str,
    representative: Representative | None = None,
    **options,
) -> dict:
    """Convert and write ``out_path``; return the quantization details for the sidecar."""
    if variant == "int8":
        if representative is None:
            raise ConversionError("The int8 variant needs calibration images (pass --data-dir).")
        model, details = convert_int8(saved_model_dir, representative, **options)
    elif variant in _SIMPLE:
        if options:
            raise ConversionError(f"The {variant} variant takes no options (got {', '.join(options)}).")
        model, details = _SIMPLE[variant](saved_model_dir)
    else:
        raise UnknownVariantError(
            f"Unknown tflite variant {variant!r}; choose from: fp32, float16, dynamic, int8."
        )
    Path(out_path).write_bytes(model)
    return details


_SIMPLE = {"fp32": convert_fp32, "float16": convert_float16, "dynamic": convert_dynamic}

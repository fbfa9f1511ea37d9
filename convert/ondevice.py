"""The on-device variant: a TFLite model that MediaPipe Tasks' ImageClassifier loads as it is.

App developers hand a ``.tflite`` to MediaPipe Tasks (Android, iOS, web, Python), which reads the labels,
the input normalisation and the image properties from TFLite Model Metadata inside the file, and shows
the output tensor as scores. Our served model keeps them in a JSON sidecar and outputs logits, so this
module derives from any of our TFLite files (e.g. the bundled one) a file that:

1. ends in a SOFTMAX op appended at the flatbuffer level (no Keras model needed; the logits tensor
   feeds it), so the scores are probabilities, and has a fixed batch of one;
2. carries the metadata MediaPipe's own ``image_classifier.MetadataWriter`` writes (the same tables,
   checked field by field against mediapipe 0.10.21's writer, see docs/on-device.md), plus name,
   version, author and licence, and ``labels.txt`` zipped onto the end of the file.

Pure Python: the flatbuffer schemas generated for Python (object API) ship with the ``mediapipe``
wheel; no TensorFlow. mediapipe 1.2.3's own writer cannot be used (it imports a C++ module that the
wheel lacks) and 0.10.21's pins numpy<2, so the writer's few tables are built here instead.

    python -m convert.ondevice lambda_function/model/model.tflite web/model/model.tflite
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from convert.errors import ConversionError
from lambda_function.classifier import file_sha256
from lambda_function.preprocess import DEFAULT_RESIZE

ONDEVICE_ID = "tflite-ondevice"
FILE_NAME = "tflite_ondevice.tflite"
METADATA_FIELD = "TFLITE_METADATA"  # the name MediaPipe and the TFLite Support library look up
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
LABELS_FILE = "labels.txt"
# What mediapipe 0.10.21's writer computed (GetMinimumMetadataParserVersion) for exactly these tables.
MIN_PARSER_VERSION = "1.0.0"
# The model scales pixels itself (x / 127.5 - 1 inside the graph), so MediaPipe must feed raw 0-255
# floats: normalisation (x - 0) / 1.
NORM_MEAN, NORM_STD = 0.0, 1.0
SOFTMAX_OUTPUT_NAME = "probabilities"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ModelInfo:
    """The general metadata: what a model browser (or Android Studio's model view) shows."""

    name: str = "Clothing classifier"
    description: str = ""  # empty: describe_input() for the source's resize mode

    version: str = ""
    author: str = "The edge-clothing-classifier contributors"
    license: str = "MIT (code and model); trained on the clothing dataset by Alexey Grigorev, CC0 1.0"


# How the model was trained to see a photo (sidecar input.resize, lambda_function.preprocess): MediaPipe's
# ImageClassifier only ever squashes, so for the other modes the app must frame the photo itself first.
INPUT_FRAMING = {
    "squash": "the whole photo resized to the model's size without keeping the aspect ratio (no crop)",
    "letterbox": "the whole photo shrunk to fit the model's size and padded with mid-grey (128, 128, 128) "
    "to a square; pad it so before classifying",
    "crop": "the centre square of the photo resized to the model's size; crop it so before classifying",
}


def describe_input(resize: str) -> str:
    """The model description MediaPipe and model browsers show, for a model trained with ``resize``."""
    return (
        "Classifies a photo of one garment by clothing type (labels.txt lists them). Xception transfer "
        f"learning; the input is {INPUT_FRAMING[resize]}, RGB 0-255; the output is one probability per label."
    )


def _schemas():
    # Imported here: mediapipe is an optional extra and slow to import (it loads TensorFlow if present).
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_fb
        from mediapipe.tasks.metadata import schema_py_generated as tfl_fb
    except ImportError:
        raise ConversionError(
            "The on-device variant needs the mediapipe package: pip install -e '.[ondevice]'."
        ) from None
    return tfl_fb, meta_fb


def _load(model: bytes):
    tfl_fb, _ = _schemas()
    if len(model) < 8 or model[4:8] != TFLITE_IDENTIFIER:
        raise ConversionError("Not a TFLite model (the file identifier is not TFL3).")
    return tfl_fb.ModelT.InitFromObj(tfl_fb.Model.GetRootAs(model, 0))


def _pack(model_t) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model_t.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _opcode_if_present(model_t, builtin: int) -> int | None:
    for index, code in enumerate(model_t.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    return None


def _opcode(model_t, builtin: int) -> int:
    """Index of the operator code ``builtin`` in the model, added if the model has none."""
    tfl_fb, _ = _schemas()
    index = _opcode_if_present(model_t, builtin)
    if index is not None:
        return index
    code = tfl_fb.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = builtin  # < 127: old readers read this field
    code.version = 1
    model_t.operatorCodes = [*(model_t.operatorCodes or []), code]
    return len(model_t.operatorCodes) - 1


def append_softmax(model: bytes) -> bytes:
    """The same model with ``SOFTMAX(logits)`` as its only output (float32, same shape), batch 1."""
    tfl_fb, _ = _schemas()
    model_t = _load(model)
    if len(model_t.subgraphs) != 1 or len(model_t.subgraphs[0].outputs) != 1:
        raise ConversionError("Expected a model with one subgraph and one output tensor.")
    graph = model_t.subgraphs[0]
    logits_index = int(graph.outputs[0])
    logits = graph.tensors[logits_index]
    if logits.type != tfl_fb.TensorType.FLOAT32:
        raise ConversionError("The model's output is not float32 logits.")
    softmax = _opcode_if_present(model_t, tfl_fb.BuiltinOperator.SOFTMAX)
    if any(op.opcodeIndex == softmax and logits_index in list(op.outputs) for op in graph.operators):
        raise ConversionError("The model already ends in a softmax.")

    buffer = tfl_fb.BufferT()  # activations own an empty buffer, as the converter writes them
    model_t.buffers.append(buffer)
    probs = tfl_fb.TensorT()
    probs.shape = np.array(logits.shape, dtype=np.int32)
    probs.type = tfl_fb.TensorType.FLOAT32
    probs.buffer = len(model_t.buffers) - 1
    probs.name = SOFTMAX_OUTPUT_NAME.encode()
    graph.tensors.append(probs)
    probs_index = len(graph.tensors) - 1

    op = tfl_fb.OperatorT()
    op.opcodeIndex = _opcode(model_t, tfl_fb.BuiltinOperator.SOFTMAX)
    op.inputs = np.array([logits_index], dtype=np.int32)
    op.outputs = np.array([probs_index], dtype=np.int32)
    op.builtinOptionsType = tfl_fb.BuiltinOptions.SoftmaxOptions
    op.builtinOptions = tfl_fb.SoftmaxOptionsT()
    op.builtinOptions.beta = 1.0
    graph.operators.append(op)
    graph.outputs = np.array([probs_index], dtype=np.int32)
    # The signature (what get_signature_runner and LiteRT.js use) must name the new output too.
    for signature in model_t.signatureDefs or []:
        for output in signature.outputs or []:
            if output.tensorIndex == logits_index:
                output.tensorIndex = probs_index
    _fix_batch_of_one(graph)
    return _pack(model_t)


def _fix_batch_of_one(graph) -> None:
    """Drop the dynamic batch (-1) from the shape signatures: a device classifies one image at a time.

    The converter marks the batch dimension as dynamic; MediaPipe ignores that, but LiteRT.js refuses
    a [1, H, W, 3] input for a model whose signature says [-1, H, W, 3]. Without a signature the
    shape is the static [1, ...] one; LiteRT's Python interpreter can still resize it (validation).
    """
    for tensor in graph.tensors:
        signature = tensor.shapeSignature
        if signature is not None and len(signature) and signature[0] == -1:
            tensor.shapeSignature = None


def _metadata_buffer(model_t, labels: list[str], info: ModelInfo) -> bytes:
    """The ModelMetadata flatbuffer: the tables MediaPipe's ImageClassifier writer builds."""
    import flatbuffers

    tfl_fb, meta_fb = _schemas()
    graph = model_t.subgraphs[0]
    inp = graph.tensors[int(graph.inputs[0])]
    if inp.type != tfl_fb.TensorType.FLOAT32:
        raise ConversionError("The on-device variant expects a float32 image input.")

    image = meta_fb.TensorMetadataT()
    image.name = "image"
    image.description = "Input image to be processed."
    image.content = meta_fb.ContentT()
    image.content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    image.content.contentProperties = meta_fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = meta_fb.ColorSpaceType.RGB
    normalization = meta_fb.ProcessUnitT()
    normalization.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    normalization.options = meta_fb.NormalizationOptionsT()
    normalization.options.mean = [NORM_MEAN]
    normalization.options.std = [NORM_STD]
    image.processUnits = [normalization]
    image.stats = meta_fb.StatsT()
    image.stats.min = [(0.0 - NORM_MEAN) / NORM_STD]
    image.stats.max = [(255.0 - NORM_MEAN) / NORM_STD]

    scores = meta_fb.TensorMetadataT()
    scores.name = "score"
    scores.description = "Score of the labels respectively."
    scores.content = meta_fb.ContentT()
    scores.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = meta_fb.FeaturePropertiesT()
    scores.stats = meta_fb.StatsT()
    scores.stats.min, scores.stats.max = [0.0], [1.0]
    label_file = meta_fb.AssociatedFileT()
    label_file.name = LABELS_FILE
    label_file.description = "Labels for categories that the model can recognize."
    label_file.type = meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [label_file]

    subgraph = meta_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]
    meta = meta_fb.ModelMetadataT()
    meta.name, meta.description, meta.version = info.name, info.description, info.version or None
    meta.author, meta.license = info.author, info.license
    meta.subgraphMetadata = [subgraph]
    meta.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(meta.Pack(builder), file_identifier=METADATA_IDENTIFIER)
    return bytes(builder.Output())


def add_metadata(model: bytes, labels: list[str], info: ModelInfo | None = None) -> bytes:
    """``model`` with TFLite Model Metadata and ``labels.txt`` packed in (as MediaPipe's populator does)."""
    tfl_fb, _ = _schemas()
    model_t = _load(model)
    if any(m.name.decode() == METADATA_FIELD for m in model_t.metadata or []):
        raise ConversionError("The model already carries TFLite Model Metadata.")
    graph = model_t.subgraphs[0]
    n_out = int(np.prod(graph.tensors[int(graph.outputs[0])].shape))
    if n_out != len(labels):
        raise ConversionError(f"The model has {n_out} outputs but {len(labels)} labels were given.")
    buffer = tfl_fb.BufferT()
    buffer.data = np.frombuffer(
        _metadata_buffer(model_t, labels, info or ModelInfo(description=describe_input(DEFAULT_RESIZE))),
        dtype=np.uint8,
    )
    model_t.buffers.append(buffer)
    field = tfl_fb.MetadataT()
    field.name = METADATA_FIELD.encode()
    field.buffer = len(model_t.buffers) - 1
    model_t.metadata = [*(model_t.metadata or []), field]
    # Associated files are a zip archive appended to the flatbuffer (readers find it from the end).
    out = io.BytesIO(_pack(model_t))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        # A fixed timestamp: the same model and labels always give the same bytes (and sha256).
        archive.writestr(zipfile.ZipInfo(LABELS_FILE, date_time=ZIP_DATE), "\n".join(labels))
    return out.getvalue()


def read_metadata(model: bytes) -> dict:
    """The metadata a MediaPipe user would see: name, version, ..., normalisation, labels."""
    _, meta_fb = _schemas()
    model_t = _load(model)
    fields = [m for m in model_t.metadata or [] if m.name.decode() == METADATA_FIELD]
    if not fields:
        raise ConversionError("The model carries no TFLite Model Metadata.")
    raw = bytes(model_t.buffers[fields[0].buffer].data)
    meta = meta_fb.ModelMetadataT.InitFromObj(meta_fb.ModelMetadata.GetRootAs(raw, 0))
    image = meta.subgraphMetadata[0].inputTensorMetadata[0]
    norm = image.processUnits[0].options
    scores = meta.subgraphMetadata[0].outputTensorMetadata[0]
    label_name = scores.associatedFiles[0].name.decode()
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        labels = archive.read(label_name).decode("utf-8").split("\n")

    def text(value):
        return value.decode() if isinstance(value, bytes) else value

    return {
        "name": text(meta.name),
        "description": text(meta.description),
        "version": text(meta.version),
        "author": text(meta.author),
        "license": text(meta.license),
        "min_parser_version": text(meta.minParserVersion),
        "color_space": image.content.contentProperties.colorSpace,
        "norm_mean": [float(v) for v in norm.mean],
        "norm_std": [float(v) for v in norm.std],
        "labels": labels,
    }


def make_ondevice(source: str | Path, out_path: str | Path, info: ModelInfo | None = None) -> Path:
    """Write the on-device file of ``source`` (a TFLite model with its sidecar) and its own sidecar.

    Labels and the version come from ``source``'s sidecar; the new sidecar is the source's with
    ``output: probabilities`` and the new hash, so our own CLI and the Lambda can load the file too.
    """
    from convert.metadata import read_sidecar, sidecar_path, verify_model_file

    source, out_path = Path(source), Path(out_path)
    meta = read_sidecar(source)
    verify_model_file(source, meta)
    if meta.get("output") != "logits":
        raise ConversionError(f"{source} does not output logits (its sidecar says {meta.get('output')!r}).")
    if info is None:
        created = str(meta.get("created", ""))[:10]
        info = ModelInfo(version=f"{meta['variant']} {meta['sha256'][:12]} {created}".strip())
    if not info.description:
        info = replace(info, description=describe_input(meta["input"].get("resize", DEFAULT_RESIZE)))
    model = add_metadata(append_softmax(source.read_bytes()), list(meta["labels"]), info)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(model)
    tmp.replace(out_path)
    side = dict(meta)
    side.update(
        output="probabilities",
        sha256=file_sha256(out_path),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        ondevice={
            "from": {"file": source.name, "sha256": meta["sha256"]},
            "softmax": "appended to the logits (SOFTMAX op)",
            "tflite_metadata": {k: v for k, v in read_metadata(model).items() if k != "labels"},
        },
    )
    side.pop("validation", None)  # the source's figures were measured on logits, not on this file
    sidecar_path(out_path).write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    return out_path


def build_variant(source: Path, output_dir: Path, keras_probs, pixels, targets, latency_runs: int):
    """The pipeline's step: write FILE_NAME from ``source``, validate it against Keras, benchmark it.

    Returns (report row, ValidationError or None). Its tolerance is its source variant's: the softmax
    op computes what our own softmax computes from the same logits.
    """
    from convert import report as reportmod
    from convert.errors import ValidationError
    from convert.metadata import read_sidecar, sidecar_path
    from convert.runners import load_runner, predict_all
    from convert.validate import check, compare, tolerance_for

    path = make_ondevice(source, Path(output_dir) / FILE_NAME)
    source_id = f"tflite-{read_sidecar(source)['variant']}"
    runner = load_runner(path)
    probs = predict_all(runner, pixels, progress=f"validate {ONDEVICE_ID}")  # already probabilities
    del runner
    result = compare(ONDEVICE_ID, probs, keras_probs, targets, tolerance_for(source_id))
    side = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    side["validation"] = result.to_dict()
    sidecar_path(path).write_text(json.dumps(side, indent=2) + "\n", encoding="utf-8")
    bench = reportmod.benchmark(path, pixels[0], runs=latency_runs)
    row = reportmod.variant_row(ONDEVICE_ID, path, result.to_dict(), bench)
    try:
        check(result)
    except ValidationError as exc:
        return row, exc
    return row, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert.ondevice", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a TFLite model with its sidecar (logits out)")
    parser.add_argument("output", type=Path, help="where to write the on-device .tflite (+ .json)")
    args = parser.parse_args(argv)
    try:
        path = make_ondevice(args.source, args.output)
        meta = read_metadata(path.read_bytes())
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {meta['name']} {meta['version']}, "
        f"{len(meta['labels'])} labels, softmax output"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole conversion run, in three steps a reader can hold in their head:

1. :func:`plan`: check the request and list the (format, variant) pairs, before minutes of work;
2. :func:`convert_variant`, once per pair: convert, validate against Keras, write the sidecar, benchmark;
3. :func:`report_and_install`: write the report, choose the variant to ship, install it.

:func:`run` loads what every variant shares (the Keras model, its labels, the evaluation images and the
Keras reference outputs, the calibration images) and calls the three in order.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from convert import data as datamod
from convert import install as installmod
from convert import report as reportmod
from convert import targets as targetsmod
from convert.errors import ConversionError, UnknownVariantError, ValidationError
from convert.metadata import calibration_facts, sha256_file, training_facts, write_sidecar
from convert.onnx import to_onnx_fp32, to_onnx_int8
from convert.runners import load_runner
from convert.savedmodel import (
    cached_keras_logits,
    export_saved_model,
    input_hw,
    load_keras_model,
    load_labels,
    load_resize,
    num_outputs,
)
from convert.tflite import to_tflite
from convert.validate import check, tolerance_for, validate
from convert.variants import EXTENSIONS, FORMATS, VARIANTS, file_stem, variant_id
from convert.variants import plan as plan_pairs
from lambda_function.classifier import softmax
from lambda_function.preprocess import DEFAULT_RESIZE

# 100 training images (stratified by class), no mirrored copies, plain min/max: the best int8
# validation accuracy measured (docs/conversion.md). More images made it worse: with min/max every
# extra image is a chance for an outlier to widen a range (300 samples: 79.5% vs 89.4%).
CALIBRATION_IMAGES = 100
CALIBRATION_FLIPS = False
EVAL_SPLIT = "test"
# Without a data directory, parity is checked on this many synthetic images (shape/wiring check).
SYNTHETIC_IMAGES = 8


@dataclass
class ConvertOptions:
    formats: tuple[str, ...] = FORMATS
    variants: tuple[str, ...] = VARIANTS["tflite"]
    data_dir: Path | None = None
    labels_path: Path | None = None
    calibration_images: int = CALIBRATION_IMAGES
    calibration_flips: bool = CALIBRATION_FLIPS
    validation_images: int | None = None  # None = the whole evaluation split
    eval_split: str = EVAL_SPLIT
    install: str = "no"  # "no", "auto", or a variant name (TFLite by default: "int8", "onnx-int8")
    target: str = targetsmod.DEFAULT_TARGET  # what "auto" chooses for (convert/targets.py)
    install_dir: Path = installmod.INSTALL_DIR
    int8_options: dict = field(default_factory=dict)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # overrides per variant id
    latency_runs: int = reportmod.LATENCY_RUNS
    ondevice: bool = True  # also write tflite_ondevice.tflite (convert.ondevice) from the installed variant


@dataclass
class Shared:
    """What every variant of one run is converted from and judged against."""

    model_path: Path
    labels: list[str]
    size: tuple[int, int]
    images: datamod.ImageSet  # the evaluation images (a real split, or synthetic ones)
    keras_probs: np.ndarray  # (N, classes): the Keras model's probabilities on ``images``
    targets: np.ndarray | None  # (N,) true classes, or None for synthetic images
    keras_accuracy: float | None
    representative: Callable | None = None  # calibration generator, when an int8 variant is planned
    calibration_info: dict = field(default_factory=dict)
    training: dict | None = None  # facts for the model card, from the training run's config.json
    resize: str = DEFAULT_RESIZE  # how the model's photos are made square (its sidecar's input.resize)
    calibration: dict | None = None  # the calibration layer's record, from the training run's metrics.json


@dataclass
class ConvertResult:
    rows: list[dict]
    models: dict[str, Path]
    failures: list[ValidationError]
    report: dict[str, Path]
    installed: Path | None = None
    # An ONNX choice also installs the target's best TFLite variant (the default build, the on-device file)
    installed_tflite: Path | None = None


def plan(options: ConvertOptions) -> list[tuple[str, str]]:
    """The (format, variant) pairs this run converts; raise before any work if the request is wrong."""
    known = {v for names in VARIANTS.values() for v in names}
    for fmt in options.formats:
        if fmt not in VARIANTS:
            raise UnknownVariantError(f"Unknown format {fmt!r}; choose from: {', '.join(FORMATS)}.")
    for variant in options.variants:
        if variant not in known:
            raise UnknownVariantError(
                f"Unknown variant {variant!r}; choose from: {', '.join(sorted(known))}."
            )
    pairs = plan_pairs(list(options.formats), list(options.variants))
    if not pairs:
        raise ConversionError("Nothing to convert: no requested variant exists in the requested formats.")
    targetsmod.check_target(options.target)  # like --install: fail before minutes of work
    if options.install not in ("no", "auto"):
        installmod.named_target(options.install, pairs)  # fail before minutes of work, not after
    return pairs


def load_shared(model, model_path: Path, output_dir: Path, options: ConvertOptions, int8: bool) -> Shared:
    """Labels, evaluation images, Keras reference outputs and (for int8) calibration images."""
    if int8 and not datamod.has_split(options.data_dir, datamod.CALIBRATION_SPLIT):
        raise ConversionError(
            "The int8 variants need calibration images: pass --data-dir with a train split."
        )
    labels = load_labels(options.labels_path or model_path.parent / "labels.json", num_outputs(model))
    size = input_hw(model)
    resize = load_resize(model_path)  # calibrate, validate and serve on the pixels it trained on
    training = training_facts(model_path)
    output_dir.mkdir(parents=True, exist_ok=True)

    if datamod.has_split(options.data_dir, options.eval_split):
        images = datamod.load_split(
            options.data_dir, options.eval_split, labels, size, options.validation_images, resize
        )
    else:
        images = datamod.synthetic_images(options.validation_images or SYNTHETIC_IMAGES, size)
    keras_probs = softmax(cached_keras_logits(model, sha256_file(model_path), images, output_dir))
    targets = images.targets if (images.targets >= 0).all() else None
    keras_accuracy = None if targets is None else float((keras_probs.argmax(-1) == targets).mean())
    shared = Shared(
        model_path,
        labels,
        size,
        images,
        keras_probs,
        targets,
        keras_accuracy,
        training=training,
        resize=resize,
        calibration=calibration_facts(model_path),
    )

    if int8:
        calibration = datamod.load_split(
            options.data_dir, datamod.CALIBRATION_SPLIT, labels, size, options.calibration_images, resize
        )
        shared.representative = datamod.calibration_batches(calibration, flips=options.calibration_flips)
        shared.calibration_info = {
            "calibration_images": len(calibration),
            "calibration_split": datamod.CALIBRATION_SPLIT,
            "calibration_flips": options.calibration_flips,
        }
    return shared


def convert_variant(
    fmt: str,
    variant: str,
    saved_model: Path,
    work: Path,
    shared: Shared,
    options: ConvertOptions,
    models: dict[str, Path],
    output_dir: Path,
) -> tuple[dict, Path, ValidationError | None]:
    """Convert one variant, validate it against Keras, write its sidecar, benchmark it.

    Returns its report row, its file, and its validation failure (None when it passed).
    """
    vid = variant_id(fmt, variant)
    path = output_dir / (file_stem(fmt, variant) + EXTENSIONS[fmt])
    tqdm.write(f"converting {vid} -> {path}")
    if fmt == "tflite":
        extra = options.int8_options if variant == "int8" else {}
        quantization = to_tflite(saved_model, path, variant, shared.representative, **extra)
    elif variant == "fp32":
        quantization = to_onnx_fp32(saved_model, path)
    else:
        fp32_path = models.get("onnx-fp32")
        if fp32_path is None:
            fp32_path = work / "onnx_fp32.onnx"
            to_onnx_fp32(saved_model, fp32_path)
        quantization = to_onnx_int8(fp32_path, path, shared.representative)
    if variant == "int8":
        quantization.update(shared.calibration_info)
    runner = load_runner(path)
    tolerance = options.tolerances.get(vid) or tolerance_for(vid)
    pixels, targets = shared.images.pixels, shared.targets
    result = validate(vid, runner, shared.keras_probs, pixels, targets, tolerance, raise_on_failure=False)
    del runner
    write_sidecar(
        path, fmt, variant, shared.labels, shared.size, shared.model_path, quantization, result.to_dict(),
        shared.training, shared.resize, shared.calibration,
    )  # fmt: skip
    bench = reportmod.benchmark(path, shared.images.pixels[0], runs=options.latency_runs)
    row = reportmod.variant_row(vid, path, result.to_dict(), bench)
    try:
        check(result)
    except ValidationError as exc:
        tqdm.write(f"  {exc}")
        return row, path, exc
    return row, path, None


def report_and_install(
    rows: list[dict],
    models: dict[str, Path],
    pairs: list[tuple[str, str]],
    shared: Shared,
    options: ConvertOptions,
    output_dir: Path,
    failures: list[ValidationError],
) -> tuple[dict[str, Path], Path | None, Path | None]:
    """Write report.{md,json,png}, choose the variant to ship (``--install``, for ``options.target``),
    install it and, for an ONNX choice, the TFLite variant ``companion_tflite`` names: the report's paths,
    the installed model's, the installed companion's (None: none).

    With ``options.ondevice`` the installed TFLite variant also gets its on-device twin (convert.ondevice),
    whose row joins the report and whose validation failure, if any, joins ``failures``.
    """
    extra = {
        "model": str(shared.model_path),
        "model_sha256": sha256_file(shared.model_path),
        "eval_split": options.eval_split if shared.targets is not None else "synthetic",
        "eval_images": len(shared.images),
        "keras_accuracy": shared.keras_accuracy,
        "latency": f"batch 1, 2 threads, median of {options.latency_runs} runs after warm-up",
    }
    choice, choice_error = None, None
    if options.install == "auto":
        try:
            choice = targetsmod.choose_for_target(rows, shared.keras_accuracy, options.target)["variant"]
        except ConversionError as exc:
            choice_error = exc
    elif options.install != "no":
        choice = installmod.named_target(options.install, pairs)
    tflite_choice = companion_tflite(choice, rows, shared, options)
    extra.update(target=options.target, install=choice, install_tflite=tflite_choice)
    if tflite_choice and options.ondevice:
        from convert import ondevice

        row, failure = ondevice.build_variant(
            models[tflite_choice],
            output_dir,
            shared.keras_probs,
            shared.images.pixels,
            shared.targets,
            options.latency_runs,
        )
        rows.append(row)
        if failure is not None:
            failures.append(failure)
    report_paths = reportmod.write_report(rows, output_dir, extra)
    if choice_error is not None:
        raise choice_error  # after the report, so the user can see why nothing qualified
    installed = installmod.install(models[choice], options.install_dir) if choice else None
    installed_tflite = None
    if tflite_choice and tflite_choice != choice:
        installed_tflite = installmod.install(models[tflite_choice], options.install_dir)
    return report_paths, installed, installed_tflite


def companion_tflite(
    choice: str | None, rows: list[dict], shared: Shared, options: ConvertOptions
) -> str | None:
    """The TFLite variant installed with ``choice``: itself, or for an ONNX choice the target's best
    TFLite one (None if none qualifies), so both bundled models come from the same training output."""
    if choice is None or choice.startswith("tflite-"):
        return choice
    try:
        chosen = targetsmod.choose_for_target(
            rows, shared.keras_accuracy, options.target, formats=("tflite",)
        )
        return chosen["variant"]
    except ConversionError as exc:
        tqdm.write(f"no TFLite variant installed beside {choice}: {exc}")
        return None


def run(
    model_path: str | Path, output_dir: str | Path, options: ConvertOptions | None = None
) -> ConvertResult:
    """Convert ``model_path`` to every requested variant in ``output_dir``; see ConvertOptions."""
    options = options or ConvertOptions()
    model_path, output_dir = Path(model_path), Path(output_dir)
    pairs = plan(options)
    model = load_keras_model(model_path)
    int8 = any(variant == "int8" for _, variant in pairs)
    shared = load_shared(model, model_path, output_dir, options, int8)

    rows = [reportmod.keras_row(model_path, shared.keras_accuracy)]
    models: dict[str, Path] = {}
    failures: list[ValidationError] = []
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".work-") as work:
        saved_model = export_saved_model(model, Path(work) / "saved_model")
        for fmt, variant in tqdm(pairs, desc="variants", unit="variant"):
            row, path, failure = convert_variant(
                fmt, variant, saved_model, Path(work), shared, options, models, output_dir
            )
            rows.append(row)
            models[variant_id(fmt, variant)] = path
            if failure is not None:
                failures.append(failure)
        shutil.rmtree(saved_model, ignore_errors=True)

    report_paths, *installed = report_and_install(rows, models, pairs, shared, options, output_dir, failures)
    return ConvertResult(rows, models, failures, report_paths, *installed)

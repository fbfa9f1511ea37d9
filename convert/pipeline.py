"""The whole conversion run: load, export, convert every variant, validate, benchmark, report, install."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from convert import data as datamod
from convert import report as reportmod
from convert.errors import ConversionError, UnknownVariantError, ValidationError
from convert.metadata import sha256_file, write_sidecar
from convert.onnx import to_onnx_fp32, to_onnx_int8
from convert.runners import load_runner
from convert.savedmodel import (
    cached_keras_logits,
    export_saved_model,
    input_hw,
    load_keras_model,
    load_labels,
    num_outputs,
)
from convert.tflite import to_tflite
from convert.validate import check, tolerance_for, validate
from convert.variants import EXTENSIONS, FORMATS, VARIANTS, file_stem, plan, variant_id
from lambda_function.classifier import softmax

# 100 training images (stratified by class), no mirrored copies, plain min/max: the best int8
# validation accuracy measured (int8_findings.md). More images made it worse: with min/max every
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
    install: str = "no"  # "no", "auto", or a TFLite variant name
    install_dir: Path = reportmod.INSTALL_DIR
    int8_options: dict = field(default_factory=dict)
    tolerances: dict[str, dict[str, float]] = field(default_factory=dict)  # overrides per variant id
    latency_runs: int = reportmod.LATENCY_RUNS
    ondevice: bool = True  # also write tflite_ondevice.tflite (convert.ondevice) from the installed variant


@dataclass
class ConvertResult:
    rows: list[dict]
    models: dict[str, Path]
    failures: list[ValidationError]
    report: dict[str, Path]
    installed: Path | None = None


def run(
    model_path: str | Path, output_dir: str | Path, options: ConvertOptions | None = None
) -> ConvertResult:
    """Convert ``model_path`` to every requested variant in ``output_dir``; see ConvertOptions."""
    options = options or ConvertOptions()
    model_path, output_dir = Path(model_path), Path(output_dir)
    known = {v for names in VARIANTS.values() for v in names}
    for fmt in options.formats:
        if fmt not in VARIANTS:
            raise UnknownVariantError(f"Unknown format {fmt!r}; choose from: {', '.join(FORMATS)}.")
    for variant in options.variants:
        if variant not in known:
            raise UnknownVariantError(
                f"Unknown variant {variant!r}; choose from: {', '.join(sorted(known))}."
            )
    pairs = plan(list(options.formats), list(options.variants))
    if not pairs:
        raise ConversionError("Nothing to convert: no requested variant exists in the requested formats.")
    if options.install not in ("no", "auto"):
        _install_target(options.install, pairs)  # fail before minutes of work, not after
    model = load_keras_model(model_path)
    needs_calibration = any(variant == "int8" for _, variant in pairs)
    if needs_calibration and not datamod.has_split(options.data_dir, datamod.CALIBRATION_SPLIT):
        raise ConversionError(
            "The int8 variants need calibration images: pass --data-dir with a train split."
        )
    labels = load_labels(options.labels_path or model_path.parent / "labels.json", num_outputs(model))
    size = input_hw(model)
    output_dir.mkdir(parents=True, exist_ok=True)

    if datamod.has_split(options.data_dir, options.eval_split):
        images = datamod.load_split(
            options.data_dir, options.eval_split, labels, size, options.validation_images
        )
    else:
        images = datamod.synthetic_images(options.validation_images or SYNTHETIC_IMAGES, size)
    keras_probs = softmax(cached_keras_logits(model, sha256_file(model_path), images, output_dir))
    targets = images.targets if (images.targets >= 0).all() else None
    keras_accuracy = None if targets is None else float((keras_probs.argmax(-1) == targets).mean())

    representative = None
    if needs_calibration:
        calibration = datamod.load_split(
            options.data_dir, datamod.CALIBRATION_SPLIT, labels, size, options.calibration_images
        )
        representative = datamod.calibration_batches(calibration, flips=options.calibration_flips)
        calibration_info = {
            "calibration_images": len(calibration),
            "calibration_split": datamod.CALIBRATION_SPLIT,
            "calibration_flips": options.calibration_flips,
        }

    rows = [reportmod.keras_row(model_path, keras_accuracy)]
    models: dict[str, Path] = {}
    failures: list[ValidationError] = []
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".work-") as work:
        saved_model = export_saved_model(model, Path(work) / "saved_model")
        for fmt, variant in tqdm(pairs, desc="variants", unit="variant"):
            vid = variant_id(fmt, variant)
            path = output_dir / (file_stem(fmt, variant) + EXTENSIONS[fmt])
            tqdm.write(f"converting {vid} -> {path}")
            if fmt == "tflite":
                extra = options.int8_options if variant == "int8" else {}
                quantization = to_tflite(saved_model, path, variant, representative, **extra)
            elif variant == "fp32":
                quantization = to_onnx_fp32(saved_model, path)
            else:
                fp32_path = models.get("onnx-fp32")
                if fp32_path is None:
                    fp32_path = Path(work) / "onnx_fp32.onnx"
                    to_onnx_fp32(saved_model, fp32_path)
                quantization = to_onnx_int8(fp32_path, path, representative)
            if variant == "int8":
                quantization.update(calibration_info)
            runner = load_runner(path)
            tolerance = options.tolerances.get(vid) or tolerance_for(vid)
            result = validate(
                vid, runner, keras_probs, images.pixels, targets, tolerance, raise_on_failure=False
            )
            del runner
            write_sidecar(path, fmt, variant, labels, size, model_path, quantization, result.to_dict())
            bench = reportmod.benchmark(path, images.pixels[0], runs=options.latency_runs)
            rows.append(reportmod.variant_row(vid, path, result.to_dict(), bench))
            models[vid] = path
            try:
                check(result)
            except ValidationError as exc:
                tqdm.write(f"  {exc}")
                failures.append(exc)
        shutil.rmtree(saved_model, ignore_errors=True)

    extra = {
        "model": str(model_path),
        "model_sha256": sha256_file(model_path),
        "eval_split": options.eval_split if targets is not None else "synthetic",
        "eval_images": len(images),
        "keras_accuracy": keras_accuracy,
        "latency": f"batch 1, 2 threads, median of {options.latency_runs} runs after warm-up",
    }
    choice, choice_error = None, None
    if options.install == "auto":
        try:
            choice = reportmod.choose_variant(rows, keras_accuracy)["variant"]
        except ConversionError as exc:
            choice_error = exc
    elif options.install != "no":
        choice = _install_target(options.install, pairs)
    extra["install"] = choice
    if choice and options.ondevice:
        from convert import ondevice

        row, failure = ondevice.build_variant(
            models[choice], output_dir, keras_probs, images.pixels, targets, options.latency_runs
        )
        rows.append(row)
        failures += [failure] if failure else []
    report_paths = reportmod.write_report(rows, output_dir, extra)
    if choice_error is not None:
        raise choice_error
    installed = reportmod.install(models[choice], options.install_dir) if choice else None
    return ConvertResult(rows, models, failures, report_paths, installed)


def _install_target(name: str, pairs: list[tuple[str, str]]) -> str:
    vid = name if name.startswith("tflite-") else f"tflite-{name}"
    if vid not in {variant_id(fmt, v) for fmt, v in pairs}:
        raise ConversionError(
            f"--install {name}: only a TFLite variant converted in this run can be installed "
            f"({', '.join(variant_id(f, v) for f, v in pairs if f == 'tflite') or 'none'})."
        )
    return vid

"""``python -m convert MODEL.keras --output-dir DIR [...]``: a thin CLI over convert.pipeline.run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convert.errors import ConversionError
from convert.install import INSTALL_DIR
from convert.pipeline import CALIBRATION_IMAGES, EVAL_SPLIT, ConvertOptions, run
from convert.targets import DEFAULT_TARGET, TARGETS
from convert.variants import parse_formats, parse_quantize

DEFAULT_OUTPUT_DIR = "artifacts/convert"
DEFAULT_FORMATS = "tflite,onnx"
DEFAULT_QUANTIZE = "none,float16,dynamic,int8"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    parser.add_argument("model", type=Path, help="trained model (.keras), labels.json next to it")
    parser.add_argument("--output-dir", type=Path, default=Path(DEFAULT_OUTPUT_DIR))
    parser.add_argument("--formats", default=DEFAULT_FORMATS, help="comma list of: tflite, onnx")
    parser.add_argument(
        "--quantize", default=DEFAULT_QUANTIZE, help="comma list of: none (fp32), float16, dynamic, int8"
    )
    parser.add_argument("--data-dir", type=Path, help="DIR/{train,validation,test}/<class>/*.jpg")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"training images for int8 calibration, stratified by class (default {CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--calibration-flips", action="store_true", help="also calibrate on mirrored copies (off by default)"
    )
    parser.add_argument(
        "--validation-images", type=int, help="images for parity and accuracy (default: the whole split)"
    )
    parser.add_argument(
        "--eval-split",
        default=EVAL_SPLIT,
        help="split for parity and accuracy (tune on 'validation', report 'test'; default test)",
    )
    parser.add_argument("--labels", type=Path, help="labels.json (default: next to the model)")
    parser.add_argument(
        "--install",
        default="no",
        help="no | auto (the variant --target's rule chooses, within 1 point of Keras, at most 25 MB) | "
        "a variant (int8, onnx-int8, ...)",
    )
    parser.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default=DEFAULT_TARGET,
        help="where the model will run, for --install auto: host (fastest TFLite variant timed here, the "
        "default), lambda-x86_64 / lambda-arm64 / device (ranked by the measured table in "
        "convert/targets.py, the same on every build machine; docs/conversion.md)",
    )
    parser.add_argument("--install-dir", type=Path, default=INSTALL_DIR, help=argparse.SUPPRESS)
    parser.add_argument(
        "--int8-options",
        default="{}",
        help='JSON overrides for the TFLite int8 converter, e.g. \'{"denylisted_ops": ["FULLY_CONNECTED"]}\'',
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.calibration_images < 1:
            raise ConversionError("--calibration-images must be at least 1.")
        if args.validation_images is not None and args.validation_images < 1:
            raise ConversionError("--validation-images must be at least 1.")
        try:
            int8_options = json.loads(args.int8_options)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"--int8-options is not valid JSON: {exc}") from None
        if not isinstance(int8_options, dict):
            raise ConversionError("--int8-options must be a JSON object.")
        options = ConvertOptions(
            formats=tuple(parse_formats(args.formats)),
            variants=tuple(parse_quantize(args.quantize)),
            data_dir=args.data_dir,
            labels_path=args.labels,
            calibration_images=args.calibration_images,
            calibration_flips=args.calibration_flips,
            validation_images=args.validation_images,
            eval_split=args.eval_split,
            install=args.install,
            target=args.target,
            install_dir=args.install_dir,
            int8_options=int8_options,
        )
        result = run(args.model, args.output_dir, options)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.report["md"].read_text(encoding="utf-8"))
    print(f"report: {result.report['md']}, {result.report['json']}, {result.report['png']}")
    if result.installed:
        print(f"installed: {result.installed}")
    if result.installed_tflite:
        print(f"installed: {result.installed_tflite} (the TFLite build's model)")
    if result.installed and result.installed.suffix == ".onnx":
        print("serve it with: make build BACKEND=onnx (the default build serves the TFLite model)")
    if result.failures:
        for failure in result.failures:
            print(f"error: {failure}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

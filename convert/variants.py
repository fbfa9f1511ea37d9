"""Names of the variants this package produces, and their parsing from the CLI."""

from __future__ import annotations

from convert.errors import UnknownVariantError

FORMATS = ("tflite", "onnx")
# Per format, the variants in report order. ONNX has no float16/dynamic here: onnxruntime's CPU
# kernels would run float16 slower than fp32, and its dynamic quantization does not cover convolutions.
VARIANTS = {
    "tflite": ("fp32", "float16", "dynamic", "int8"),
    "onnx": ("fp32", "int8"),
}
# CLI spelling -> sidecar spelling ("none" is the CLI's word for the unquantized fp32 model).
QUANTIZE_ALIASES = {
    "none": "fp32",
    "fp32": "fp32",
    "float16": "float16",
    "dynamic": "dynamic",
    "int8": "int8",
}
EXTENSIONS = {"tflite": ".tflite", "onnx": ".onnx"}


def variant_id(fmt: str, variant: str) -> str:
    """``tflite-int8``: the key used in tolerances, reports and file names."""
    return f"{fmt}-{variant}"


def file_stem(fmt: str, variant: str) -> str:
    # The format is in the stem because NAME.tflite and NAME.onnx would otherwise share NAME.json.
    return f"{fmt}_{variant}"


def parse_formats(text: str) -> list[str]:
    formats = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not formats:
        raise UnknownVariantError("No format given; choose from: " + ", ".join(FORMATS) + ".")
    for fmt in formats:
        if fmt not in FORMATS:
            raise UnknownVariantError(f"Unknown format {fmt!r}; choose from: {', '.join(FORMATS)}.")
    return list(dict.fromkeys(formats))


def parse_quantize(text: str) -> list[str]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise UnknownVariantError("No quantization variant given; choose from: none, float16, dynamic, int8.")
    variants = []
    for name in names:
        if name not in QUANTIZE_ALIASES:
            raise UnknownVariantError(
                f"Unknown quantization variant {name!r}; choose from: none, float16, dynamic, int8."
            )
        variants.append(QUANTIZE_ALIASES[name])
    return list(dict.fromkeys(variants))


def plan(formats: list[str], variants: list[str]) -> list[tuple[str, str]]:
    """(format, variant) pairs to build; a variant a format does not have is skipped, not an error."""
    return [(fmt, v) for fmt in formats for v in VARIANTS[fmt] if v in variants]


def check_variant(fmt: str, variant: str) -> None:
    if fmt not in VARIANTS:
        raise UnknownVariantError(f"Unknown format {fmt!r}; choose from: {', '.join(FORMATS)}.")
    if variant not in VARIANTS[fmt]:
        raise UnknownVariantError(
            f"Unknown {fmt} variant {variant!r}; choose from: {', '.join(VARIANTS[fmt])}."
        )

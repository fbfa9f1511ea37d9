"""``python -m train``: a thin CLI over :class:`train.config.TrainConfig` and :func:`train.trainer.train`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lambda_function.preprocess import RESIZE_MODES
from train.config import TrainConfig, field_help

# How each annotation (a string, under ``from __future__ import annotations``) is parsed from the CLI.
_PARSERS = {"Path": Path, "Path | None": Path, "str": str, "int": int, "int | None": int, "float": float}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train the clothing classifier: frozen Xception features (cached) + a small head. "
        "Writes model.keras, labels.json, config.json, history.json, metrics.json and PNGs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    helps = field_help()
    for f in dataclasses.fields(TrainConfig):
        if not f.init:
            continue
        kwargs: dict = {"default": f.default, "help": helps.get(f.name, "")}
        if f.type == "bool":  # --standardize / --no-standardize
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _PARSERS[f.type]
        if f.name == "feature_backend":
            kwargs["choices"] = ("litert", "keras")
        if f.name == "resize":
            kwargs["choices"] = RESIZE_MODES
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = TrainConfig(**vars(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Imported after parsing so that --help and argument errors answer without loading TensorFlow.
    from train.data import DataError
    from train.features import WeightsError
    from train.trainer import train

    try:
        train(config)
    except (DataError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

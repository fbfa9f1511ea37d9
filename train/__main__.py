"""``python -m train``: a thin CLI over :class:`train.config.TrainConfig` and :func:`train.trainer.train`.

Every option is generated from a TrainConfig field: its name, its type (``X | None`` takes an X), its
default and its ``help`` / ``choices`` metadata (``train.config.option``), so the CLI cannot drift from
the config. Expected failures (``train.errors.TrainError``) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from train.config import TrainConfig
from train.errors import TrainError


def cli_type(annotation) -> type:
    """The type argparse converts a value to: ``int | None`` -> int, ``Path`` -> Path."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return inner
    return annotation


def build_parser(config_class: type = TrainConfig) -> argparse.ArgumentParser:
    """One ``--option`` per init field of ``config_class`` (a dataclass of ``train.config.option`` fields)."""
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train the clothing classifier: frozen Xception features (cached) + a small head. "
        "Writes model.keras, labels.json, config.json, history.json, metrics.json and PNGs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(config_class)  # real types, not the strings of `from __future__`
    for f in dataclasses.fields(config_class):
        if not f.init:
            continue
        kwargs: dict = {"default": f.default, "help": f.metadata["help"], **f.metadata.get("cli", {})}
        kind = cli_type(hints[f.name])
        if kind is bool:  # --standardize / --no-standardize
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
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
    from train.trainer import train

    try:
        train(config)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

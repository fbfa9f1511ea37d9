"""Typed errors of the conversion package. The CLI prints their message and exits 2, no traceback."""

from __future__ import annotations

from train.errors import DataError as DatasetError


class ConversionError(Exception):
    """Base class: anything the user can fix (a path, an option, a tolerance)."""


class ModelLoadError(ConversionError):
    """The model file is missing, is not a Keras model, or its labels are missing or inconsistent."""


class UnknownVariantError(ConversionError):
    """A format or quantization variant that this package does not produce."""


class DataError(ConversionError, DatasetError):
    """The data directory or a split inside it is missing, empty or inconsistent with the labels.

    A training DataError too: both come from the one dataset listing (train/data.py).
    """


class SidecarError(ConversionError):
    """A metadata sidecar is missing, unreadable or does not follow the schema."""


class ValidationError(ConversionError):
    """An exported variant disagrees with the Keras model by more than the variant's named tolerance."""

    def __init__(self, variant: str, metric: str, value: float, tolerance: float):
        self.variant = variant
        self.metric = metric
        self.value = value
        self.tolerance = tolerance
        bound = "at least" if metric in ("top1_agreement", "output_shape_match") else "at most"
        super().__init__(
            f"Validation of {variant} failed: {metric} = {value:.6g}, the tolerance is {bound} "
            f"{tolerance:.6g}."
        )

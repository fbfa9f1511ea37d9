"""Training's expected failures: each is something the user can fix, so the CLIs (``python -m train``,
``train.evaluate``, ``studies.choose_blocks``) print its one-line message and exit 2, without a traceback.
Anything else is a bug and keeps its traceback. Pure Python: importing this loads nothing heavy.
"""

from __future__ import annotations


class TrainError(Exception):
    """Base class of the expected failures; the message says what to fix."""


class DataError(TrainError):
    """The dataset on disk cannot be used: a missing split, an empty class, mismatched classes."""


class WeightsError(TrainError):
    """The base's weights could not be loaded (no download possible, missing or incompatible file)."""


class AssemblyError(TrainError):
    """The saved full model disagrees with head(cached features): the cache belongs to another extractor."""


class RunConfigError(TrainError):
    """A training run's config.json (next to its model.keras) is unreadable or names an unknown option."""


class BackendError(TrainError):
    """The Keras backend in use cannot run what the options ask (LiteRT extraction needs TensorFlow)."""

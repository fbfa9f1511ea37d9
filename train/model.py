"""The classification head (the one the seed recipe meant) and the self-contained full model."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers


def build_head(
    num_features: int,
    num_classes: int,
    dense_units: int = 100,
    dropout: float = 0.5,
    seed: int = 42,
    standardize_on: np.ndarray | None = None,
) -> keras.Model:
    """pooled features [-> standardize] -> Dense(dense_units, relu) -> Dropout -> Dense(num_classes) logits.

    The seed recipe built Dense(100) and Dropout but connected its output layer straight to the pooled
    features, so they did nothing; here they sit in the path. ``dense_units=0`` gives dropout + linear.

    ``standardize_on`` (the training features) adds a Normalization layer fitted to their per-feature mean
    and variance: pooled middle-flow blocks carry Xception's residual stream, whose values are tens of
    times larger than block 14's, and without it the head trained on blocks 11-14 collapsed to 53%.
    """
    inputs = keras.Input((num_features,), dtype="float32", name="features")
    x = inputs
    if standardize_on is not None:
        standardize = layers.Normalization(name="standardize")
        standardize.adapt(standardize_on)
        x = standardize(x)
    if dense_units > 0:
        x = layers.Dense(dense_units, activation="relu", name="hidden")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, seed=seed, name="dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)  # no softmax: the runtime applies it
    return keras.Model(inputs, logits, name="head")


def build_full_model(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """pixels (H, W, 3) float 0-255 -> logits, sharing the extractor's and the head's (trained) layers.

    The head's layers are applied directly to the pooled output, so the saved model reads
    Input -> Rescaling -> xception -> pool -> hidden -> dropout -> logits, with nothing nested but the base.
    """
    x = extractor.output
    for layer in head.layers[1:]:  # layers[0] is the head's InputLayer
        x = layer(x)
    return keras.Model(extractor.input, x, name="clothing_classifier")

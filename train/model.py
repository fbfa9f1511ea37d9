"""The classification head (one, or an ensemble of several), its calibration, and the self-contained model."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from train.calibration import TOP_LABEL_MARGIN, Calibrator


def signed_sqrt_of(features: np.ndarray) -> np.ndarray:
    """Power normalization, sign(x) sqrt(|x|), in numpy: what :class:`SignedSqrt` does in the graph, for
    fitting the standardization on the features the heads will see. C order and the input's dtype."""
    features = np.asarray(features)
    out = np.sqrt(np.maximum(features, 0)) - np.sqrt(np.maximum(-features, 0))
    return np.ascontiguousarray(out, dtype=features.dtype)


@keras.saving.register_keras_serializable(package="edge_clothing_classifier")
class SignedSqrt(layers.Layer):
    """sign(x) sqrt(|x|) of every pooled feature (power normalization; ``--signed-sqrt``). Pooled activations
    are heavy-tailed: a few channels fire hard on one photo's background or light, and the square root
    shrinks those bursts more than the common values. Written as sqrt(relu(x)) - sqrt(relu(-x)): plain
    ops in TFLite and ONNX, exact at 0 and in float16, where x / sqrt(|x| + eps) would need an eps that
    float16 flushes to zero."""

    def call(self, features):
        ops = keras.ops
        return ops.sqrt(ops.relu(features)) - ops.sqrt(ops.relu(-features))

    def compute_output_shape(self, input_shape):
        return input_shape


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
    head = HeadLayers(num_features, num_classes, (seed,), dense_units, dropout, standardize_on)
    return head.training_model()


class HeadLayers:
    """The layers of ``len(seeds)`` heads on the same pooled features, built once and applied wherever
    they are needed: to a features input for training, to the extractor's output in the saved model.

    features [-> signed sqrt] [-> standardize] -> per seed: Dense(dense_units, relu) -> Dropout ->
    Dense(classes) logits; the heads' logits are averaged (the ensemble: a geometric mean of their
    probabilities), then the calibration map, when one is set (train/calibration.py), gives the model's
    output logits. Each head has its own seeded initialisation and dropout; they train side by side, each on
    its own loss (:meth:`training_model`), so they are as independent as separately trained heads, for
    the price of one training loop. A single head keeps the layer names of the one-head recipe.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        seeds: tuple[int, ...],
        dense_units: int = 100,
        dropout: float = 0.5,
        standardize_on: np.ndarray | None = None,
        signed_sqrt: bool = False,
    ):
        if not seeds:
            raise ValueError("an ensemble needs at least one head")
        self.num_features, self.num_classes = num_features, num_classes
        self.power = SignedSqrt(name="signed_sqrt") if signed_sqrt else None
        self.standardize = None
        if standardize_on is not None:
            self.standardize = layers.Normalization(name="standardize")
            # Fitted on what it will see: the features after the square root, when the heads take one.
            self.standardize.adapt(signed_sqrt_of(standardize_on) if signed_sqrt else standardize_on)
        self.heads = [self._head(i, seed, len(seeds), dense_units, dropout) for i, seed in enumerate(seeds)]
        self.calibration: layers.Layer | None = None
        self.calibrator = Calibrator()

    def _head(self, index: int, seed: int, count: int, dense_units: int, dropout: float) -> list:
        suffix = "" if count == 1 else f"_{index + 1}"
        chain = []
        if dense_units > 0:
            chain.append(
                layers.Dense(
                    dense_units,
                    activation="relu",
                    kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                    name="hidden" + suffix,
                )
            )
        if dropout > 0:
            chain.append(layers.Dropout(dropout, seed=seed, name="dropout" + suffix))
        # No softmax: the runtime applies it.
        chain.append(
            layers.Dense(
                self.num_classes,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1_000_000),
                name="logits" + suffix,
            )
        )
        return chain

    def each(self, features) -> list:
        """Every head's logits for a features tensor."""
        x = self.power(features) if self.power is not None else features
        x = self.standardize(x) if self.standardize is not None else x
        outputs = []
        for chain in self.heads:
            y = x
            for layer in chain:
                y = layer(y)
            outputs.append(y)
        return outputs

    def mean(self, features):
        """The ensemble's logits (before calibration)."""
        outputs = self.each(features)
        return outputs[0] if len(outputs) == 1 else layers.Average(name="ensemble")(outputs)

    def __call__(self, features):
        """The output logits: the ensemble's, through the calibration map when one is set."""
        logits = self.mean(features)
        return self.calibration(logits) if self.calibration is not None else logits

    def training_model(self) -> keras.Model:
        """features -> each head's logits (one output per head, each trained on its own loss)."""
        inputs = keras.Input((self.num_features,), dtype="float32", name="features")
        outputs = self.each(inputs)
        return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name="head")

    def model(self) -> keras.Model:
        """features -> output logits (the ensemble, calibrated when a map is set)."""
        inputs = keras.Input((self.num_features,), dtype="float32", name="features")
        return keras.Model(inputs, self(inputs), name="head")

    def set_calibration(self, calibrator: Calibrator) -> None:
        """Put ``calibrator`` in the graph: a Rescaling layer for temperature and vector scaling (a multiply
        and an add, which every converter keeps in float), a fixed Dense layer for matrix scaling, a
        :class:`TopLabelCalibration` layer for the top-label map."""
        self.calibrator = calibrator
        if calibrator.method == "none":
            self.calibration = None
        elif calibrator.method == "top-label":
            self.calibration = TopLabelCalibration(
                float(calibrator.scale), float(calibrator.offset), name="calibration"
            )
        elif calibrator.matrix is not None:
            dense = layers.Dense(self.num_classes, trainable=False, name="calibration")
            dense.build((None, self.num_classes))
            dense.set_weights(
                [np.asarray(calibrator.matrix, np.float32).T, np.asarray(calibrator.offset, np.float32)]
            )
            self.calibration = dense
        else:
            self.calibration = layers.Rescaling(
                _plain(calibrator.scale), offset=_plain(calibrator.offset), name="calibration"
            )


@keras.saving.register_keras_serializable(package="edge_clothing_classifier")
class TopLabelCalibration(layers.Layer):
    """logits -> logits whose softmax gives the top class sigmoid(slope * s + offset), s being its T = 1
    log-odds, and every other class its old share of the rest; the top logit never falls under the
    runner-up's, so the answer is the model's. ``train.calibration.top_label`` is the same map in numpy.

    Built from max, min, a comparison, exp, sum and log, which TFLite and ONNX have as plain ops (no custom
    op); loading a saved model needs this module imported, which registers the class.
    """

    def __init__(self, slope: float, offset: float, **kwargs):
        super().__init__(**kwargs)
        self.slope, self.offset = float(slope), float(offset)

    def call(self, logits):
        ops = keras.ops
        top = ops.max(logits, axis=-1, keepdims=True)
        # A comparison, not one_hot(argmax): Keras's argmax brings a BitwiseAnd that TFLite lacks.
        is_top = ops.cast(ops.greater_equal(logits, top), logits.dtype)
        rest = 1.0 - is_top
        bottom = ops.min(logits, axis=-1, keepdims=True)
        runner_up = ops.max(logits - is_top * (top - bottom), axis=-1, keepdims=True)
        # Relative to the runner-up, whose own term is 1: no underflow to log(0) in float32 or float16.
        spread = ops.log(
            ops.maximum(ops.sum(ops.exp((logits - runner_up) * rest) * rest, axis=-1, keepdims=True), 1.0)
        )
        log_rest = runner_up - top + spread
        odds = ops.maximum(self.offset - self.slope * log_rest, TOP_LABEL_MARGIN - spread)
        return logits + is_top * (top + log_rest + odds - logits)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "slope": self.slope, "offset": self.offset}


def _plain(value):
    """A float, or a list of floats for a per-class vector (what Rescaling serialises cleanly)."""
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else [float(v) for v in array]


def build_full_model(extractor: keras.Model, head: keras.Model | HeadLayers) -> keras.Model:
    """pixels (H, W, 3) float 0-255 -> logits, sharing the extractor's and the head's (trained) layers.

    The head's layers are applied directly to the pooled output, so the saved model reads
    Input -> Rescaling -> xception -> pool -> standardize -> heads -> ensemble -> calibration, with nothing
    nested but the base. ``head`` is a HeadLayers, or a one-head chain from :func:`build_head`.
    """
    if isinstance(head, HeadLayers):
        return keras.Model(extractor.input, head(extractor.output), name="clothing_classifier")
    x = extractor.output
    for layer in head.layers[1:]:  # layers[0] is the head's InputLayer
        x = layer(x)
    return keras.Model(extractor.input, x, name="clothing_classifier")

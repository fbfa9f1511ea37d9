"""Block 14 on cached block-13 maps: the features of the recipe, and block 14 fine-tuned on a CPU.

Blocks 1-13 of the frozen base are a fixed function of the photo (BatchNorm in inference mode), so one
forward pass per photo caches the pooled outputs of the blocks before 13 and the whole output map of
block 13 (11x11x1024 at 352 px; train's kept in float16). Block 14 then runs on the cached map (the "tail":
about 6 ms per photo on 2 cores, against ~130 ms for the whole base), which makes two things cheap:

- the recipe's features (pooled blocks 11-14) come from tail(cached maps), and stay right when block 14
  changes, with no second pass of the base;
- block 14 itself (4.8 M weights, its BatchNorm frozen) can be fine-tuned together with a head on the
  train split, ~1 min per epoch here (docs/lab/calibration.md). The tail shares its layers with the
  exported model's base, so the tuned weights are the ones that ship.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from train.config import LAST_BLOCK

MAP_BLOCK = 13  # cached whole; block 14 runs on it
TAIL_BATCH = 64


@dataclass
class Maps:
    """One split as the cache holds it: pooled blocks before 13, block 13's map, labels."""

    pooled: np.ndarray  # (N, width of the pooled blocks before 13) float32; width 0 when none
    maps: np.ndarray  # (N, h, w, c); float16 for train: half the memory (0.76 GB at 352 px)
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, rows) -> list[np.ndarray]:
        """The tail's inputs for ``rows`` (an index array or a slice)."""
        maps = self.maps[rows].astype(np.float32)
        return [maps, self.pooled[rows]] if self.pooled.shape[1] else [maps]

    def features(self, tail: keras.Model, batch: int = TAIL_BATCH) -> np.ndarray:
        """The pooled features (block 14 through ``tail``'s current weights), float32 (N, width)."""
        parts = [
            np.asarray(tail(self.inputs(slice(i, i + batch)), training=False))
            for i in range(0, len(self), batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, int(tail.output.shape[-1])), np.float32)

    def take(self, rows: np.ndarray) -> Maps:
        return Maps(self.pooled[rows], self.maps[rows], self.labels[rows])


def concat_maps(parts: list[Maps]) -> Maps:
    return Maps(
        np.concatenate([p.pooled for p in parts]),
        np.concatenate([p.maps for p in parts]),
        np.concatenate([p.labels for p in parts]),
    )


def blocks_before_map(blocks: tuple[int, ...]) -> tuple[int, ...]:
    """The pooled blocks that the extraction pass itself pools (those before block 13)."""
    return tuple(b for b in blocks if b < MAP_BLOCK)


def block_layers(base: keras.Model, block: int) -> list:
    """Xception block ``block``'s layers in ``base``, in order (block 14 is a plain chain: sepconv, BN,
    relu, sepconv, BN, relu). Xception names its layers ``block14_...``."""
    found = [layer for layer in base.layers if layer.name.startswith(f"block{block}_")]
    if not found:
        raise ValueError(f"no layer of block {block} in {base.name}")
    return found


def build_tail(layers14: list, map_shape: tuple[int, ...], pooled_width: int, blocks: tuple[int, ...]):
    """[block 13 map, (pooled earlier blocks)] -> the pooled ``blocks`` in block order, block 14 run
    through ``layers14`` (shared, so training them trains the model that owns them)."""
    if LAST_BLOCK not in blocks:
        raise ValueError(f"the recipe pools block {LAST_BLOCK}; got blocks {blocks}")
    maps = keras.Input(map_shape, name="block13_map")
    inputs = [maps]
    parts = []
    if pooled_width:
        pooled = keras.Input((pooled_width,), name="pooled_before_13")
        inputs.append(pooled)
        parts.append(pooled)
    if MAP_BLOCK in blocks:
        parts.append(layers.GlobalAveragePooling2D(name="pool_block13")(maps))
    x = maps
    for layer in layers14:
        x = layer(x)
    parts.append(layers.GlobalAveragePooling2D(name="pool_block14")(x))
    features = parts[0] if len(parts) == 1 else layers.Concatenate(name="features")(parts)
    return keras.Model(inputs, features, name="block14_tail")


class MapBatches:
    """Shuffled (tail inputs, one-hot) batches: float32 maps of all of train would take twice the cache."""

    def __init__(self, data: Maps, num_classes: int, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.targets = keras.utils.to_categorical(data.labels, num_classes)
        self.rng = np.random.default_rng(seed)

    def epoch(self):
        order = self.rng.permutation(len(self.data))
        for start in range(0, len(order), self.batch_size):
            rows = np.sort(order[start : start + self.batch_size])
            yield self.data.inputs(rows), self.targets[rows]


def trainable_block(layers14: list, trainable: bool) -> None:
    """Open (or close) block 14's convolutions; its BatchNorm never: batches of 32 would replace
    ImageNet's statistics (a BatchNormalization layer that is not trainable runs in inference mode)."""
    for layer in layers14:
        layer.trainable = (
            trainable and bool(layer.weights) and not isinstance(layer, layers.BatchNormalization)
        )


def weights_of(layers14: list, convolutions: bool) -> list:
    """Block 14's convolution kernels (``convolutions``) or its BatchNorm weights and statistics."""
    return [
        v
        for layer in layers14
        if isinstance(layer, layers.BatchNormalization) != convolutions
        for v in layer.weights
    ]


def max_change(now: list, then: list[np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(v) - w).max()) for v, w in zip(now, then, strict=True))


def tune_block14(
    tail: keras.Model,
    layers14: list,
    head: keras.Model,
    train: Maps,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    on_epoch=None,
) -> dict:
    """Train block 14 (through ``tail``) and ``head`` together on ``train`` for ``epochs`` epochs.

    ``head`` maps the tail's features to logits (trained on the frozen features first, so the first
    updates of block 14 follow a sensible head). ``on_epoch(epoch, model)`` may score the joint model
    after each epoch (its return values are kept in the history). Returns the history and what moved:
    block 14's convolutions must, its BatchNorm must not.
    """
    model = keras.Model(tail.inputs, head(tail.output), name="block14_and_head")
    bn_before = [np.asarray(v).copy() for v in weights_of(layers14, convolutions=False)]
    conv_before = [np.asarray(v).copy() for v in weights_of(layers14, convolutions=True)]
    trainable_block(layers14, True)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    batches = MapBatches(train, int(head.output.shape[-1]), batch_size, seed)
    history = []
    try:
        for epoch in range(1, epochs + 1):
            losses = [float(model.train_on_batch(x, y)) for x, y in batches.epoch()]
            row = {"epoch": epoch, "train_loss": float(np.mean(losses))}
            if on_epoch is not None:
                row.update(on_epoch(epoch, model) or {})
            history.append(row)
            print(f"block 14 epoch {epoch}/{epochs}: {row}", flush=True)
    finally:
        trainable_block(layers14, False)  # frozen again: the saved model is for inference
    return {
        "epochs": history,
        "block14_max_weight_change": max_change(weights_of(layers14, convolutions=True), conv_before),
        "batchnorm_max_change": max_change(weights_of(layers14, convolutions=False), bn_before),
    }

"""``--fine-tune``: after the head is trained on cached features, train the exit flow of the base too.

The seed recipe fine-tuned on a GPU. Here it is an option, off by default: every epoch runs the whole
base forwards and the unfrozen blocks backwards on every training image (10-20 minutes per epoch on 2
CPU cores at 352 px, against seconds for the head). Measured on the CPU (docs/lab/calibration.md, one
seed): without ``--view-style photo`` there is nothing left to learn, since the heads already fit the
un-augmented train images (train loss 0.002 in the first epoch); with it, 3 epochs gave +0.5 (1e-5) and
+0.0 points (3e-5) on the extra photos, within the noise. More needs a GPU (Keras on JAX, docs/training.md).

What stays frozen, and why:
- every block not named in ``fine_tune_blocks`` (default 13-14, Xception's exit flow): the early blocks'
  generic edges and textures need no change, and fewer trainable weights overfit 3,000 photos less;
- every BatchNormalization layer, in inference mode (the base is called with ``training=False`` and the
  layers are not trainable): batches of 32 would give noisy statistics that replace ImageNet's, the
  classic way fine-tuning wrecks a pretrained network;
- the head's standardization (its mean and variance are statistics, not weights).
The learning rate is low (1e-5) so that the pretrained filters are adjusted, not overwritten.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from train.augment import random_photo
from train.callbacks import KeepBest  # the head's rule for "best epoch", shared
from train.config import TrainConfig


class Batches(keras.utils.PyDataset):
    """uint8 images -> float32 batches made one at a time: a float copy of all of train at 352 px would
    take 4.5 GB. With a ``seed`` the order is reshuffled every epoch (training); without, kept (scoring).
    With ``photo_views`` (and a seed) every image is a new ``random_photo`` draw each time it is served:
    the augmentation that cached features can only give as one fixed view."""

    def __init__(
        self,
        images,
        labels,
        num_classes: int,
        batch_size: int,
        seed: int | None = None,
        photo_views: bool = False,
    ):
        super().__init__()
        if photo_views and seed is None:
            raise ValueError("photo views need a seed (they are for training batches)")
        self.images, self.batch_size, self.rng = images, batch_size, None
        self.photo_views = photo_views
        self.targets = keras.utils.to_categorical(labels, num_classes)
        self.order = np.arange(len(images))
        if seed is not None:
            self.rng = np.random.default_rng(seed)
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        images = self.images[rows]
        if self.photo_views:
            images = np.stack([random_photo(image, self.rng) for image in images])
        return images.astype(np.float32), self.targets[rows]

    def on_epoch_end(self) -> None:
        if self.rng is not None:
            self.rng.shuffle(self.order)


def base_of(model: keras.Model) -> keras.Model:
    """The nested Xception model inside the full model (the only layer that is itself a Model)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected one nested base model, found {len(nested)}")
    return nested[0]


def unfreeze(model: keras.Model, blocks: tuple[int, ...]) -> list[str]:
    """Make the non-BatchNorm layers of Xception ``blocks`` trainable, and nothing else in the base.

    Returns the names of the layers made trainable (each with weights), in layer order.
    """
    base = base_of(model)
    prefixes = tuple(f"block{b}_" for b in blocks)
    base.trainable = True  # a nested model must be trainable for any of its layers to be
    opened = []
    for layer in base.layers:
        train_it = (
            layer.name.startswith(prefixes)
            and not isinstance(layer, layers.BatchNormalization)
            and bool(layer.weights)
        )
        layer.trainable = train_it
        if train_it:
            opened.append(layer.name)
    if not opened:
        raise ValueError(f"no layer of blocks {blocks} found in the base")
    return opened


def fine_tune(
    config: TrainConfig,
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    num_classes: int,
) -> dict:
    """Fine-tune ``model`` in place on (uint8 pixels, labels); keep the epoch with the best val accuracy.

    Returns the history (per-epoch lists), the kept epoch and the names of the unfrozen layers.
    """
    opened = unfreeze(model, tuple(config.blocks_to_fine_tune))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.fine_tune_learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    keep = KeepBest()
    history = model.fit(
        Batches(
            *train, num_classes, config.batch_size, seed=config.seed, photo_views=config.view_style == "photo"
        ),
        validation_data=Batches(*validation, num_classes, config.batch_size),
        epochs=config.fine_tune_epochs,
        callbacks=[keep],
        verbose=2,
    )
    model.set_weights(keep.best_weights)
    # Frozen again: the saved model is for inference, and a later compile must not train by surprise.
    base_of(model).trainable = False
    return {
        "best_epoch": keep.best_epoch,
        "unfrozen_layers": opened,
        **{k: [float(v) for v in vs] for k, vs in history.history.items()},
    }

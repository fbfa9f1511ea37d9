"""The frozen Xception base as a feature extractor, run once per image and view, with a disk cache.

Training only fits the small head, so the expensive base runs once and its pooled features are cached;
each epoch then takes seconds instead of the seed recipe's ~17 minutes on 2 CPU cores.

The features are the global average of one or more Xception block outputs, concatenated: by default
blocks 11-14 (728 + 728 + 1024 + 2048 channels; ``TrainConfig.pooled_blocks``). They all come out of
the same forward pass, so the extra blocks cost no extraction time; see ``train/config.py`` for the
measurement that chose them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np
from keras import layers
from tqdm import tqdm

from lambda_function.sidecar import file_sha256
from train.config import FIRST_RESIDUAL_BLOCK, LAST_BLOCK, NO_WEIGHTS
from train.errors import WeightsError

# Images per LiteRT invoke. Measured on 2 cores (XNNPACK, 299x299): batch 1 and 4 ran at the same
# speed, so one image per invoke keeps memory small and the tqdm bar smooth.
LITERT_BATCH = 1
KERAS_BATCH = 16
# Bumped whenever the cached bytes would change for the same key (new base, new pooling...).
CACHE_VERSION = 2


def keras_weights_arg(weights: str) -> str | None:
    """The value for ``keras.applications.Xception(weights=...)``: "imagenet", a file path or None."""
    if weights == NO_WEIGHTS:
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path} (use 'imagenet', a path or 'none')")
    return str(path)


def block_output(base: keras.Model, block: int):
    """The output tensor of Xception block ``block`` (2..14) inside ``base``.

    Blocks 2..13 end with the n-th Add layer in layer order; found by position, not by name, because
    Keras numbers unnamed layers per process ("add_12" for the second model built in a test session).
    """
    if block == LAST_BLOCK:
        return base.output
    adds = [layer for layer in base.layers if isinstance(layer, layers.Add)]
    return adds[block - FIRST_RESIDUAL_BLOCK].output


def xception_base(image_size: int, weights: str) -> keras.Model:
    """The frozen Xception base (no top) with ``weights``; WeightsError if they cannot be loaded."""
    source = keras_weights_arg(weights)
    try:
        base = keras.applications.Xception(
            include_top=False, weights=source, input_shape=(image_size, image_size, 3)
        )
    except Exception as exc:  # Keras raises bare Exception for a failed download, ValueError for bad files
        hint = " (no internet? pass --weights PATH to a local .weights.h5)" if source == "imagenet" else ""
        raise WeightsError(f"Could not load Xception weights {weights!r}{hint}: {exc}") from exc
    base.trainable = False
    return base


def build_extractor(
    image_size: int,
    weights: str,
    blocks: tuple[int, ...] = (LAST_BLOCK,),
    map_block: int | None = None,
    base: keras.Model | None = None,
) -> keras.Model:
    """float32 NHWC pixels 0-255 -> x/127.5 - 1 -> frozen Xception (inference mode) -> pooled features.

    The features are the global average of each block output in ``blocks``, concatenated in block order;
    with ``map_block`` the whole output map of that block follows them, flattened (the training cache
    keeps block 13's map, train/block14.py). Pass ``base`` (:func:`xception_base`) to build several
    extractors on one set of layers: the one that is cached and the one that ships then share weights.
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    scaled = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale_to_xception")(inputs)
    if base is None:
        base = xception_base(image_size, weights)
    outputs = list(blocks) + ([map_block] if map_block is not None else [])
    if outputs != [LAST_BLOCK]:
        # One nested model with one output per block: every output comes from the same forward pass.
        base = keras.Model(base.input, [block_output(base, b) for b in outputs], name="xception_blocks")
        base.trainable = False
    # training=False keeps BatchNormalization in inference mode even if the base is unfrozen later.
    maps = base(scaled, training=False)
    maps = maps if isinstance(maps, list) else [maps]
    pooled = [
        layers.GlobalAveragePooling2D(name=f"pool_block{b}")(m)
        for b, m in zip(blocks, maps[: len(blocks)], strict=True)
    ]
    if map_block is not None:
        pooled.append(layers.Flatten(name=f"map_block{map_block}")(maps[-1]))
    features = pooled[0] if len(pooled) == 1 else layers.Concatenate(name="features")(pooled)
    return keras.Model(inputs, features, name="extractor")


def features_dim(extractor: keras.Model) -> int:
    """Length of one feature vector (2048 for block 14 alone, 4528 for blocks 11-14)."""
    return int(extractor.output.shape[-1])


def weights_identity(weights: str, seed: int) -> str:
    """What makes the base's weights unique: the file hash, "imagenet", or the seed of a random init."""
    if weights == NO_WEIGHTS:
        return f"random-seed{seed}"
    if weights == "imagenet":
        return "imagenet"
    return "sha256:" + file_sha256(weights)


def cache_key(**parts) -> str:
    """A short stable hash of JSON-able ``parts``."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def files_fingerprint(paths: list[Path]) -> str:
    """Hash of the file list with sizes and mtimes: any added, removed or edited image changes it."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def export_tflite(extractor: keras.Model, path: Path) -> Path:
    """Convert the extractor to an fp32 .tflite file at ``path`` (no optimisation: exact features)."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "saved_model"
        extractor.export(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        tflite_bytes = converter.convert()
    partial = path.with_suffix(".tmp")
    partial.write_bytes(tflite_bytes)
    partial.replace(path)  # atomic: an interrupted run never leaves a half-written model in the cache
    return path


class LiteRTExtractor:
    """Runs an exported extractor with LiteRT (XNNPACK), which is ~3x faster than Keras on 2 cores."""

    def __init__(self, tflite_path: str | Path, num_threads: int, batch: int = LITERT_BATCH):
        from lambda_function.classifier import load_interpreter  # the Lambda's, so features match serving

        self.interpreter = load_interpreter(tflite_path, num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.batch = batch
        if batch != 1:
            shape = list(self.input["shape"])
            shape[0] = batch
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
        output = self.interpreter.get_output_details()[0]
        self.output_index = output["index"]
        self.dim = int(output["shape"][-1])

    def __call__(self, images: np.ndarray, desc: str = "features") -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with tqdm(total=len(images), desc=desc, unit="img") as bar:
            for start in range(0, len(images), self.batch):
                chunk = images[start : start + self.batch].astype(np.float32)
                count = len(chunk)
                if count < self.batch:  # pad the last chunk up to the fixed batch size
                    chunk = np.concatenate([chunk, np.zeros((self.batch - count,) + chunk.shape[1:], "f4")])
                self.interpreter.set_tensor(self.input["index"], chunk)
                self.interpreter.invoke()
                out[start : start + count] = self.interpreter.get_tensor(self.output_index)[:count]
                bar.update(count)
        return out


def extract_keras(extractor: keras.Model, images: np.ndarray, desc: str = "features") -> np.ndarray:
    """Features with Keras itself, in batches, with a tqdm bar."""
    out = np.empty((len(images), features_dim(extractor)), dtype=np.float32)
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for start in range(0, len(images), KERAS_BATCH):
            chunk = images[start : start + KERAS_BATCH].astype(np.float32)
            out[start : start + len(chunk)] = np.asarray(extractor(chunk, training=False))
            bar.update(len(chunk))
    return out


def extract(
    extractor: keras.Model,
    images: np.ndarray,
    backend: str,
    num_threads: int,
    tflite_path: Path | None = None,
    desc: str = "features",
) -> np.ndarray:
    """uint8 (N,H,W,3) -> float32 (N, features_dim) with ``backend`` "keras" or "litert".

    For "litert" the extractor is exported to ``tflite_path`` first unless that file already exists.
    """
    if backend == "keras":
        return extract_keras(extractor, images, desc)
    if backend != "litert":
        raise ValueError(f"Unknown feature backend {backend!r}")
    if tflite_path is None:
        raise ValueError("The litert backend needs a tflite_path")
    if not tflite_path.is_file():
        export_tflite(extractor, tflite_path)
    return LiteRTExtractor(tflite_path, num_threads)(images, desc)


def load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays stored by save_cached, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, KeyError, ValueError):
        return None  # a damaged cache file is recomputed, never trusted


def save_cached(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp.npz")
    np.savez(partial, **arrays)
    partial.replace(path)  # atomic, like export_tflite

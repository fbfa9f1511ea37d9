"""--signed-sqrt: heads on sign(x) sqrt(|x|) of the pooled features, standardized after the root."""

import dataclasses

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from train.__main__ import build_parser  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.model import HeadLayers, SignedSqrt, signed_sqrt_of  # noqa: E402
from train.trainer import fit_heads  # noqa: E402

CLASSES = 3


def test_numpy_and_layer_agree_on_both_signs_zero_and_keep_dtype_and_layout():
    features = np.asfortranarray(np.array([[4.0, -9.0, 0.0], [0.25, 1.0, -0.01]], np.float32))
    out = signed_sqrt_of(features)
    np.testing.assert_allclose(out, [[2.0, -3.0, 0.0], [0.5, 1.0, -0.1]], rtol=1e-6)
    assert out.dtype == np.float32 and out.flags.c_contiguous  # the layout moves a head's float rounding
    np.testing.assert_allclose(np.asarray(SignedSqrt()(features)), out, rtol=1e-6)


def test_heads_standardize_the_rooted_features_and_train_through_the_layer(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(120) % CLASSES
    # Heavy-tailed, both signs, one class apart by its mean: what pooled blocks look like, in small.
    x = (rng.standard_t(3, size=(120, 6)) + 6 * np.eye(CLASSES, 6)[labels]).astype(np.float32)
    heads = HeadLayers(6, CLASSES, (1, 1001), standardize_on=x, signed_sqrt=True)
    standardized = np.asarray(heads.standardize(signed_sqrt_of(x)))
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(standardized.std(axis=0), 1, atol=1e-3)
    assert "signed_sqrt" in [layer.name for layer in heads.training_model().layers]

    config = TrainConfig(data_dir=tmp_path, output_dir=tmp_path, epochs=15, heads=2, signed_sqrt=True)
    rooted, _ = fit_heads(config, x, labels, CLASSES)
    logits = np.asarray(rooted.model().predict(x, verbose=0))
    assert (logits.argmax(axis=1) == labels).mean() > 0.9
    plain, _ = fit_heads(dataclasses.replace(config, signed_sqrt=False), x, labels, CLASSES)
    assert not np.allclose(np.asarray(plain.model().predict(x, verbose=0)), logits)


def test_the_flag_is_off_by_default_and_on_with_signed_sqrt():
    assert TrainConfig.signed_sqrt is False
    args = build_parser().parse_args(["--data-dir", "d", "--signed-sqrt"])
    assert args.signed_sqrt is True

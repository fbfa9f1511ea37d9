"""studies.calibration --pool14: block 14's map pooled once more, after the recipe's features."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from studies.calibration import with_pool14  # noqa: E402


def recipe_tail(height: int) -> keras.Model:
    maps = keras.Input((height, height, 2))
    return keras.Model(maps, keras.layers.GlobalAveragePooling2D(name="pool_block14")(maps))


@pytest.mark.parametrize("height", [11, 3])  # 352 px, and the tests' 71 px
def test_rows_are_the_top_and_bottom_halves_after_the_whole_average(height):
    # Channel 0 says which row a cell is in, channel 1 is 1 in the left column only (a flip moves it).
    rows = np.arange(height, dtype=np.float32)[:, None].repeat(height, axis=1)
    left = np.zeros((height, height), np.float32)
    left[:, 0] = 1.0
    map_ = np.stack([rows, left], axis=-1)[None]
    out = with_pool14(recipe_tail(height), "avg+rows").predict(map_, verbose=0)[0]
    half = height // 2 + 1
    top, bottom = rows[:half].mean(), rows[height - half :].mean()
    # [whole average (2 channels), top half (2), bottom half (2)]
    np.testing.assert_allclose(out, [rows.mean(), 1 / height, top, 1 / height, bottom, 1 / height], rtol=1e-6)
    flipped = with_pool14(recipe_tail(height), "avg+rows").predict(map_[:, :, ::-1], verbose=0)[0]
    np.testing.assert_allclose(flipped, out, rtol=1e-6)


def test_max_and_unknown_kinds():
    map_ = np.zeros((1, 3, 3, 2), np.float32)
    map_[0, 1, 2, 1] = 9.0
    out = with_pool14(recipe_tail(3), "avg+max").predict(map_, verbose=0)[0]
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0, 9.0])
    with pytest.raises(ValueError, match="unknown"):
        with_pool14(recipe_tail(3), "avg+min")

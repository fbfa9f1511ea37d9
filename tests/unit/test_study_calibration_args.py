"""studies.calibration refuses head-input variants it cannot study, before it loads any photo."""

import numpy as np
import pytest

from studies import calibration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--head-blocks", "11,12,13,14;15", "--tune-epochs", "0"], "--head-blocks must name Xception"),
        (["--pool14", "avg+max"], "add --tune-epochs 0"),
        (["--head-blocks", "13,14"], "add --tune-epochs 0"),
        (["--signed-sqrt"], "add --tune-epochs 0"),
        (["--block-l2"], "add --tune-epochs 0"),
        (["--block-l2", "--pool14", "avg+max", "--tune-epochs", "0"], "--pool14 avg only"),
    ],
)
def test_bad_head_inputs_exit_2_with_the_reason(tmp_path, capsys, options, message):
    argv = ["--data-dir", str(tmp_path / "none"), "--extra-dir", str(tmp_path / "none"), *options]
    assert calibration.main(argv) == 2
    assert message in capsys.readouterr().err


def test_block_l2_gives_each_block_unit_length_on_every_photo():
    widths = {11: 2, 12: 2, 13: 1, 14: 3}
    features = np.array([[3.0, 4.0, 0.0, 0.0, -2.0, 1.0, 2.0, 2.0], [6.0, 8.0, 0.0, 5.0, 7.0, 0.0, 0.0, 0.0]])
    out = calibration.block_l2(features.astype(np.float32), widths)
    np.testing.assert_allclose(out[0], [0.6, 0.8, 0.0, 0.0, -1.0, 1 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.6, 0.8, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])  # a block of zeros stays 0
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(ValueError, match="add up to 7"):
        calibration.block_l2(features, {11: 2, 12: 2, 13: 1, 14: 2})


def test_resize_takes_the_modes_serving_knows(tmp_path, capsys):
    none = str(tmp_path / "none")
    argv = ["--data-dir", none, "--extra-dir", none, "--resize", "stretch"]
    with pytest.raises(SystemExit) as exit_info:
        calibration.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert all(mode in err for mode in ("squash", "letterbox", "crop"))


@pytest.mark.parametrize("below", ["1", "-0.1"])
def test_drop_suspects_is_a_probability_below_one(tmp_path, capsys, below):
    none = str(tmp_path / "none")
    assert calibration.main(["--data-dir", none, "--extra-dir", none, "--drop-suspects", below]) == 2
    assert "--drop-suspects is a probability in [0, 1)" in capsys.readouterr().err

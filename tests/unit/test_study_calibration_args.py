"""studies.calibration refuses head-input variants it cannot study, before it loads any photo."""

import pytest

from studies import calibration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--head-blocks", "11,12,13,14;15", "--tune-epochs", "0"], "--head-blocks must name Xception"),
        (["--pool14", "avg+max"], "add --tune-epochs 0"),
        (["--head-blocks", "13,14"], "add --tune-epochs 0"),
    ],
)
def test_bad_head_inputs_exit_2_with_the_reason(tmp_path, capsys, options, message):
    argv = ["--data-dir", str(tmp_path / "none"), "--extra-dir", str(tmp_path / "none"), *options]
    assert calibration.main(argv) == 2
    assert message in capsys.readouterr().err

"""convert.onnx.to_onnx_int8's activation ranges on a small conv net: a rare extreme value must not set a
tensor's range, and the calibration runs in passes that together see every batch."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.tiny_onnx import save_graph

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CHANNELS, OUT, SIZE = 4, 8, 64
BATCHES = 40  # two passes of convert.onnx.CALIBRATION_PASS_BATCHES
TYPICAL_MAX = 2.0  # calibration pixels are uniform in [0, 2) ...
LATE_MAX = 4.0  # 256 values of an image in the second pass: common enough to count
OUTLIER = 1000.0  # ... but for one value of one image: 1 in 655,360, under the 0.0005% percentile cut


def _float_model(path, rng):
    """NCHW input -> 3x3 conv (bias) -> Relu -> 1x1 conv (bias)."""
    from onnx import helper, numpy_helper

    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (OUT, CHANNELS, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(OUT, np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (OUT, OUT, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(OUT, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="c2"),
    ]
    save_graph(path, "convs", nodes, inits, [1, CHANNELS, SIZE, SIZE], [1, OUT, SIZE, SIZE])


def _input_range(path) -> float:
    """The float range the int8 model gives its input: 255 uint8 steps of the QuantizeLinear scale."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    (quantize,) = [node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "x"]
    return float(initializers[quantize.input[1]]) * 255


def test_a_rare_extreme_value_does_not_set_an_activation_range(tmp_path):
    from convert.onnx import to_onnx_int8

    rng = np.random.default_rng(0)
    float_path, int8_path = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    _float_model(float_path, rng)
    shape = (1, CHANNELS, SIZE, SIZE)
    batches = [rng.uniform(0, TYPICAL_MAX, shape).astype(np.float32) for _ in range(BATCHES)]
    batches[7][0, 1, 9, 9] = OUTLIER  # in the first pass
    batches[30][0, :, :8, :8] = LATE_MAX

    def representative():
        for batch in batches:
            yield [batch]

    record = to_onnx_int8(float_path, int8_path, representative)

    # Plain min/max would give the input a range of 1000 (each uint8 step ~4: the photo lost), the mean
    # of per-image maxima ~27; the percentile drops the outlier but keeps what the second pass saw, to
    # within a histogram bin (1000 / 2048 wide here).
    assert abs(_input_range(int8_path) - LATE_MAX) < 0.5
    assert "percentile" in record["activations"]


@pytest.mark.parametrize(("batches", "size"), [(200, 20), (40, 20), (7, 7), (46, 2), (23, 1), (1, 1)])
def test_calibration_passes_divide_the_batches(batches, size):
    from convert.onnx import pass_size

    assert pass_size(batches) == size

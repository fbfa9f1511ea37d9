"""convert.onnx_rounding on a small separable convolution quantized by onnxruntime as convert does it
(U8S8 QDQ, 7-bit per-channel weights): the repairs must take the weight rounding's mean output shift
back, keep the integer range, and leave the graph as fast as it was (same nodes)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.tiny_onnx import save_graph

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CHANNELS, OUT, SIZE = 8, 16, 12


def _float_model(path, rng):
    """NCHW input -> depthwise 3x3 (no bias) -> 1x1 conv (bias) -> Relu -> 3x3 conv (bias)."""
    from onnx import helper, numpy_helper

    # Coarse weights with one large tap per channel: 7-bit rounding errors that do not cancel.
    depthwise = rng.normal(0, 1, (CHANNELS, 1, 3, 3)).astype(np.float32)
    depthwise[:, 0, 0, 0] = 6.0
    pointwise = rng.normal(0, 1, (OUT, CHANNELS, 1, 1)).astype(np.float32)
    pointwise[:, 0] = 5.0
    last = rng.normal(0, 0.3, (OUT, OUT, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(depthwise, "depthwise"),
        numpy_helper.from_array(pointwise, "pointwise"),
        numpy_helper.from_array(rng.normal(0, 1, OUT).astype(np.float32), "pointwise_bias"),
        numpy_helper.from_array(last, "last"),
        numpy_helper.from_array(np.zeros(OUT, np.float32), "last_bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "depthwise"], ["dw"], name="dw", group=CHANNELS, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["dw", "pointwise", "pointwise_bias"], ["pw"], name="pw"),
        helper.make_node("Relu", ["pw"], ["act"], name="relu"),
        helper.make_node("Conv", ["act", "last", "last_bias"], ["y"], name="last", pads=[1, 1, 1, 1]),
    ]
    save_graph(path, "separable", nodes, inits, [1, CHANNELS, SIZE, SIZE], [1, OUT, SIZE, SIZE])


def _images(rng, count):
    # Positive means (as after a ReLU), so a weight's rounding error shifts the output on average.
    return [rng.uniform(0, 2, (1, CHANNELS, SIZE, SIZE)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    tmp = tmp_path_factory.mktemp("rounding")
    rng = np.random.default_rng(0)
    float_path, int8_path = tmp / "float.onnx", tmp / "int8.onnx"
    _float_model(float_path, rng)
    calibration = _images(rng, 16)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {"x": batch}

    quantize_static(
        str(float_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return float_path, int8_path, calibration, _images(rng, 16)


def _outputs(path, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"x": image})[0][0] for image in images])


def _int8_weights(path):
    import onnx
    from onnx import numpy_helper

    return {
        init.name: numpy_helper.to_array(init)
        for init in onnx.load(str(path)).graph.initializer
        if init.data_type == onnx.TensorProto.INT8
    }


def test_repairs_take_back_the_mean_shift_of_weight_rounding(models, tmp_path):
    import shutil

    import onnx

    from convert.onnx_rounding import repair_weight_rounding

    float_path, int8_path, calibration, held_out = models
    repaired = tmp_path / "repaired.onnx"
    shutil.copy(int8_path, repaired)
    record = repair_weight_rounding(repaired, float_path, calibration)
    # All three convolutions get clipped scales; the two with a bias are corrected (the depthwise shift
    # is carried into the 1x1 conv's bias).
    assert record == {"clipped_convolutions": 3, "bias_corrected_convolutions": 2}

    reference = _outputs(float_path, held_out)
    # Mean shift per output channel, on images the repair did not see.
    shift_before = np.abs((_outputs(int8_path, held_out) - reference).mean(axis=(0, 2, 3))).mean()
    shift_after = np.abs((_outputs(repaired, held_out) - reference).mean(axis=(0, 2, 3))).mean()
    # ~10x smaller here; without the depthwise shift carried into the 1x1 bias only ~4x.
    assert shift_after < 0.2 * shift_before

    # Same integer range (7 bits: what keeps AVX2 and VNNI CPUs on the same logits) and the same graph.
    before, after = _int8_weights(int8_path), _int8_weights(repaired)
    assert before.keys() == after.keys()
    for name, values in after.items():
        assert np.abs(values.astype(int)).max() <= np.abs(before[name].astype(int)).max() <= 64
    nodes = [node.op_type for node in onnx.load(str(repaired)).graph.node]
    assert nodes == [node.op_type for node in onnx.load(str(int8_path)).graph.node]


def test_clipped_scales_never_round_worse_than_the_largest_weight(models):
    import onnx
    from onnx import numpy_helper

    from convert.onnx_rounding import _dequantized_weights, _float_weights_of, _Graph, clip_conv_weights

    float_path, int8_path, _, _ = models
    float_weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(float_path)).graph.initializer}
    model = onnx.load(str(int8_path))

    def errors():
        graph = _Graph(model)
        return {
            conv.name: float(
                ((_dequantized_weights(graph, w) - _float_weights_of(w, float_weights)) ** 2).sum()
            )
            for conv, w, _ in graph.int8_convolutions()
        }

    before = errors()
    assert clip_conv_weights(model, float_weights) == 3
    after = errors()
    assert all(after[name] <= before[name] for name in before)
    assert sum(after.values()) < sum(before.values())

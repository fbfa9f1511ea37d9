"""End-to-end conversion of a tiny Keras model to every variant (TensorFlow needed: marked slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from convert import install as installer  # noqa: E402
from convert.__main__ import main  # noqa: E402
from convert.errors import ModelLoadError, UnknownVariantError, ValidationError  # noqa: E402
from convert.metadata import read_sidecar, sha256_file  # noqa: E402
from convert.pipeline import ConvertOptions, run  # noqa: E402
from convert.runners import load_runner  # noqa: E402
from convert.savedmodel import load_keras_model  # noqa: E402
from convert.validate import TOLERANCES, validate  # noqa: E402
from lambda_function.classifier import softmax  # noqa: E402
from lambda_function.preprocess import load_image_file  # noqa: E402

LABELS = ["blue", "green", "red"]
SIZE = (32, 32)
ALL_VARIANTS = ["tflite-fp32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-int8"]
PER_SPLIT = {"train": 12, "validation": 3, "test": 5}


def _image(rng: np.random.Generator, channel: int) -> np.ndarray:
    # Dominant colour channel + noise, at a size that forces a resize (40x48 -> 32x32).
    pixels = rng.uniform(0, 90, (40, 48, 3))
    pixels[..., channel] = rng.uniform(150, 255, (40, 48))
    return pixels.astype(np.uint8)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, count in PER_SPLIT.items():
        for channel, name in zip((2, 1, 0), LABELS, strict=True):  # blue, green, red
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(_image(rng, channel)).save(folder / f"{i}{suffix}")
    return root


@pytest.fixture(scope="session")
def keras_model_path(tmp_path_factory, data_dir):
    """A tiny seeded CNN (0-255 input, Rescaling inside, logits out), trained briefly on the data."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS))(x)
    model = keras.Model(inputs, outputs)
    paths = sorted((data_dir / "train").glob("*/*"))
    pixels = np.stack([load_image_file(p, SIZE) for p in paths]).astype(np.float32)
    targets = np.array([LABELS.index(p.parent.name) for p in paths])
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(pixels, targets, epochs=40, batch_size=12, verbose=0)
    folder = tmp_path_factory.mktemp("model")
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(LABELS))
    return folder / "model.keras"


@pytest.fixture(scope="session")
def converted(tmp_path_factory, keras_model_path, data_dir):
    out = tmp_path_factory.mktemp("converted")
    options = ConvertOptions(data_dir=data_dir, calibration_images=12, latency_runs=3)
    return run(keras_model_path, out, options), out


def test_every_variant_has_a_model_and_a_valid_sidecar(converted, keras_model_path):
    result, _ = converted
    assert sorted(result.models) == sorted(ALL_VARIANTS)
    for vid, path in result.models.items():
        meta = read_sidecar(path)
        fmt, variant = vid.split("-")
        assert (meta["format"], meta["variant"]) == (fmt, variant)
        assert meta["sha256"] == sha256_file(path)
        assert meta["source"] == {"model": "model.keras", "sha256": sha256_file(keras_model_path)}
        assert meta["labels"] == LABELS
        assert (meta["input"]["height"], meta["input"]["width"]) == SIZE
        assert meta["output"] == "logits"
        assert meta["validation"]["passed"] is True
        assert meta["validation"]["images"] == PER_SPLIT["test"] * len(LABELS)


def test_int8_sidecars_record_the_calibration(converted):
    result, _ = converted
    for vid in ("tflite-int8", "onnx-int8"):
        quantization = read_sidecar(result.models[vid])["quantization"]
        assert quantization["calibration_images"] == 12
        assert quantization["input_output"] == "float32"


def test_variants_agree_with_keras_within_their_tolerance(converted, keras_model_path, data_dir):
    result, _ = converted
    model = load_keras_model(keras_model_path)
    paths = sorted((data_dir / "test").glob("*/*"))
    pixels = np.stack([load_image_file(p, SIZE) for p in paths])
    keras_probs = softmax(np.asarray(model(pixels.astype(np.float32))))
    for vid, path in result.models.items():
        probs = softmax(load_runner(path).predict_logits(pixels.astype(np.float32)))
        diff = np.abs(probs - keras_probs)
        assert diff.max() <= TOLERANCES[vid].get("max_abs_diff", 1.0), vid
        assert diff.mean() <= TOLERANCES[vid].get("max_mean_abs_diff", 1.0), vid
        agreement = np.mean(probs.argmax(-1) == keras_probs.argmax(-1))
        assert agreement >= TOLERANCES[vid]["min_top1_agreement"], vid
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)


def test_the_tiny_model_learned_and_fp32_matches_it_exactly(converted):
    result, _ = converted
    rows = {row["variant"]: row for row in result.rows}
    assert rows["keras"]["accuracy"] == pytest.approx(100.0)
    assert rows["tflite-fp32"]["top1_agreement"] == 1.0
    assert rows["onnx-fp32"]["max_abs_diff"] < 1e-5


def test_every_variant_keeps_float32_input_and_output(converted):
    result, _ = converted
    for vid, path in result.models.items():
        runner = load_runner(path)
        assert runner.input_dtype == np.float32, vid
        assert runner.output_dtype == np.float32, vid
        assert runner.input_hw == SIZE


def test_int8_tflite_is_actually_quantized(converted):
    result, _ = converted
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(result.models["tflite-int8"]))
    dtypes = {np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    assert np.dtype(np.int8) in dtypes


def test_report_files_and_rows(converted):
    result, out = converted
    for name in ("report.md", "report.json", "report.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [row["variant"] for row in rows] == ["keras", *ALL_VARIANTS]
    for row in rows[1:]:
        assert row["latency_p50_ms"] > 0 and row["size_mb"] > 0 and row["load_ms"] >= 0
    markdown = (out / "report.md").read_text()
    assert all(vid in markdown for vid in ALL_VARIANTS)


def test_keras_reference_is_cached(converted, keras_model_path):
    _, out = converted
    assert (out / "keras_reference.npz").is_file()


def test_install_writes_model_and_sidecar_to_dest(converted, tmp_path):
    result, _ = converted
    installed = installer.install(result.models["tflite-int8"], tmp_path / "model")
    assert installed == tmp_path / "model" / "model.tflite"
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["variant"] == "int8"
    assert meta["sha256"] == sha256_file(installed)


def test_choose_variant_picks_a_validated_tflite_variant(converted):
    result, _ = converted
    keras_accuracy = result.rows[0]["accuracy"]
    chosen = installer.choose_variant(result.rows, keras_accuracy)
    assert chosen["format"] == "tflite" and chosen["passed"]
    fastest = min(
        r["latency_p50_ms"]
        for r in result.rows
        if r["format"] == "tflite" and r["accuracy"] >= keras_accuracy - 1
    )
    assert chosen["latency_p50_ms"] == fastest


def test_validation_error_when_tolerance_is_exceeded(converted, keras_model_path, data_dir):
    result, _ = converted
    runner = load_runner(result.models["tflite-int8"])
    paths = sorted((data_dir / "test").glob("*/*"))
    pixels = np.stack([load_image_file(p, SIZE) for p in paths])
    keras_probs = softmax(np.asarray(load_keras_model(keras_model_path)(pixels.astype(np.float32))))
    with pytest.raises(ValidationError) as info:
        validate(
            "tflite-int8",
            runner,
            keras_probs,
            pixels,
            tolerance={"max_abs_diff": 0.0, "min_top1_agreement": 0},
        )
    assert info.value.metric == "max_abs_diff" and "tflite-int8" in str(info.value)
    # A "model" whose class order is shuffled must fail on agreement.
    with pytest.raises(ValidationError) as info:
        shuffled = keras_probs[:, [1, 2, 0]]
        validate(
            "tflite-int8", runner, shuffled, pixels, tolerance={"max_abs_diff": 1, "min_top1_agreement": 0.9}
        )
    assert info.value.metric == "top1_agreement"


def test_failed_variant_is_reported_and_not_installable(keras_model_path, data_dir, tmp_path):
    options = ConvertOptions(
        formats=("tflite",),
        variants=("fp32",),
        data_dir=data_dir,
        latency_runs=1,
        tolerances={"tflite-fp32": {"max_abs_diff": -1.0, "min_top1_agreement": 1.0}},
    )
    result = run(keras_model_path, tmp_path / "out", options)
    assert [f.variant for f in result.failures] == ["tflite-fp32"]
    assert read_sidecar(result.models["tflite-fp32"])["validation"]["passed"] is False
    with pytest.raises(Exception, match="failed validation"):
        installer.install(result.models["tflite-fp32"], tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.tflite").exists()


def test_installing_also_writes_the_ondevice_variant(keras_model_path, data_dir, tmp_path):
    pytest.importorskip("mediapipe")
    from convert.ondevice import FILE_NAME, read_metadata

    options = ConvertOptions(
        formats=("tflite",),
        variants=("fp32",),
        data_dir=data_dir,
        latency_runs=1,
        install="fp32",
        install_dir=tmp_path / "installed",
    )
    result = run(keras_model_path, tmp_path / "out", options)
    assert not result.failures
    row = next(r for r in result.rows if r["variant"] == "tflite-ondevice")
    assert row["passed"] and row["top1_agreement"] == 1.0 and row["max_abs_diff"] < 1e-4
    assert read_metadata((tmp_path / "out" / FILE_NAME).read_bytes())["labels"] == LABELS
    # The Lambda keeps its logits model.
    assert read_sidecar(result.installed)["output"] == "logits"


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        run(tmp_path / "nope.keras", tmp_path / "out", ConvertOptions(variants=("fp32",)))


def test_text_file_named_keras_is_rejected(tmp_path):
    fake = tmp_path / "x.keras"
    fake.write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a Keras model"):
        load_keras_model(fake)


def test_damaged_keras_archive_is_rejected(tmp_path):
    import zipfile

    fake = tmp_path / "x.keras"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("config.json", "{broken")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_keras_model(fake)


def test_unknown_variant_is_rejected(keras_model_path, tmp_path):
    with pytest.raises(UnknownVariantError):
        run(keras_model_path, tmp_path / "out", ConvertOptions(formats=("tflite",), variants=("int4",)))


def test_missing_labels_is_a_clear_error(keras_model_path, tmp_path):
    lonely = tmp_path / "model.keras"
    lonely.write_bytes(keras_model_path.read_bytes())
    with pytest.raises(ModelLoadError, match="Labels file not found"):
        run(lonely, tmp_path / "out", ConvertOptions(formats=("tflite",), variants=("fp32",)))


def test_cli_exits_2_with_a_message_and_no_traceback(tmp_path, capsys):
    fake = tmp_path / "x.keras"
    fake.write_text("hello")
    assert main([str(fake), "--output-dir", str(tmp_path / "o"), "--quantize", "none"]) == 2
    err = capsys.readouterr().err
    assert "not a Keras model" in err and "Traceback" not in err


def test_cli_int8_without_data_is_a_clear_error(keras_model_path, tmp_path, capsys):
    code = main([str(keras_model_path), "--output-dir", str(tmp_path / "o"), "--formats", "tflite"])
    assert code == 2
    assert "--data-dir" in capsys.readouterr().err


def test_int8_defaults_keep_pooling_and_head_float(converted):
    """The pooled features and the head stay float in both int8 variants (see INT8_DEFAULTS)."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    result, _ = converted
    interpreter = Interpreter(model_path=str(result.models["tflite-int8"]))
    tensors = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    out_dtype = {op["op_name"]: tensors[op["outputs"][0]] for op in interpreter._get_ops_details()}
    assert out_dtype["CONV_2D"] == np.int8
    assert out_dtype["MEAN"] == np.float32 and out_dtype["FULLY_CONNECTED"] == np.float32

    graph = onnx.load(str(result.models["onnx-int8"])).graph
    pooled = next(n.output[0] for n in graph.node if n.op_type == "GlobalAveragePool")
    assert pooled not in {name for n in graph.node if n.op_type == "QuantizeLinear" for name in n.input}
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the convolution is still int8


def test_onnx_int8_is_u8s8_and_stores_the_head_weights_as_int8(converted):
    """uint8 activations (onnxruntime's x86 format, convert/onnx.py ACTIVATION_TYPE), and the float
    head's Gemm weights come from an int8 initializer, cast and scaled (folded at load)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(converted[0].models["onnx-int8"])).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    zero_points = {initializers[n.input[2]].dtype for n in graph.node if n.op_type == "QuantizeLinear"}
    assert zero_points == {np.dtype(np.uint8)}
    producer = {out: n for n in graph.node for out in n.output}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    assert gemms
    for gemm in gemms:
        scaled = producer[gemm.input[1]]
        cast = producer[scaled.input[0]]
        assert (scaled.op_type, cast.op_type) == ("Mul", "Cast")
        assert initializers[cast.input[0]].dtype == np.int8
        assert gemm.input[0] not in initializers  # float activations in: the head itself is not quantized
    # The convolutions' 7-bit rounding was repaired after quantization (convert/onnx_rounding.py).
    quantization = read_sidecar(converted[0].models["onnx-int8"])["quantization"]
    assert "bias correction" in quantization["weight_rounding"]


def test_int8_options_keep_the_logits_layer_in_float(keras_model_path, data_dir, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    options = ConvertOptions(
        formats=("tflite",),
        variants=("int8",),
        data_dir=data_dir,
        calibration_images=6,
        latency_runs=1,
        int8_options={"denylisted_ops": ["FULLY_CONNECTED"]},
    )
    result = run(keras_model_path, tmp_path / "out", options)
    assert not result.failures
    interpreter = Interpreter(model_path=str(result.models["tflite-int8"]))
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    # The float FULLY_CONNECTED is fed by a DEQUANTIZE, and the model still has int8 tensors.
    assert ops.index("DEQUANTIZE") < ops.index("FULLY_CONNECTED")
    assert read_sidecar(result.models["tflite-int8"])["quantization"]["kept_float_ops"] == ["FULLY_CONNECTED"]


def test_layer_statistics_rank_layers_by_quantization_error(converted, keras_model_path, data_dir, tmp_path):
    from convert.data import calibration_batches, load_split
    from convert.savedmodel import export_saved_model
    from convert.tflite import calibrate
    from studies.int8_debug import layer_statistics

    saved = export_saved_model(load_keras_model(keras_model_path), tmp_path / "sm")
    images = load_split(data_dir, "train", LABELS, SIZE, 6)
    representative = calibration_batches(images, flips=False)
    stats = layer_statistics(calibrate(saved, representative), representative)
    assert {row["op_name"] for row in stats} >= {"CONV_2D", "FULLY_CONNECTED"}
    errors = [row["rmse/scale"] for row in stats]
    assert errors == sorted(errors, reverse=True) and all(e >= 0 for e in errors)


def test_percentile_ranges_narrow_min_max_calibration(keras_model_path, data_dir, tmp_path):
    from tensorflow.lite.tools import flatbuffer_utils

    from convert.data import calibration_batches, load_split
    from convert.savedmodel import export_saved_model
    from convert.tflite import activation_ranges, calibrate, clip_ranges, quantize_calibrated

    def annotated(model_bytes):
        model = flatbuffer_utils.convert_bytearray_to_object(model_bytes)
        return {
            t.name.decode(): (float(t.quantization.min[0]), float(t.quantization.max[0]))
            for t in model.subgraphs[0].tensors
            if t.quantization is not None and t.quantization.min is not None
        }

    saved = export_saved_model(load_keras_model(keras_model_path), tmp_path / "sm")
    representative = calibration_batches(load_split(data_dir, "train", LABELS, SIZE), flips=False)
    calibrated = calibrate(saved, representative)
    ranges = activation_ranges(calibrated, representative)
    assert ranges and all(r.shape == (len(LABELS) * PER_SPLIT["train"], 2) for r in ranges.values())
    stock, full, clipped = (
        annotated(calibrated),
        annotated(clip_ranges(calibrated, ranges, 100)),
        annotated(clip_ranges(calibrated, ranges, 50)),
    )
    for name in ranges:
        assert full[name][1] == pytest.approx(max(stock[name][1], 0.0), rel=1e-5)  # p100 = min/max
        assert clipped[name][1] <= full[name][1] and clipped[name][0] >= full[name][0]
    assert any(clipped[name][1] < full[name][1] for name in ranges)
    runner_path = tmp_path / "clipped.tflite"
    runner_path.write_bytes(quantize_calibrated(clip_ranges(calibrated, ranges, 99)))
    assert load_runner(runner_path).predict_logits(np.zeros((1, *SIZE, 3), np.float32)).shape == (1, 3)


def test_the_training_resize_mode_reaches_the_sidecar_and_the_runtime(converted, keras_model_path, tmp_path):
    import shutil

    from lambda_function.classifier import Classifier

    result, _ = converted
    assert read_sidecar(result.models["tflite-fp32"])["input"]["resize"] == "squash"  # no config.json
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(keras_model_path, folder / "model.keras")
    shutil.copy(keras_model_path.with_name("labels.json"), folder / "labels.json")
    (folder / "config.json").write_text(json.dumps({"config": {"resize": "letterbox"}}))
    options = ConvertOptions(formats=("tflite",), variants=("fp32",), latency_runs=1)
    boxed = run(folder / "model.keras", tmp_path / "out", options).models["tflite-fp32"]
    assert read_sidecar(boxed)["input"]["resize"] == "letterbox"
    assert Classifier.from_path(boxed, num_threads=1).resize == "letterbox"


def test_both_backends_give_the_same_top1_on_the_same_photos(converted, data_dir):
    # The tiny model exported to both formats, served by the Lambda's Classifier (LiteRT and ONNX Runtime).
    from lambda_function.classifier import Classifier
    from lambda_function.service import classify_bytes

    result, _ = converted
    photos = [path.read_bytes() for path in sorted((data_dir / "test").glob("*/*"))]
    for variant in ("fp32", "int8"):
        lite = Classifier.from_path(result.models[f"tflite-{variant}"], num_threads=1)
        ort = Classifier.from_path(result.models[f"onnx-{variant}"], num_threads=1)
        assert (lite.backend, ort.backend) == ("tflite", "onnx")
        agree = [
            classify_bytes(photo, lite, 1)["predictions"][0]["label"]
            == classify_bytes(photo, ort, 1)["predictions"][0]["label"]
            for photo in photos
        ]
        # fp32: only summation order differs; int8: the two quantizers round differently (tolerance of
        # the looser of the two variants against Keras, convert/validate.py)
        floor = 1.0 if variant == "fp32" else TOLERANCES["onnx-int8"]["min_top1_agreement"]
        assert np.mean(agree) >= floor, variant


def test_target_installs_the_tables_choice_where_serving_looks(keras_model_path, data_dir, tmp_path):
    from convert.targets import choose_for_target
    from lambda_function.classifier import Classifier

    options = ConvertOptions(
        formats=("tflite", "onnx"),
        variants=("fp32", "int8"),
        data_dir=data_dir,
        calibration_images=12,
        latency_runs=1,
        install="auto",
        target="lambda-x86_64",
        install_dir=tmp_path / "model",
        ondevice=False,
    )
    result = run(keras_model_path, tmp_path / "out", options)
    report = json.loads(result.report["json"].read_text())
    keras_accuracy = report["keras_accuracy"]
    expected = choose_for_target(result.rows, keras_accuracy, "lambda-x86_64")["variant"]
    assert (report["target"], report["install"]) == ("lambda-x86_64", expected)
    # The same rows with another machine's clock (every latency reversed) choose the same.
    other_clock = [{**row, "latency_p50_ms": 1e4 - row.get("latency_p50_ms", 0.0)} for row in result.rows]
    assert choose_for_target(other_clock, keras_accuracy, "lambda-x86_64")["variant"] == expected
    if expected.startswith("onnx-"):
        assert result.installed == tmp_path / "model" / "onnx" / "model.onnx"
        assert result.installed_tflite == tmp_path / "model" / "model.tflite"
        assert (
            report["install_tflite"]
            == choose_for_target(result.rows, keras_accuracy, "lambda-x86_64", formats=("tflite",))["variant"]
        )
    else:
        assert result.installed == tmp_path / "model" / "model.tflite" and result.installed_tflite is None
    served = Classifier.from_path(result.installed, num_threads=1)
    assert read_sidecar(result.installed)["sha256"] == served.sha256

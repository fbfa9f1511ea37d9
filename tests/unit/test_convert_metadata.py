"""Sidecar writing/reading and variant parsing (pure Python, no TensorFlow)."""

from __future__ import annotations

import hashlib
import json

import pytest

from convert.errors import ModelLoadError, SidecarError, UnknownVariantError
from convert.metadata import read_sidecar, training_facts, verify_model_file, write_sidecar
from convert.variants import file_stem, parse_formats, parse_quantize, plan

LABELS = ["dress", "hat", "pants"]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tflite_int8.tflite"
    path.write_bytes(b"pretend model bytes")
    source = tmp_path / "model.keras"
    source.write_bytes(b"pretend keras bytes")
    return path, source


def test_write_then_read_round_trip(model_file):
    path, source = model_file
    quant = {"calibration_images": 300}
    written = write_sidecar(path, "tflite", "int8", LABELS, (299, 299), source, quant, {"passed": True})
    assert written == path.with_suffix(".json")
    meta = read_sidecar(path)
    assert meta["schema_version"] == 1
    assert (meta["format"], meta["variant"], meta["output"]) == ("tflite", "int8", "logits")
    assert meta["labels"] == LABELS
    assert meta["input"] == {
        "height": 299,
        "width": 299,
        "channels": 3,
        "layout": "NHWC",
        "dtype": "float32",
        "range": [0, 255],
        "resize": "squash",  # the default resize mode, written out so the sidecar says it
    }
    assert meta["sha256"] == hashlib.sha256(b"pretend model bytes").hexdigest()
    assert meta["source"] == {
        "model": "model.keras",
        "sha256": hashlib.sha256(b"pretend keras bytes").hexdigest(),
    }
    assert meta["preprocessing"]["function"] == "lambda_function.preprocess.preprocess"
    assert meta["quantization"] == quant and meta["validation"] == {"passed": True}
    assert meta["created"].endswith("Z")


def test_validation_key_is_optional(model_file):
    path, source = model_file
    write_sidecar(path, "onnx", "fp32", LABELS, (64, 48), source, {})
    meta = read_sidecar(path.with_suffix(".json"))
    assert "validation" not in meta
    assert (meta["input"]["height"], meta["input"]["width"]) == (64, 48)


def test_resize_mode_is_written_and_optional_when_read(model_file):
    path, source = model_file
    sidecar = write_sidecar(path, "tflite", "fp32", LABELS, (32, 32), source, {}, resize="letterbox")
    assert read_sidecar(path)["input"]["resize"] == "letterbox"
    meta = json.loads(sidecar.read_text())
    del meta["input"]["resize"]  # a sidecar written before the key existed
    sidecar.write_text(json.dumps(meta))
    assert "resize" not in read_sidecar(path)["input"]
    with pytest.raises(ValueError, match="resize mode"):
        write_sidecar(path, "tflite", "fp32", LABELS, (32, 32), source, {}, resize="stretch")


def test_unknown_variant_is_refused_when_writing(model_file):
    path, source = model_file
    with pytest.raises(UnknownVariantError):
        write_sidecar(path, "onnx", "float16", LABELS, (32, 32), source, {})


def test_tampered_model_is_detected(model_file):
    path, source = model_file
    write_sidecar(path, "tflite", "fp32", LABELS, (32, 32), source, {})
    meta = read_sidecar(path)
    verify_model_file(path, meta)
    path.write_bytes(b"other bytes")
    with pytest.raises(SidecarError, match="does not match"):
        verify_model_file(path, meta)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("labels"), "lacks: labels"),
        (lambda m: m.update(labels=[]), "non-empty"),
        (lambda m: m.update(labels=["a", "a"]), "not unique"),
        (lambda m: m.update(schema_version=2), "schema_version"),
        (lambda m: m.update(variant="int4"), "unknown variant"),
        (lambda m: m["input"].update(height=0), "positive"),
        (lambda m: m["input"].update(resize="stretch"), "resize mode must be one of"),
    ],
)
def test_bad_sidecars_are_refused(model_file, change, message):
    path, source = model_file
    sidecar = write_sidecar(path, "tflite", "fp32", LABELS, (32, 32), source, {})
    meta = json.loads(sidecar.read_text())
    change(meta)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(SidecarError, match=message):
        read_sidecar(sidecar)


def test_missing_or_garbage_sidecar(tmp_path):
    with pytest.raises(SidecarError, match="not found"):
        read_sidecar(tmp_path / "none.tflite")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SidecarError, match="not valid JSON"):
        read_sidecar(tmp_path / "bad.json")


def test_fixture_sidecar_of_the_serving_tests_parses():
    meta = read_sidecar("tests/fixtures/tiny_model.json")
    assert meta["format"] == "tflite" and len(meta["labels"]) == 3


def test_parse_quantize_maps_none_to_fp32_and_dedups():
    assert parse_quantize("none, int8,INT8,float16") == ["fp32", "int8", "float16"]


@pytest.mark.parametrize("text", ["int4", "none,bf16", ""])
def test_parse_quantize_rejects_unknown(text):
    with pytest.raises(UnknownVariantError):
        parse_quantize(text)


def test_parse_formats():
    assert parse_formats("tflite,onnx") == ["tflite", "onnx"]
    with pytest.raises(UnknownVariantError, match="coreml"):
        parse_formats("tflite,coreml")


def test_plan_skips_variants_a_format_does_not_have():
    assert plan(["tflite", "onnx"], ["fp32", "dynamic"]) == [
        ("tflite", "fp32"),
        ("tflite", "dynamic"),
        ("onnx", "fp32"),
    ]


def test_tflite_and_onnx_files_get_distinct_sidecars():
    assert file_stem("tflite", "fp32") != file_stem("onnx", "fp32")


def test_the_resize_mode_comes_from_the_training_config(tmp_path):
    from convert.errors import ModelLoadError
    from convert.savedmodel import load_resize

    model = tmp_path / "model.keras"
    assert load_resize(model) == "squash"  # no config.json: trained before resize modes, or elsewhere
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"config": {"image_size": 352}}))
    assert load_resize(model) == "squash"
    config.write_text(json.dumps({"config": {"resize": "crop"}}))
    assert load_resize(model) == "crop"
    config.write_text(json.dumps({"config": {"resize": "stretch"}}))
    with pytest.raises(ModelLoadError, match="resize mode must be one of"):
        load_resize(model)


def test_training_facts_travel_from_config_json_to_the_sidecar(model_file):
    path, source = model_file
    assert training_facts(source) is None  # no config.json: a model trained elsewhere
    record = {  # the shape python -m train writes (train/trainer.py)
        "config": {"image_size": 299, "pooled_blocks": "13,14", "standardize": True, "dense_units": 100,
                   "dropout": 0.5, "train_views": 2, "epochs": 60, "seed": 1,
                   "extra_dir": "/srv/photos/clothing-dataset-extra"},
        "data": {"root": "data/clothing-dataset-small", "classes": LABELS,
                 "counts": {"train": {"dress": 4, "hat": 5, "pants": 6},
                            "test": {"dress": 1, "hat": 1, "pants": 2}}},
    }  # fmt: skip
    source.with_name("config.json").write_text(json.dumps(record))
    facts = training_facts(source)
    assert facts == {
        "image_size": 299,
        "pooled_blocks": "13,14",
        "standardize": True,
        "dense_units": 100,
        "dropout": 0.5,
        "train_views": 2,
        "extra_dir": "clothing-dataset-extra",
        "dataset": "clothing-dataset-small",
        "images": {"train": 15, "test": 4},
    }
    write_sidecar(path, "tflite", "int8", LABELS, (299, 299), source, {}, None, facts)
    assert read_sidecar(path)["training"] == facts


def test_an_unreadable_training_config_is_a_clear_error(model_file):
    _, source = model_file
    source.with_name("config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="Training config"):
        training_facts(source)

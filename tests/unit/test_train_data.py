"""Training code that needs no TensorFlow: data discovery, augmentation views, metrics, config."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train import augment, evaluate
from train.__main__ import build_parser
from train.config import TrainConfig, field_help, option, parse_blocks
from train.data import DataError, discover, load_split


def _write_image(path, colour=(200, 30, 30), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _make_dataset(root, classes=("b_cls", "a_cls"), per_class=2):
    for split in ("train", "validation", "test"):
        for c, name in enumerate(classes):
            for i in range(per_class):
                _write_image(root / split / name / f"img{i}.jpg", colour=(100 * c, 50, 50))
    return root


# ---------------------------------------------------------------- data


def test_discover_sorted_classes_and_labels(tmp_path):
    root = _make_dataset(tmp_path / "d", classes=("shoes", "dress", "hat"))
    (root / "train" / "dress" / "notes.txt").write_text("not an image")
    _write_image(root / "train" / "hat" / "UPPER.PNG")
    ds = discover(root)
    assert ds.class_names == ["dress", "hat", "shoes"]
    train = ds.splits["train"]
    names = [f"{p.parent.name}/{p.name}" for p in train.paths]
    assert names == [
        "dress/img0.jpg",
        "dress/img1.jpg",
        "hat/UPPER.PNG",
        "hat/img0.jpg",
        "hat/img1.jpg",
        "shoes/img0.jpg",
        "shoes/img1.jpg",
    ]  # notes.txt is not an image; the upper-case extension is
    assert train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert all(p.suffix.lower() in (".jpg", ".png") for p in train.paths)
    assert ds.summary()["counts"]["train"] == {"dress": 2, "hat": 3, "shoes": 2}


def test_discover_limit_per_class(tmp_path):
    ds = discover(_make_dataset(tmp_path / "d", per_class=3), limit_per_class=1)
    assert len(ds.splits["validation"]) == 2


def test_discover_missing_dir(tmp_path):
    with pytest.raises(DataError, match="not found"):
        discover(tmp_path / "nope")


def test_discover_missing_split(tmp_path):
    root = _make_dataset(tmp_path / "d")
    for f in (root / "test").rglob("*.jpg"):
        f.unlink()
    for d in sorted((root / "test").iterdir()):
        d.rmdir()
    (root / "test").rmdir()
    with pytest.raises(DataError, match="no test folder"):
        discover(root)


def test_discover_empty_class(tmp_path):
    root = _make_dataset(tmp_path / "d")
    for f in (root / "validation" / "a_cls").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"validation.a_cls has no images"):
        discover(root)


def test_discover_class_mismatch(tmp_path):
    root = _make_dataset(tmp_path / "d")
    _write_image(root / "test" / "extra" / "x.jpg")
    with pytest.raises(DataError, match=r"unexpected \['extra'\]"):
        discover(root)


def test_discover_needs_two_classes(tmp_path):
    root = _make_dataset(tmp_path / "d", classes=("only",))
    with pytest.raises(DataError, match="at least 2 class"):
        discover(root)


def test_load_split_skips_and_reports_corrupt(tmp_path, capsys):
    paths = []
    for i in range(4):
        p = tmp_path / f"ok{i}.png"
        _write_image(p, colour=(i * 60, 0, 0))
        paths.append(p)
    bad = tmp_path / "bad.jpg"
    _write_image(bad, size=(64, 64))
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    paths.insert(2, bad)
    images, kept, skipped = load_split(paths, (8, 6), max_unreadable_fraction=0.5)
    assert images.shape == (4, 8, 6, 3) and images.dtype == np.uint8
    assert kept.tolist() == [0, 1, 3, 4]
    assert images[2, 0, 0, 0] == 120  # ok2 (red 120) follows the skipped file
    assert [s.path for s in skipped] == [str(bad)]
    assert skipped[0].code == "invalid_image"
    captured = capsys.readouterr()
    assert "WARNING: skipping unreadable image" in captured.out + captured.err
    assert "bad.jpg" in captured.out + captured.err


def test_load_split_stops_when_too_many_unreadable(tmp_path):
    good = tmp_path / "ok.png"
    _write_image(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="1 of 2 images"):
        load_split([good, bad], (8, 8))


# ---------------------------------------------------------------- augment


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8, y * 12, (x + y) * 4], axis=-1).astype(np.uint8)


def test_hflip_mirrors_columns():
    arr = _gradient()
    out = augment.hflip(arr)
    assert np.array_equal(out[:, 0], arr[:, -1]) and np.array_equal(augment.hflip(out), arr)


def test_identity_affine_is_exact():
    arr = _gradient()
    assert np.array_equal(augment._affine(arr, np.eye(2)), arr)


def test_zoom_out_fills_with_edge_colour():
    arr = np.full((20, 20, 3), 200, np.uint8)
    arr[8:12, 8:12] = 0  # dark square in the middle, plain light background up to the border
    out = augment._affine(arr, np.diag([2.0, 2.0]))  # show twice as much: the border is outside
    assert out[0, 0].tolist() == [200, 200, 200]  # edge colour, not black or white
    assert out[10, 10].tolist() == [0, 0, 0]  # the centre stays put


def test_random_affine_deterministic_and_changes_image():
    arr = _gradient(40, 40)
    a = augment.random_affine(arr, augment.view_rng(7, 2))
    b = augment.random_affine(arr, augment.view_rng(7, 2))
    c = augment.random_affine(arr, augment.view_rng(8, 2))
    assert a.shape == arr.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, arr)


def test_random_framing_crops_inside_and_turns():
    arr = _gradient(60, 60)
    rng = augment.view_rng(3, 2)
    outs = [augment.random_framing(arr, rng) for _ in range(20)]
    assert all(o.shape == arr.shape and o.dtype == np.uint8 for o in outs)
    # A crop of at least half the area, shown at full size: never the identity, never a blank image.
    assert all(not np.array_equal(o, arr) and o.std() > 1 for o in outs)
    # The gradient grows left to right: a crop shows a narrower range of it than the whole image.
    ranges = [int(o[30, :, 0].max()) - int(o[30, :, 0].min()) for o in outs]
    full = int(arr[30, :, 0].max()) - int(arr[30, :, 0].min())
    assert min(ranges) < full


def test_jitter_colour_keeps_grey_grey_and_changes_colour():
    grey = np.full((8, 8, 3), 100, np.uint8)
    rng = augment.view_rng(5, 2)
    draws = [augment.jitter_colour(grey, rng) for _ in range(20)]
    assert all(d.dtype == np.uint8 and d.shape == grey.shape for d in draws)
    assert len({int(d.mean()) for d in draws}) > 5  # brightness and white balance vary
    # White balance tints a grey by at most WHITE_BALANCE: the channels stay within ~8% of each other.
    spread = max(int(d[0, 0].max()) - int(d[0, 0].min()) for d in draws)
    bound = 100 * 2 * augment.WHITE_BALANCE * (1 + augment.BRIGHTNESS) * (1 + augment.CONTRAST)
    assert 0 < spread <= bound * (1 + augment.SATURATION) + 1


def test_photo_view_is_seeded_and_differs_from_affine_view():
    arr = _gradient(40, 40)
    a = augment.make_view(arr, 2, augment.view_rng(7, 2), style="photo")
    b = augment.make_view(arr, 2, augment.view_rng(7, 2), style="photo")
    c = augment.make_view(arr, 2, augment.view_rng(7, 2), style="affine")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="view style"):
        augment.make_view(arr, 2, augment.view_rng(7, 2), style="cartoon")


def test_make_views():
    arr = _gradient()
    views = augment.make_views(arr, 4, augment.view_rng(1, 2))
    assert len(views) == 4
    assert views[0] is arr
    assert np.array_equal(views[1], augment.hflip(arr))
    assert all(v.shape == arr.shape for v in views)


# ---------------------------------------------------------------- metrics


def test_confusion_matrix_counts():
    cm = evaluate.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_metrics_hand_computed():
    # true 0,0,1,2,2,2 ; predicted 0,1,1,2,0,2
    cm = evaluate.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    m = evaluate.per_class_metrics(cm, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    assert (b["precision"], b["recall"], b["f1"]) == (pytest.approx(0.5), 1.0, pytest.approx(2 / 3))
    assert (c["precision"], c["recall"], c["f1"]) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))
    assert m["macro_avg"]["recall"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert m["weighted_avg"]["f1"] == pytest.approx((2 * 0.5 + 1 * 2 / 3 + 3 * 0.8) / 6)


def test_never_predicted_class_has_zero_precision_not_nan():
    m = evaluate.per_class_metrics(evaluate.confusion_matrix([0, 1], [0, 0], 2), ["a", "b"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_softmax_stable_and_normalised():
    p = evaluate.softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    assert np.allclose(p, [[0.5, 0.5], [0.25, 0.75]])


def test_write_report_files(tmp_path):
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [4.0, 0.0]])
    report = evaluate.write_report(tmp_path, logits, np.array([0, 1, 1]), ["cat", "dog"], ["x", "y", "z"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(2 / 3) == report["accuracy"]
    assert saved["confusion_matrix"] == [[1, 0], [1, 1]]
    assert [(r["file"], r["true"], r["predicted"]) for r in saved["misclassified"]] == [("z", "dog", "cat")]
    assert saved["misclassified"][0]["score"] == pytest.approx(1 / (1 + np.exp(-4)), abs=1e-4)
    for png in ("confusion_matrix.png", "per_class_metrics.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    evaluate.plot_training_curves(
        {"accuracy": [0.5, 0.7], "val_accuracy": [0.4, 0.6], "loss": [1, 0.5]},
        tmp_path / "curves.png",
        best_epoch=2,
    )
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- config / imports


def test_every_config_field_has_help_and_validation():
    helps = field_help()
    names = [n for n in TrainConfig.__dataclass_fields__ if n != "resolved_cache_dir"]
    assert set(names) <= set(helps)
    cfg = TrainConfig(output_dir="out")
    assert str(cfg.resolved_cache_dir) == "out/cache"
    with pytest.raises(ValueError, match="at least 71"):
        TrainConfig(image_size=32)
    with pytest.raises(ValueError, match="feature_backend"):
        TrainConfig(feature_backend="onnx")


def test_pooled_blocks_parsed_sorted_and_checked():
    assert parse_blocks("14,13") == (13, 14)
    assert parse_blocks(" 14 ") == (14,)
    assert parse_blocks("13,13,14") == (13, 14)
    assert TrainConfig().blocks == (11, 12, 13, 14)  # the default recipe
    for bad in ("", "1,14", "15", "13;14", "last"):
        with pytest.raises(ValueError, match="pooled_blocks"):
            parse_blocks(bad)
    with pytest.raises(ValueError, match="pooled_blocks"):
        TrainConfig(pooled_blocks="0")


def test_pure_modules_do_not_import_tensorflow():
    code = (
        "import sys, train.data, train.augment, train.evaluate, train.config, train.__main__;"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class _Options:  # at module level: the CLI resolves the annotations in this module's namespace
    rate: float | None = option(None, "a rate; None = automatic")
    folder: Path | None = option(None, "a folder")
    flag: bool = option(True, "a switch")
    mode: str = option("a", "a mode", choices=("a", "b"))


def test_cli_is_generated_from_field_metadata_optional_floats_included():
    parser = build_parser(_Options)
    args = parser.parse_args(["--rate", "0.25", "--folder", "x", "--no-flag", "--mode", "b"])
    assert (args.rate, args.folder, args.flag, args.mode) == (0.25, Path("x"), False, "b")
    assert parser.parse_args([]).rate is None
    assert "a rate; None = automatic" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_train_cli_help_is_the_config_metadata():
    text = " ".join(build_parser().format_help().split())
    for name, help_text in field_help().items():
        assert f"--{name.replace('_', '-')}" in text
        assert " ".join(help_text.split()) in text


@pytest.mark.parametrize("error", ["AssemblyError", "DataError", "WeightsError"])
def test_expected_training_failures_exit_2_with_one_line(monkeypatch, capsys, error):
    import types

    from train import errors
    from train.__main__ import main

    def fail(config):
        raise getattr(errors, error)("the cache belongs to another extractor")

    # Stands in for the TensorFlow-heavy trainer: only how main() reports the failure is tested here.
    monkeypatch.setitem(sys.modules, "train.trainer", types.SimpleNamespace(train=fail))
    assert main(["--output-dir", "unused"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the cache belongs to another extractor\n"

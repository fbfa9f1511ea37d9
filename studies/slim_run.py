"""A trained run as what differs from the ImageNet base, in pieces small enough to travel, and back.

A fine-tuned ``model.keras`` is about 93 MB, most of it the Xception weights that fine-tuning left as they
were. Where only small files can come back from a machine (the lent GPU machines return at most 8 files of
16 MiB, 64 MiB in all), ``pack`` writes the variables that differ from a fresh base loaded with the run's
weights (blocks 13-14, the heads, the standardization: 31.7 MiB for a 5-head run) as ``.npz`` pieces, and
the run's small files (config, labels, metrics, history, figures, the model's architecture and the list of
pieces) as one ``run.tar``. ``unpack`` rebuilds ``model.keras`` from them and the same weights file, on any
Keras backend; a missing piece is named, never filled in from the base. With ``--data-dir`` it scores the
rebuilt model on the test split and checks that it gives the run's own figures.

    # where the run was trained (e.g. KERAS_BACKEND=jax on the GPU machine)
    python -m studies.slim_run pack artifacts/ft --out-dir $OUT
    # here
    python -m studies.slim_run unpack DOWNLOADED --output-dir artifacts/ft --weights $W --data-dir $D
    make convert TRAIN_DIR=artifacts/ft DATA_DIR=$D
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lambda_function.jsonfile import JSONFileError, read_json_object  # noqa: E402
from train.config import CONFIG_FILE  # noqa: E402
from train.errors import TrainError  # noqa: E402

MODEL_FILE = "model.keras"
ARCHITECTURE_FILE = "architecture.json"  # the config.json inside model.keras
# {"pieces": {piece: [variable paths]}}: a lost piece is named, never filled in from the base.
MANIFEST_FILE = "pieces.json"
SMALL_FILES = "run.tar"
PIECE_PREFIX = "weights-"
MAX_PIECE_MIB = 15.0  # under the 16 MiB a file may have to come back from a lent machine
# What a run folder holds besides the model that unpack needs or a person reads; the cache stays behind.
RUN_SUFFIXES = (".json", ".png", ".md")


class SlimRunError(TrainError):
    """A run folder or a set of pieces that cannot be packed or unpacked as asked."""


def read_run_file(path: Path, what: str, key: str):
    """``key`` of the JSON object in ``path``; a missing, unreadable or misshapen file is a SlimRunError."""
    try:
        return read_json_object(path, what, required=(key,))[key]
    except JSONFileError as exc:
        raise SlimRunError(str(exc)) from None


def run_config(run_dir: Path) -> dict:
    return read_run_file(run_dir / CONFIG_FILE, "Training config", "config")


def reference_variables(image_size: int, weights: str) -> dict[str, np.ndarray]:
    """{variable path: value} of a fresh base loaded with ``weights``: what a run starts from.

    A path is its layer's name, and Keras names the base's unnamed layers (``conv2d``, ``conv2d_1``, ...) by
    counters global to the process: the counters are reset first, so the names are those of the first base
    a process builds, as in ``python -m train``. Call it before building or loading any other model.
    """
    import keras

    from train.features import xception_base

    keras.backend.clear_session()
    base = xception_base(image_size, weights)
    return {v.path: keras.ops.convert_to_numpy(v) for v in base.weights}


def model_variables(model) -> dict[str, np.ndarray]:
    import keras

    values: dict[str, np.ndarray] = {}
    for v in model.weights:
        if v.path in values:
            raise SlimRunError(f"two variables share the path {v.path!r}: cannot name the pieces")
        values[v.path] = keras.ops.convert_to_numpy(v)
    return values


def pack(run_dir: Path, out_dir: Path, weights: str | None = None, max_mib: float = MAX_PIECE_MIB) -> dict:
    """Write ``run.tar`` and the pieces into ``out_dir``; return what was written."""
    import keras

    import train.model  # noqa: F401  (registers the calibration layers, so model.keras loads)

    config = run_config(run_dir)
    reference = reference_variables(config["image_size"], weights or config["weights"])
    model = keras.saving.load_model(run_dir / MODEL_FILE)
    changed = {
        path: value
        for path, value in model_variables(model).items()
        if path not in reference or not np.array_equal(reference[path], value)
    }
    limit = int(max_mib * 2**20)
    pieces: list[dict[str, np.ndarray]] = [{}]
    sizes = [0]
    for path, value in changed.items():  # in the model's order, a new piece when the next would overflow
        if value.nbytes > limit:
            raise SlimRunError(f"{path} alone is {value.nbytes / 2**20:.1f} MiB, over --max-mib {max_mib}")
        if sizes[-1] + value.nbytes > limit:
            pieces.append({})
            sizes.append(0)
        pieces[-1][path] = value
        sizes[-1] += value.nbytes
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for index, piece in enumerate(pieces):
        name = f"{PIECE_PREFIX}{index}.npz"
        # npz keys cannot hold '/': the paths travel as a list beside the arrays.
        arrays = {f"v{i}": value for i, value in enumerate(piece.values())}
        np.savez(out_dir / name, paths=np.array(list(piece)), **arrays)
        manifest[name] = list(piece)
    with zipfile.ZipFile(run_dir / MODEL_FILE) as archive:
        architecture = archive.read("config.json")
    with tarfile.open(out_dir / SMALL_FILES, "w") as tar:
        for path in sorted(run_dir.iterdir()):
            if path.is_file() and path.suffix in RUN_SUFFIXES:
                tar.add(path, arcname=path.name)
        listing = json.dumps({"pieces": manifest}).encode()
        for name, data in ((ARCHITECTURE_FILE, architecture), (MANIFEST_FILE, listing)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    mib = sum(v.nbytes for v in changed.values()) / 2**20
    count = f"{len(changed)} of {len(model.weights)} variables"
    print(f"packed {count} ({mib:.1f} MiB) in {len(manifest)} piece(s) in {out_dir}")
    return manifest


def unpack(pieces_dir: Path, output_dir: Path, weights: str | None = None) -> Path:
    """Rebuild ``output_dir/model.keras`` (and the run's small files) from what ``pack`` wrote."""
    import keras

    import train.model  # noqa: F401

    if not (pieces_dir / SMALL_FILES).is_file():
        raise SlimRunError(f"{pieces_dir / SMALL_FILES} not found: is {pieces_dir} what pack wrote?")
    with tarfile.open(pieces_dir / SMALL_FILES) as tar:
        output_dir.mkdir(parents=True, exist_ok=True)
        tar.extractall(output_dir, filter="data")
    config = run_config(output_dir)
    architecture = (output_dir / ARCHITECTURE_FILE).read_text()
    values = reference_variables(config["image_size"], weights or config["weights"])
    model = keras.models.model_from_json(architecture)  # its layers' names are in the architecture
    manifest = read_run_file(output_dir / MANIFEST_FILE, "List of pieces", "pieces")
    for name, paths in manifest.items():
        if not (pieces_dir / name).is_file():
            raise SlimRunError(f"piece {name} is missing from {pieces_dir} (it holds {len(paths)} variables)")
        with np.load(pieces_dir / name) as piece:
            if [str(p) for p in piece["paths"]] != paths:
                raise SlimRunError(f"{pieces_dir / name} is not the piece pack wrote under that name")
            values.update({path: piece[f"v{i}"] for i, path in enumerate(paths)})
    variables = model.weights
    missing = [v.path for v in variables if v.path not in values]
    if missing:
        raise SlimRunError(f"{len(missing)} variable(s) neither in the pieces nor in the base: {missing[:3]}")
    for v in variables:
        if tuple(v.shape) != values[v.path].shape:
            found = values[v.path].shape
            raise SlimRunError(f"{v.path}: shape {found} in the pieces, {tuple(v.shape)} in the model")
        v.assign(values[v.path])
    model.save(output_dir / MODEL_FILE)
    print(f"rebuilt {output_dir / MODEL_FILE} from {len(manifest)} piece(s) and the base's weights")
    return output_dir / MODEL_FILE


def check_against_run(model_path: Path, data_dir: Path) -> dict:
    """Score the rebuilt model on the test split; its figures must be the run's own (metrics.json)."""
    from train.evaluate import evaluate_saved_model

    trained = read_run_file(model_path.with_name("metrics.json"), "Run metrics", "calibration")["test"]
    check_dir = model_path.parent / "unpack-check"
    report = evaluate_saved_model(model_path, data_dir=data_dir, split="test", output_dir=check_dir)
    again = report["calibration"]
    same = again["top1"] == trained["top1"] and abs(again["ece"] - trained["ece"]) < 1e-4
    print(
        f"test split: top-1 {again['top1']:.4f} / ECE {again['ece']:.4f} rebuilt, "
        f"{trained['top1']:.4f} / {trained['ece']:.4f} in the run: {'same' if same else 'DIFFERENT'}"
    )
    if not same:
        raise SlimRunError("the rebuilt model does not reproduce the run's test figures")
    return again


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.slim_run", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="RUN_DIR -> run.tar + weights-N.npz in --out-dir")
    packing.add_argument("run_dir", type=Path)
    packing.add_argument("--out-dir", type=Path, required=True)
    packing.add_argument("--weights", help="the base's weights file (default: the run's config)")
    packing.add_argument("--max-mib", type=float, default=MAX_PIECE_MIB, help="largest piece, MiB")
    unpacking = commands.add_parser("unpack", help="what pack wrote -> --output-dir/model.keras")
    unpacking.add_argument("pieces_dir", type=Path)
    unpacking.add_argument("--output-dir", type=Path, required=True)
    unpacking.add_argument("--weights", help="the same weights file, here (default: the run's config)")
    unpacking.add_argument("--data-dir", type=Path, help="check the rebuilt model on this test split")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            pack(args.run_dir, args.out_dir, args.weights, args.max_mib)
        else:
            model_path = unpack(args.pieces_dir, args.output_dir, args.weights)
            if args.data_dir is not None:
                check_against_run(model_path, args.data_dir)
    except TrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

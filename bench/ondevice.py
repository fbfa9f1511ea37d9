"""MediaPipe's ImageClassifier on the on-device model against our CLI on a dataset split.

    python -m bench.ondevice --ondevice web/model/model.tflite \\
        --data-dir ../shared/data/clothing-dataset-small --split test --json build/ondevice_eval.json

Our CLI (lambda_function: Pillow decode, bilinear resize with antialiasing to 352x352 ignoring the
aspect ratio, the logits model + softmax) is the reference. MediaPipe is given the photo the way an app
would give it, in several framings, so the effect of its own resize and of a crop is measured:

- ``full photo``: the whole decoded (upright) photo; MediaPipe resizes it to the model's input itself;
- ``our pixels``: our preprocessed 352x352 pixels, so MediaPipe does not resize (isolates the runtime);
- ``centre square``: the largest centred square (what a camera preview or a square crop gives);
- ``padded square``: the photo padded with white to a square (keeps the aspect ratio).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench import record
from convert.data import list_split, stratified_sample
from lambda_function.classifier import Classifier
from lambda_function.preprocess import BACKGROUND, decode_image, resize_image


def centre_square(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def padded_square(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    side = max(height, width)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = BACKGROUND
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = pixels
    return canvas


FRAMINGS = {
    "full photo": lambda photo, ours: photo,
    "our pixels": lambda photo, ours: ours,
    "centre square": lambda photo, ours: centre_square(photo),
    "padded square": lambda photo, ours: padded_square(photo),
}


def mediapipe_classifier(path: Path):
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision

    options = vision.ImageClassifierOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=str(path)), max_results=-1
    )
    return vision.ImageClassifier.create_from_options(options)


def mediapipe_probs(classifier, pixels: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    import mediapipe as mp

    image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels))
    categories = classifier.classify(image).classifications[0].categories
    scores = {c.category_name: c.score for c in categories}
    return np.array([scores[label] for label in labels], np.float64)


def evaluate(ondevice: Path, cli_model: Path, data_dir: Path, split: str, limit: int | None) -> dict:
    cli = Classifier.from_path(cli_model)
    items = stratified_sample(list_split(data_dir, split, list(cli.labels)), limit)
    cli_probs, targets = [], []
    probs: dict[str, list] = {name: [] for name in FRAMINGS}
    seconds: dict[str, float] = dict.fromkeys(FRAMINGS, 0.0)
    with mediapipe_classifier(ondevice) as classifier:
        for path, target in tqdm(items, desc=f"{split} images", unit="image"):
            photo_image = decode_image(path.read_bytes())
            ours = np.asarray(resize_image(photo_image, cli.input_size), np.uint8)
            photo = np.asarray(photo_image, np.uint8)
            cli_probs.append(cli.predict(ours))
            targets.append(target)
            for name, frame in FRAMINGS.items():
                start = time.perf_counter()
                probs[name].append(mediapipe_probs(classifier, frame(photo, ours), cli.labels))
                seconds[name] += time.perf_counter() - start
    cli_probs_arr, targets_arr = np.array(cli_probs), np.array(targets)
    cli_top1 = cli_probs_arr.argmax(-1)
    rows = [{"framing": "our CLI (reference)", "accuracy": float((cli_top1 == targets_arr).mean())}]
    for name in FRAMINGS:
        p = np.array(probs[name])
        rows.append(
            {
                "framing": f"MediaPipe, {name}",
                "accuracy": float((p.argmax(-1) == targets_arr).mean()),
                "top1_agreement_with_cli": float((p.argmax(-1) == cli_top1).mean()),
                "mean_abs_diff": float(np.abs(p - cli_probs_arr).mean()),
                "max_abs_diff": float(np.abs(p - cli_probs_arr).max()),
                "max_prob_sum_error": float(np.abs(p.sum(-1) - 1).max()),
                "ms_per_image": 1000.0 * seconds[name] / len(items),
            }
        )
    return {
        "ondevice_model": str(ondevice),
        "cli_model": str(cli_model),
        "split": split,
        "images": len(items),
        "rows": rows,
    }


def to_markdown(result: dict) -> str:
    lines = [
        f"{result['images']} {result['split']} images",
        "",
        "| framing | accuracy (%) | top-1 agreement with CLI | mean Δp | max Δp | ms/image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        agree = row.get("top1_agreement_with_cli")
        cells = [
            row["framing"],
            f"{100 * row['accuracy']:.2f}",
            "–" if agree is None else f"{100 * agree:.2f}%",
            f"{row['mean_abs_diff']:.2g}" if "mean_abs_diff" in row else "–",
            f"{row['max_abs_diff']:.2g}" if "max_abs_diff" in row else "–",
            f"{row['ms_per_image']:.0f}" if "ms_per_image" in row else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def draw(figure, result: dict) -> None:
    accuracy, agreement = figure.subplots(1, 2, sharey=True)
    rows = result["rows"]
    names = [row["framing"] for row in rows]
    record.bars(accuracy, names, [100 * row["accuracy"] for row in rows], f"accuracy on {result['split']}, %")
    record.bars(
        agreement,
        names,
        [100 * (row.get("top1_agreement_with_cli") or 0) for row in rows],
        "top-1 = CLI's, %",
    )
    accuracy.set_title(f"MediaPipe ImageClassifier, {result['images']} images", fontsize=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ondevice", type=Path, default=Path("web/model/model.tflite"))
    parser.add_argument("--cli-model", type=Path, default=Path("lambda_function/model/model.tflite"))
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, help="N images, classes interleaved (a quick look)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = evaluate(args.ondevice, args.cli_model, args.data_dir, args.split, args.limit)
    print(to_markdown(result))
    if args.json:
        record.write(args.json, result, draw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

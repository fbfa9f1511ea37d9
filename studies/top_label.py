"""Is the temperature what costs the ranking? On the held-out logits a ``studies.calibration`` run saved.

A temperature divides every logit by T before the softmax, and a photo's top score then depends on all its
logits, not on how much it trusts its top class alone: with T = 4 the photos ranked most confident are not
the ones T = 1 ranks so. The 70% most confident photos are what issue 19's ranking target counts, so this
compares, per configuration and seed (extra photos, contributor-grouped folds):

* the nested temperature of ``make train`` (each fold calibrated by a map fitted on the other rows);
* the ranking of T = 1, which any increasing map of the top score keeps (a "top-label" calibration);
* such a map: Platt scaling of the top score's log-odds (``train.calibration``'s ``top-label`` map, 2
  numbers, nested the same way), its ECE, and how many answers it changed (none: it floors the top logit);
* the ECE that a perfectly calibrated model with that map's top scores would show on these photos (mean and
  90th percentile of simulated label draws, ``train.calibration.ece_if_calibrated``): on ~200 photos ECE
  is far from 0 even for honest scores, and a measured one is judged against that spread.
* that map's Brier score and log-loss over every class: proper scores, which a binned ECE on ~200 photos
  is too noisy to replace (a lever that sharpens wrong answers shows here first).

    python -m studies.top_label artifacts/study_onemap/study_calibration_logits.json [MORE.json ...]

Several files (runs of the same photos, e.g. 5 heads in one run and 10 in another) are read as one table.
With ``--against CONFIG`` a second table pairs every other configuration with CONFIG seed by seed: the mean
difference and on how many seeds it was better and worse (one head seed moves top-1 by 2-3 points on 199
photos, so a lever is judged on paired seeds, not on means of different draws).

``--extra-share S`` adds each configuration again with its map fitted with the extra photos holding share S
of the fit's weight (``python -m train --calibration-extra-share``; without it every photo weighs the same).

With ``--mix FIRST SECOND`` a configuration "FIRST + SECOND" joins the table: for each seed s, the mean of
FIRST's logits at seed s and SECOND's at seed s + ``--mix-shift``. Two ensembles of the same number of heads
averaged are one ensemble of twice as many (the model averages its heads' logits), so this scores an ensemble
of two kinds of heads without training it; ``--mix A A --mix-shift 1`` is the same number of heads of one
kind, the fair comparison (runs with neighbouring seeds share no head).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lambda_function.classifier import softmax  # noqa: E402
from train.calibration import (  # noqa: E402
    brier,
    coverage_accuracy,
    cross_calibrated,
    ece,
    ece_if_calibrated,
    interleaved_folds,
    nll,
)
from train.heldout import HeldOut  # noqa: E402

COVERAGE = 0.7


def compare(
    run: dict, labels: np.ndarray, chunks: list[np.ndarray], n_val: int, extra_share: float | None = None
) -> dict:
    logits = np.concatenate([np.asarray(run["validation"]), np.asarray(run["extra"])])
    extra_y = labels[n_val:]
    raw = softmax(logits)
    # train's own rule for the pool's weights: the extra photos hold extra_share, validation the rest
    weights = HeldOut(logits[:n_val], labels[:n_val], logits[n_val:], extra_y).weights(extra_share)
    temperature = cross_calibrated("temperature", logits, labels, chunks, weights)[n_val:]
    # Nested like the temperature: each fold's map differs, which can reorder photos across folds.
    top = cross_calibrated("top-label", logits, labels, chunks, weights)[n_val:]
    floor = ece_if_calibrated(top.max(axis=1))
    return {
        "top1": float((raw[n_val:].argmax(axis=1) == extra_y).mean()),
        "temperature_ece": ece(temperature, extra_y),
        "temperature_cov70": coverage_accuracy(temperature, extra_y, COVERAGE),
        "t1_cov70": coverage_accuracy(raw[n_val:], extra_y, COVERAGE),
        "top_label_ece": ece(top, extra_y),
        "top_label_cov70": coverage_accuracy(top, extra_y, COVERAGE),
        "top_label_brier": brier(top, extra_y),
        "top_label_log_loss": nll(np.log(np.clip(top, 1e-12, None)), extra_y),  # softmax(log p) = p
        "ece_if_calibrated": float(floor.mean()),
        "ece_if_calibrated_p90": float(np.quantile(floor, 0.9)),
        "answers_changed": int((top.argmax(axis=1) != raw[n_val:].argmax(axis=1)).sum()),
    }


def merged(files: list[dict]) -> dict:
    """One set of runs from several saved files; they must hold the same photos, labels and folds."""
    first = files[0]
    for other in files[1:]:
        if any(other[key] != first[key] for key in ("labels", "extra_folds")):
            raise SystemExit("the logits files hold different photos, labels or folds")
    runs = {}
    for saved in files:
        for run in saved["runs"]:  # a configuration and seed in two files is the same run: keep one
            runs.setdefault((run["config"], run["seed"]), run)
    return {**first, "runs": list(runs.values())}


def mixed_runs(runs: list[dict], first: str, second: str, shift: int = 0) -> list[dict]:
    """Runs of the configuration "FIRST + SECOND": seed s averages FIRST's seed s and SECOND's seed s + shift
    (seeds without that partner are left out)."""
    by_key = {(run["config"], run["seed"]): run for run in runs}
    known = sorted({run["config"] for run in runs})
    for name in (first, second):
        if name not in known:
            raise SystemExit(f"--mix {name!r} is none of: {', '.join(known)}")
    name = f"{first} + {second}" + (f" (seed {shift:+d})" if shift else "")
    mixed = []
    for (config, seed), one in by_key.items():
        other = by_key.get((second, seed + shift))
        if config != first or other is None:
            continue
        mixed.append({"config": name, "seed": seed, **{
            part: ((np.asarray(one[part]) + np.asarray(other[part])) / 2).tolist()
            for part in ("validation", "extra")
        }})  # fmt: skip
    return mixed


def read_logits(paths: list[Path]) -> tuple[dict, np.ndarray, list[np.ndarray], int]:
    """Saved studies as one (``merged``), every held-out label (validation, then the extra photos), the
    chunks the nested calibration holds out in turn (fifths of validation, then the extra folds, as row
    numbers of those labels) and the number of validation rows."""
    saved = merged([json.loads(path.read_text(encoding="utf-8")) for path in paths])
    val_y, extra_y = np.asarray(saved["labels"]["validation"]), np.asarray(saved["labels"]["extra"])
    folds = [np.asarray(fold) for fold in saved["extra_folds"]]
    n_val = len(val_y)
    chunks = interleaved_folds(n_val, len(folds)) + [fold + n_val for fold in folds]
    return saved, np.concatenate([val_y, extra_y]), chunks, n_val


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.top_label", description=__doc__.split("\n")[0])
    parser.add_argument(
        "logits", type=Path, nargs="+", help="study_calibration_logits.json of python -m studies.calibration"
    )
    parser.add_argument("--against", help="a configuration to pair every other one with, seed by seed")
    parser.add_argument(
        "--mix", nargs=2, action="append", default=[], metavar=("FIRST", "SECOND"),
        help="add FIRST + SECOND: their logits averaged seed by seed, an ensemble of both kinds of heads",
    )  # fmt: skip
    parser.add_argument(
        "--mix-shift", type=int, default=0, help="--mix pairs FIRST's seed s with SECOND's seed s + this"
    )
    parser.add_argument(
        "--extra-share", type=float, action="append", default=[],
        help="also fit each map with the extra photos holding this share of the weight (0-1; repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if any(not 0.0 <= share <= 1.0 for share in args.extra_share):
        parser.error("--extra-share must be in [0, 1]")
    saved, labels, chunks, n_val = read_logits(args.logits)
    saved["runs"] += [run for pair in args.mix for run in mixed_runs(saved["runs"], *pair, args.mix_shift)]
    by_config: dict[str, list[dict]] = {}
    for share in [None, *args.extra_share]:
        suffix = "" if share is None else f" [map: extra share {share:g}]"
        for run in saved["runs"]:
            by_config.setdefault(run["config"] + suffix, []).append(
                {"seed": run["seed"], **compare(run, labels, chunks, n_val, share)}
            )
    print(table(by_config))
    if args.against:
        if args.against not in by_config:
            raise SystemExit(f"--against {args.against!r} is none of: {', '.join(by_config)}")
        print()
        print(paired(by_config, args.against))
    return 0


PERCENT = {"top1", "temperature_cov70", "t1_cov70", "top_label_cov70"}


def table(by_config: dict[str, list[dict]]) -> str:
    """One markdown row per configuration: mean (range over seeds) of every figure ``compare`` gives."""
    columns = {
        "top1": "top-1",
        "temperature_ece": "temperature: ECE",
        "temperature_cov70": "temperature: 70% most confident",
        "t1_cov70": "T = 1 (any one increasing map): 70%",
        "top_label_ece": "top-label Platt: ECE",
        "top_label_cov70": "top-label Platt, nested: 70%",
        "top_label_brier": "top-label Platt: Brier",
        "top_label_log_loss": "log-loss",
        "ece_if_calibrated": "ECE a calibrated model would show: mean",
        "ece_if_calibrated_p90": "90th percentile",
        "answers_changed": "answers changed",
    }
    lines = [
        "| configuration | seeds | " + " | ".join(columns.values()) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for config, rows in by_config.items():
        cells = []
        for key in columns:
            values = np.array([row[key] for row in rows])
            scale, unit, digits = (100, "%", 1) if key in PERCENT else (1, "", 3)
            if key == "answers_changed":
                scale, unit, digits = 1, "", 0
            cells.append(
                f"{scale * values.mean():.{digits}f}{unit} ({scale * values.min():.{digits}f}-"
                f"{scale * values.max():.{digits}f})"
            )
        lines.append(f"| {config} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What a paired table compares, and which way is better: (column, key, scale, unit, higher is better).
PAIRED = (
    ("top-1", "top1", 100, " pt", True),
    ("ECE (top-label)", "top_label_ece", 1, "", False),
    ("70% most confident (top-label, nested)", "top_label_cov70", 100, " pt", True),
    ("Brier (top-label)", "top_label_brier", 1, "", False),
    ("log-loss (top-label)", "top_label_log_loss", 1, "", False),
)


def paired(by_config: dict[str, list[dict]], against: str) -> str:
    """Each configuration minus ``against`` on the seeds both ran: mean difference (better / worse seeds)."""
    base = {row["seed"]: row for row in by_config[against]}
    lines = [
        f"| against {against} | paired seeds | " + " | ".join(c[0] for c in PAIRED) + " |",
        "|---|---:|" + "---:|" * len(PAIRED),
    ]
    for config, rows in by_config.items():
        pairs = [(row, base[row["seed"]]) for row in rows if row["seed"] in base]
        if config == against or not pairs:
            continue
        cells = []
        for _, key, scale, unit, higher in PAIRED:
            diff = np.array([row[key] - ref[key] for row, ref in pairs])
            up, down = int((diff > 1e-9).sum()), int((diff < -1e-9).sum())
            better, worse = (up, down) if higher else (down, up)
            mean = f"{scale * diff.mean():+.{1 if unit else 3}f}{unit}"
            cells.append(f"{mean} (better {better}, worse {worse})")
        lines.append(f"| {config} | {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Do other contributors' photos want other class priors? Logit adjustment on a study's saved logits.

The heads learn the class mix they train on: a quarter of train is t-shirts, 6% outerwear; the extra photos
(other contributors, many kids' clothes) have 14% t-shirts and 15% outerwear. Subtracting ``tau * log(prior)``
from the logits (Menon et al., 2021, "logit adjustment") moves the answer towards the rarer classes; tau = 1
aims at a uniform prior, tau = 0 is the model as trained. Nothing is retrained: this reads
``study_calibration_logits.json`` of ``python -m studies.calibration``.

The prior is the one each fold's heads trained on: train's class counts plus the other folds' extra photos
at their loss weight (the validation logits come from the first fold's heads, so its prior). Rows:

* ``tau = T``: one fixed tau for every photo;
* ``tau nested``: each extra fold adjusted by the tau (grid 0-1.5) with the best top-1 on the *other*
  extra folds, the contributors the fold's heads and tau never saw (validation, train's own mix, would
  choose tau = 0). Validation takes the tau chosen on all the extra photos.

Each adjusted configuration is then scored as ``studies.top_label`` scores any run (top-1, ECE after the
nested top-label map, the 70% most confident) and paired seed by seed with the unadjusted run.

    python -m studies.prior_shift artifacts/study_recipe/study_calibration_logits.json --data-dir DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from studies.top_label import compare, paired, read_logits, table  # noqa: E402

TAUS = (0.25, 0.5, 1.0)
GRID = np.round(np.arange(0.0, 1.51, 0.1), 2)


def fold_priors(train_counts: np.ndarray, extra_y: np.ndarray, folds: list[np.ndarray], weight: float):
    """Per fold, the class shares its heads trained on: train + the other folds' extra photos x weight."""
    priors = []
    for held in folds:
        outside = np.setdiff1d(np.arange(len(extra_y)), held)
        counts = train_counts + weight * np.bincount(extra_y[outside], minlength=len(train_counts))
        priors.append(counts / counts.sum())
    return priors


def adjusted(run: dict, folds, priors, fold_taus: list[float], validation_tau: float) -> dict:
    """The run with each extra fold's logits minus ``fold_taus[k] * log(priors[k])``, and validation's minus
    ``validation_tau * log(priors[0])`` (its logits come from the first fold's heads)."""
    extra = np.array(run["extra"], dtype=np.float64)
    for held, prior, tau in zip(folds, priors, fold_taus, strict=True):
        extra[held] -= tau * np.log(prior)
    validation = np.asarray(run["validation"]) - validation_tau * np.log(priors[0])
    return {**run, "extra": extra.tolist(), "validation": validation.tolist()}


def best_tau(run: dict, folds, priors, extra_y: np.ndarray, rows: np.ndarray) -> float:
    """The grid's tau with the best top-1 on the extra photos ``rows`` (the smallest on a tie)."""
    extra = np.asarray(run["extra"])
    scores = []
    for tau in GRID:
        correct = 0
        for held, prior in zip(folds, priors, strict=True):
            picked = np.intersect1d(held, rows)
            correct += int(((extra[picked] - tau * np.log(prior)).argmax(axis=1) == extra_y[picked]).sum())
        scores.append(correct)
    return float(GRID[int(np.argmax(scores))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.prior_shift", description=__doc__.split("\n")[0])
    parser.add_argument("logits", type=Path, nargs="+", help="study_calibration_logits.json files")
    parser.add_argument("--data-dir", type=Path, required=True, help="the dataset whose train/ the heads saw")
    parser.add_argument("--config", help="only this configuration (default: every one)")
    args = parser.parse_args(argv)
    from train.data import DataError, discover

    try:
        dataset = discover(args.data_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    saved, labels, chunks, n_val = read_logits(args.logits)
    extra_y, folds = labels[n_val:], [np.asarray(fold) for fold in saved["extra_folds"]]
    num_classes = len(dataset.class_names)
    train_counts = np.bincount(dataset.splits["train"].labels, minlength=num_classes).astype(np.float64)
    by_config: dict[str, list[dict]] = {}
    for run in saved["runs"]:
        if args.config and run["config"] != args.config:
            continue
        # "... + extra xW": those heads saw the other folds' extra photos at weight W; others saw none.
        weight = float(run["config"].split("extra x")[1].split()[0]) if "extra x" in run["config"] else 0.0
        priors = fold_priors(train_counts, extra_y, folds, weight)
        variants = {run["config"]: run}
        for tau in TAUS:
            variants[f"{run['config']}, tau {tau:g}"] = adjusted(run, folds, priors, [tau] * len(folds), tau)
        everything = np.arange(len(extra_y))
        nested = [best_tau(run, folds, priors, extra_y, np.setdiff1d(everything, held)) for held in folds]
        on_all = best_tau(run, folds, priors, extra_y, everything)
        variants[f"{run['config']}, tau nested"] = adjusted(run, folds, priors, nested, on_all)
        print(f"{run['config']} seed {run['seed']}: nested taus {nested}, on all extra photos {on_all}")
        for name, logits in variants.items():
            by_config.setdefault(name, []).append(
                {"seed": run["seed"], **compare(logits, labels, chunks, n_val)}
            )
    if not by_config:
        print(f"error: no configuration {args.config!r} in the logits", file=sys.stderr)
        return 2
    print(table(by_config))
    for config in [name for name in by_config if ", tau" not in name]:
        print()
        print(paired({k: v for k, v in by_config.items() if k.startswith(config)}, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())

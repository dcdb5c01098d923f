"""Benchmark: how trained models hold up when the test scans come from another "scanner".

For each model (the first is the baseline the others are compared with):
- internal test accuracy, and sensitivity per estimated acquisition kind (the split manifest's column), with
  Wilson intervals;
- how many of its test errors the shortcut model shares (gradient-boosted trees on the split stage's
  anatomy-free statistics, fitted on the train split): errors that follow the source, not the anatomy;
- accuracy at 0.5 and at its operating point under intensity transforms that change how a sequence looks
  but not the anatomy (gamma, contrast, a non-monotonic remapping, inversion), with McNemar's exact test
  against the unchanged scans and, for every model after the first, against the baseline on the same scans.

The decoded images are remapped in uint8, then resized and normalised exactly as predict does. The transforms
are fixed members of the families `intensity_looks` trains with: a model trained with looks has seen their
kind (not these scans), so the figures say how much the augmentation buys, not how another scanner will do.

`--subset val` gives the same figures on the validation split: compare configurations there, and read the test
split once for the one you chose.

Usage: python benchmarks/intensity_shift.py [--subset test|val] [--split data/split] [--dataset data/dataset]
       MODEL.pt [MODEL.pt ...]
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.contracts import read_split_manifest
from brain_tumor.core.intervals import wilson_interval
from brain_tumor.core.resize import resize_rgb
from brain_tumor.data.shortcuts import STATISTICS, fit_shortcut_models, statistics_table
from brain_tumor.evaluation.metrics import mcnemar, p_tumor
from brain_tumor.evaluation.predictions import predict_logits
from brain_tumor.serving.inference import threshold_file
from brain_tumor.training.checkpoint import load_trained
from brain_tumor.training.intensity import LEVELS

TRANSFORMS = {  # uint8 look-up tables
    "unchanged": LEVELS,
    "gamma 0.6 (brighter)": LEVELS**0.6,
    "gamma 1.6 (darker)": LEVELS**1.6,
    "contrast x1.4": np.clip((LEVELS - 0.5) * 1.4 + 0.5, 0, 1),
    "non-monotonic (mid-grey folded)": np.where(LEVELS < 0.5, LEVELS * 1.6, 0.8 - (LEVELS - 0.5) * 0.8),
    "inverted": 1 - LEVELS,
}


def fraction(k: int, n: int) -> str:
    if not n:
        return "no scans"
    (low,), (high,) = wilson_interval(np.array([k]), np.array([n]))
    return f"{k} / {n} = {k / n:.3f} [{low:.3f}, {high:.3f}]"


def shortcut_predictions(split: Path, dataset: Path, rows: pd.DataFrame, seed: int) -> np.ndarray:
    """The shortcut model's predictions for `rows`: fitted on the train split's statistics, as the split stage
    does."""
    both = read_split_manifest(split).query("split == 'train' or id in @rows.id")
    sizes = pd.read_csv(dataset / "manifest.csv", dtype=str).set_index("id").loc[both["id"]]
    stats = statistics_table([split / f for f in both["file"]], sizes["width"], sizes["height"], both["source"])
    train = (both["split"] == "train").to_numpy()
    model = fit_shortcut_models(stats[train], both["label"].astype(int).to_numpy()[train], seed)["gradient_boosting"]
    x = stats.loc[~train, list(STATISTICS)].to_numpy(np.float64)
    predicted = pd.Series(model.predict(x), index=both["id"][~train].to_numpy())
    return predicted.loc[rows["id"]].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="*", default=[Path("models/transfer.pt")])
    parser.add_argument("--subset", choices=["test", "val"], default="test", help="the split's part to score")
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    parser.add_argument("--seed", type=int, default=42, help="the shortcut model's seed (params: split.seed)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    rows = read_split_manifest(args.split).query("split == @args.subset")
    from PIL import Image

    decoded = [np.asarray(Image.open(args.split / f).convert("RGB")) for f in rows["file"]]
    labels = rows["label"].astype(int).to_numpy()
    shortcut = shortcut_predictions(args.split, args.dataset, rows, args.seed)
    print(f"{len(labels)} {args.subset} scans; the shortcut model alone gets {(shortcut == labels).mean():.4f} right")
    baseline: dict[str, np.ndarray] = {}
    for model_path in args.models:
        model, meta = load_trained(model_path)
        threshold = json.loads(threshold_file(model_path).read_text())["threshold"]
        print(f"\n## {model_path} (operating point {threshold:.4f})\n")
        right_by_transform = {}
        columns = ["transform", "accuracy at 0.5", "sensitivity", "specificity", "at the operating point"]
        compare = ["McNemar vs unchanged"] + (["McNemar vs baseline"] if baseline else [])
        print("| " + " | ".join(columns + compare) + " |\n|" + "---|" * (len(columns) + len(compare)))
        for name, curve in TRANSFORMS.items():
            table = np.round(curve * 255).astype(np.uint8)
            batch = np.stack([resize_rgb(table[rgb], meta["image_size"]) for rgb in decoded])
            score = p_tumor(predict_logits(model, batch, 64))
            right = (score >= 0.5) == (labels == 1)
            right_by_transform[name] = right
            at_point = ((score >= threshold) == (labels == 1)).mean()
            sens, spec = (score[labels == 1] >= 0.5).mean(), (score[labels == 0] < 0.5).mean()
            tests = [
                "-"
                if name == "unchanged"
                else "{} vs {}, p = {:.2g}".format(*mcnemar(right_by_transform["unchanged"], right))
            ]
            if baseline:
                tests.append("{} vs {}, p = {:.2g}".format(*mcnemar(right, baseline[name])))
            print(
                f"| {name} | {right.mean():.4f} | {sens:.4f} | {spec:.4f} | {at_point:.4f} | "
                + " | ".join(tests)
                + " |"
            )
        right = right_by_transform["unchanged"]
        for kind in sorted(rows["acquisition"].unique()):
            tumours = (labels == 1) & (rows["acquisition"] == kind).to_numpy()
            print(f"sensitivity {kind}: {fraction(int(right[tumours].sum()), int(tumours.sum()))}")
        errors = ~right
        shared = int((errors & (shortcut != labels)).sum())
        print(f"errors the shortcut model shares: {fraction(shared, int(errors.sum()))}")
        baseline = baseline or right_by_transform


if __name__ == "__main__":
    main()

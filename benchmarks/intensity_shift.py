"""Benchmark: how a trained model holds up when the test scans come from another "scanner".

The test split's scans go through intensity transforms that change how a sequence looks but not the anatomy
(gamma, contrast, a non-monotonic remapping, inversion), and the model is scored on each at threshold 0.5
and at its operating point, beside the unchanged scans, with McNemar's exact test against them (paired, per
image). The decoded images are remapped in uint8, then resized and normalised exactly as predict does.

Usage: python benchmarks/intensity_shift.py [--split data/split] [--model models/transfer.pt]
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from brain_tumor.checkpoint import load_trained
from brain_tumor.contracts import read_split_manifest
from brain_tumor.evaluate import p_tumor, predict_logits
from brain_tumor.inference import threshold_file
from brain_tumor.resize import resize_rgb

LEVELS = np.arange(256, dtype=np.float64) / 255
TRANSFORMS = {  # uint8 look-up tables
    "unchanged": LEVELS,
    "gamma 0.6 (brighter)": LEVELS**0.6,
    "gamma 1.6 (darker)": LEVELS**1.6,
    "contrast x1.4": np.clip((LEVELS - 0.5) * 1.4 + 0.5, 0, 1),
    "non-monotonic (mid-grey folded)": np.where(LEVELS < 0.5, LEVELS * 1.6, 0.8 - (LEVELS - 0.5) * 0.8),
    "inverted": 1 - LEVELS,
}


def mcnemar(right: np.ndarray, other: np.ndarray) -> tuple[int, int, float]:
    """(only unchanged right, only shifted right, exact two-sided p)."""
    b, c = int((right & ~other).sum()), int((~right & other).sum())
    return b, c, float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--model", type=Path, default=Path("models/transfer.pt"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    model, meta = load_trained(args.model)
    threshold = json.loads(threshold_file(args.model).read_text())["threshold"]
    rows = read_split_manifest(args.split).query("split == 'test'")
    from PIL import Image

    decoded = [np.asarray(Image.open(args.split / f).convert("RGB")) for f in rows["file"]]
    labels = rows["label"].astype(int).to_numpy()
    print(f"{args.model} on {len(labels)} test scans; operating point {threshold:.4f}; load average {load:.2f}")
    columns = ["transform", "accuracy at 0.5", "sensitivity", "specificity", "accuracy at the operating point"]
    print("| " + " | ".join([*columns, "McNemar vs unchanged (0.5)"]) + " |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, curve in TRANSFORMS.items():
        table = np.round(curve * 255).astype(np.uint8)
        batch = np.stack([resize_rgb(table[rgb], meta["image_size"]) for rgb in decoded])
        score = p_tumor(predict_logits(model, batch, 64))
        right = (score >= 0.5) == (labels == 1)
        at_point = ((score >= threshold) == (labels == 1)).mean()
        sens, spec = (score[labels == 1] >= 0.5).mean(), (score[labels == 0] < 0.5).mean()
        base = right if base is None else base
        b, c, p = mcnemar(base, right)
        test = "-" if name == "unchanged" else f"{b} vs {c}, p = {p:.2g}"
        print(f"| {name} | {right.mean():.4f} | {sens:.4f} | {spec:.4f} | {at_point:.4f} | {test} |")


if __name__ == "__main__":
    main()

"""Paired comparison of two runs on the same test images: McNemar's exact test on their disagreements.

    python scripts/mcnemar.py A.csv B.csv [--column predicted_at_threshold]

A.csv and B.csv are evaluate's per-image predictions (metrics/evaluate/predictions/<model>.csv) of two runs
on the same split, e.g. fetched with `dvc get . metrics/evaluate/predictions/transfer.csv --rev <exp-rev>`.
Only the images each run got right and the other wrong count: b (A right, B wrong) and c (B right, A wrong);
under "no difference" each disagreement is a fair coin, so p = the two-sided binomial probability of b in
b + c. Two accuracy intervals that overlap do not show "no difference"; this test, on paired images, can.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from brain_tumor.evaluation.metrics import mcnemar


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--column", default="predicted", help="predicted (threshold 0.5) or predicted_at_threshold")
    args = parser.parse_args(argv)
    a, b = (pd.read_csv(path, dtype=str).set_index("id") for path in (args.a, args.b))
    if set(a.index) != set(b.index):
        sys.exit("error: the two files do not hold the same test images (runs on different splits?)")
    b = b.loc[a.index]
    right_a, right_b = a[args.column] == a["actual"], b[args.column] == b["actual"]
    only_a, only_b, p = mcnemar(right_a.to_numpy(), right_b.to_numpy())
    print(f"images: {len(a)}; accuracy A {right_a.mean():.4f}, B {right_b.mean():.4f} ({args.column})")
    print(f"A right, B wrong: {only_a}; B right, A wrong: {only_b}; McNemar exact two-sided p = {p:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

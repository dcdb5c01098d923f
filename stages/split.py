"""Stage split: data/dataset -> data/split/{train,val,test}/{class}/ + split_manifest.csv, metrics/split.json,
reports/data/."""

from pathlib import Path

from brain_tumor.core.labels import CLASSES, SPLITS
from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage


def main() -> None:
    params = load_params()
    # imported once the params are read, as in every stage: a bad params.yaml is one line before any work
    from brain_tumor.data.split import split_dataset

    report = split_dataset(
        params, Path("data/dataset"), Path("data/split"), Path("metrics/split.json"), Path("reports/data")
    )
    print("split: " + ", ".join(f"{s} {sum(report[s][c] for c in CLASSES)}" for s in SPLITS))


if __name__ == "__main__":
    run_stage(main)

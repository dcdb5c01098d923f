"""Stage split: data/dataset -> data/split/{train,val,test}/{non_tumor,tumor}/ + split_manifest.csv, metrics/split.json, reports/data/."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brain_tumor import split  # noqa: E402
from brain_tumor.common import load_params, run_stage  # noqa: E402


def main() -> None:
    report = split.run(load_params(), Path("data/dataset"), Path("data/split"), Path("metrics/split.json"), Path("reports/data"))
    print("split: " + ", ".join(f"{s} {sum(report[s][c] for c in ('non_tumor', 'tumor'))}" for s in split.SPLITS))


if __name__ == "__main__":
    run_stage(main)

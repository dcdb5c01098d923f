"""Stage ingest: data.source -> data/dataset/ (images/, manifest.csv, files.csv) + metrics/ingest.json."""

from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage


def main() -> None:
    params = load_params()
    # imported once the params are read, as in every stage: a bad params.yaml is one line before any work
    from brain_tumor.data.ingest import build_dataset

    report = build_dataset(params, Path("data/raw"), Path("data/dataset"), Path("metrics/ingest.json"))
    print(
        f"ingest: {report['files_seen']} files seen, {report['accepted']} accepted, "
        f"{report['duplicates']} exact duplicates, {report['rejected']} rejected, "
        f"{report['duplicate_groups']} duplicate groups"
    )


if __name__ == "__main__":
    run_stage(main)

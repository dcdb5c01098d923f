"""Stage ingest: data.source -> data/dataset/ (images/, manifest.csv, files.csv) + metrics/ingest.json."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brain_tumor import ingest  # noqa: E402
from brain_tumor.common import load_params, run_stage  # noqa: E402


def main() -> None:
    report = ingest.run(load_params(), Path("data/raw"), Path("data/dataset"), Path("metrics/ingest.json"))
    print(
        f"ingest: {report['files_seen']} files seen, {report['accepted']} accepted, "
        f"{report['duplicates']} exact duplicates, {report['rejected']} rejected, "
        f"{report['duplicate_groups']} duplicate groups"
    )


if __name__ == "__main__":
    run_stage(main)

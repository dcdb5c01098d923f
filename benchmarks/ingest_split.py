"""Benchmark: ingest + split of a collection (a folder of class folders or the Kaggle layout; default: the
built-in synthetic set, generated from params.yaml's data.synthetic into a scratch folder).

Prints wall time, files/s, peak RSS of the main process and of the largest worker, and the data report.
Usage: python benchmarks/ingest_split.py [DATASET_DIR]   (the real set: data/raw/brain-tumor-mri)
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.data import ingest, split
from brain_tumor.data.synthetic import write_kaggle_layout


def main() -> None:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    data = params.data
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = Path(sys.argv[1]) if len(sys.argv) > 1 else tmp / "synthetic"
        if len(sys.argv) == 1:
            syn = data.synthetic
            write_kaggle_layout(source, syn.n_images, syn.image_size, syn.tumor_fraction, syn.seed)
        start = time.perf_counter()
        report = ingest.ingest_folder(
            source,
            tmp / "dataset",
            **ingest.ingest_settings(data),
        )
        ingested = time.perf_counter()
        split_report = split.split_dataset(params, tmp / "dataset", tmp / "split", tmp / "split.json", tmp / "people")
        done = time.perf_counter()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n = report["files_seen"]
    print(f"source: {source} ({n} files)")
    print(f"ingest: {ingested - start:.1f} s, {n / (ingested - start):.0f} files/s")
    print(f"split:  {done - ingested:.1f} s")
    print(f"total:  {done - start:.1f} s, {n / (done - start):.0f} files/s")
    print(f"peak RSS: main process {own:.0f} MiB, largest worker {workers:.0f} MiB")
    print(
        f"report: accepted {report['accepted']}, exact duplicates {report['duplicates']}, "
        f"rejected {report['rejected']} "
        f"{report['rejected_by_reason']}, duplicate groups {report['duplicate_groups']} "
        f"({report['files_in_duplicate_groups']} files, largest {report['largest_duplicate_group']}), "
        f"label conflicts {report['label_conflict_groups']}"
    )
    print("split:  " + ", ".join(f"{s} {split_report[s]}" for s in split.SPLITS))
    grouping, leakage = split_report["grouping"], split_report["residual_leakage"]["test"]
    print(
        f"groups: {grouping['groups']} (largest {grouping['largest_group']}, "
        f"{grouping['images_in_shared_groups']} images in shared groups); "
        "test images by most similar training image: " + ", ".join(f"{k} {v}" for k, v in leakage.items())
    )


if __name__ == "__main__":
    main()

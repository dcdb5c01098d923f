"""Benchmark: similarity neighbour search and grouping, on synthetic vectors or on a real collection.

synthetic (default 100 000 vectors): clusters of near-copies among unrelated vectors, of the descriptor's
dimension; prints the time of the neighbour search, of the grouping, and the groups found.
real DATASET_DIR (a folder or .zip of class folders): ingest + split in a temporary folder; prints the descriptor
and search times, groups, largest group, split fractions per class and residual-leakage counts.

Usage: python benchmarks/similarity.py synthetic [N]
       python benchmarks/similarity.py real DATASET_DIR
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.params import load_params
from brain_tumor.data import ingest, similarity, split

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def synthetic_vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors: a fifth in clusters of 2-20 near-copies (some mirrored), the rest unrelated."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, similarity.DIM)).astype(np.float32)
    start = 0
    while start < n // 5:
        size = int(rng.integers(2, 21))
        members = slice(start + 1, min(start + size, n))
        copies = vectors[start] + 0.15 * rng.normal(size=(members.stop - members.start, similarity.DIM))
        vectors[members] = copies.astype(np.float32)
        vectors[members][::3] = similarity.flipped(vectors[members][::3])[0]
        start += size
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def synthetic(n: int) -> None:
    settings = split.GroupingSettings.from_params(load_params(PARAMS).split)
    vectors = synthetic_vectors(n)
    start = time.perf_counter()
    neighbours = similarity.nearest_neighbours(vectors, split.NEIGHBOURS)
    searched = time.perf_counter()
    grouping = similarity.similarity_groups(
        neighbours, np.arange(n), settings.threshold, settings.neighbour_threshold, settings.mutual, settings.max_size
    )
    done = time.perf_counter()
    sizes = pd.Series(grouping.labels).value_counts()
    print(f"synthetic: {n} vectors of dimension {similarity.DIM}")
    print(f"neighbour search: {searched - start:.1f} s ({n / (searched - start):.0f} vectors/s)")
    print(f"grouping:         {done - searched:.1f} s")
    print(f"total:            {done - start:.1f} s")
    print(
        f"groups {len(sizes)}, images in shared groups {int(sizes[sizes > 1].sum())}, largest {sizes.iloc[0]}, "
        f"pairs refused by the size cap {grouping.refused}"
    )


def real(source: Path) -> None:
    params = load_params(PARAMS)
    data = params.data
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        ingest.ingest_folder(
            source,
            tmp / "dataset",
            **ingest.ingest_settings(data),
        )
        ingested = time.perf_counter()
        manifest = pd.read_csv(tmp / "dataset" / "manifest.csv", dtype=str)
        descriptors = similarity.file_descriptors([tmp / "dataset" / f for f in manifest["file"]])
        described = time.perf_counter()
        similarity.nearest_neighbours(descriptors, split.NEIGHBOURS)
        searched = time.perf_counter()
        report = split.split_dataset(params, tmp / "dataset", tmp / "split", tmp / "split.json", tmp / "people")
        done = time.perf_counter()
    g, leak = report["grouping"], report["residual_leakage"]
    print(f"source: {source} ({len(manifest)} images after ingest)")
    ingest_time, split_time = ingested - start, done - searched
    print(f"ingest: {ingest_time:.1f} s, split stage: {split_time:.1f} s, together {ingest_time + split_time:.1f} s")
    rate = len(manifest) / (described - ingested)
    print(
        f"of which descriptors: {described - ingested:.1f} s ({rate:.0f} img/s), search: {searched - described:.1f} s"
    )
    print(
        f"groups {g['groups']}, largest {g['largest_group']}, images in shared groups {g['images_in_shared_groups']}, "
        f"refused by cap {g['pairs_refused_by_size_cap']}, groups with both classes {g['groups_with_both_classes']}"
    )
    print("groups by size: " + ", ".join(f"{k}: {v}" for k, v in g["groups_by_size"].items()))
    for s in split.SPLITS:
        per_class = {c: report[s][c] for c in ("non_tumor", "tumor")}
        print(f"{s}: {per_class} fraction {report[s]['fraction']}")
    for s in ("val", "test"):
        print(f"residual leakage {s}: " + ", ".join(f"{k} {v}" for k, v in leak[s].items()))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "synthetic"
    if mode == "synthetic":
        synthetic(int(sys.argv[2]) if len(sys.argv) > 2 else 100_000)
    elif mode == "real" and len(sys.argv) > 2:
        real(Path(sys.argv[2]))
    else:
        sys.exit("usage: python benchmarks/similarity.py synthetic [N] | real DATASET_DIR")

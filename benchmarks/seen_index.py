"""Benchmark: the seen-index (brain_tumor/training/seen.py): how long the training stage takes to write it, how big it
is, and what `brain-tumor predict`'s look-up costs per scan (the descriptor of the scan, then the four flips
against every indexed scan), in batches of 32 as predict runs it.

Usage: python benchmarks/seen_index.py [--split data/split] [--scans 256]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from brain_tumor.core.contracts import read_split_manifest
from brain_tumor.core.npz import save_arrays
from brain_tumor.core.outputs import file_sha256
from brain_tumor.training.seen import build_index, nearest_seen, read_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", type=Path, default=Path("data/split"))
    parser.add_argument("--scans", type=int, default=256)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    manifest = read_split_manifest(args.split)
    sha = file_sha256(args.split / "split_manifest.csv")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.seen.npz"
        start = time.perf_counter()
        save_arrays(path, build_index(args.split, manifest, sha, 0.95))
        write_s = time.perf_counter() - start
        index = read_index(path, sha)
        size_mb = path.stat().st_size / 2**20
    test = manifest[manifest["split"] == "test"]["file"].tolist()[: args.scans]
    images = [np.asarray(Image.open(args.split / f).convert("RGB")) for f in test]
    start = time.perf_counter()
    for i in range(0, len(images), 32):
        nearest_seen(index, images[i : i + 32])
    per_scan_ms = 1000 * (time.perf_counter() - start) / len(images)
    print(f"index: {len(index.sources)} train+val scans, {size_mb:.1f} MiB, written in {write_s:.1f} s")
    print(f"look-up: {per_scan_ms:.2f} ms per scan ({len(images)} test scans, batches of 32)")
    print(f"load average before: {load_before:.2f}")


if __name__ == "__main__":
    main()

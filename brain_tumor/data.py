"""Training data: each split decoded once into a memory-mapped uint8 array, then served in batches.

The cache lives in data/cache/ (not a DVC output: it is a pure function of its key, like a build cache)
and is keyed by the split's image hashes and the image size, so a changed split or size never reads
stale pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from .common import atomic_write, progress, read_table
from .images import resize_rgb

MEAN = STD = (0.5, 0.5, 0.5)  # the seed's Normalize((0.5,)*3, (0.5,)*3)


def cache_dir() -> Path:
    """data/cache, or $BRAIN_TUMOR_CACHE (tests and benchmarks keep theirs apart)."""
    return Path(os.environ.get("BRAIN_TUMOR_CACHE", "data/cache"))


def cached_array(path: Path, shape: tuple[int, ...], dtype: type, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """The .npy array at `path`, memory-mapped read-only; built by `fill(array)` first if it is missing.

    Built under a temporary name and renamed, so an interrupted build never leaves a file that looks finished.
    """
    if not path.exists():

        def build(tmp: Path) -> None:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            fill(array)
            array.flush()

        atomic_write(path, build)
    return np.load(path, mmap_mode="r")


@dataclass
class SplitImages:
    images: np.ndarray  # N x H x W x 3 uint8, memory-mapped
    labels: np.ndarray  # N int64
    ids: list[str]
    key: str  # identifies the pixels: same key, same array


def _decode_resized(args: tuple[Path, int]) -> np.ndarray:
    from PIL import Image

    path, size = args
    with Image.open(path) as img:
        return resize_rgb(np.asarray(img.convert("RGB")), size)


def load_split(split_dir: Path, split: str, image_size: int) -> SplitImages:
    rows = read_table(split_dir / "split_manifest.csv").query("split == @split")
    digest = hashlib.sha256(f"v1 {split} {image_size}".encode())
    for sha in rows["sha256"]:
        digest.update(sha.encode())
    key = digest.hexdigest()[:24]

    def decode(array: np.ndarray) -> None:
        jobs = [(split_dir / f, image_size) for f in rows["file"]]
        with Pool(min(len(jobs), os.cpu_count() or 1) or 1) as pool:
            decoded = pool.imap(_decode_resized, jobs, chunksize=32)
            for i, rgb in enumerate(progress(decoded, f"decode {split}", len(jobs), "img")):
                array[i] = rgb

    images = cached_array(
        cache_dir() / f"{split}-{image_size}px-{key}.npy", (len(rows), image_size, image_size, 3), np.uint8, decode
    )
    return SplitImages(images, rows["label"].astype(np.int64).to_numpy(), rows["id"].tolist(), key)


def to_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (channels_last in memory) on `device`.

    The uint8 batch is copied to the device before normalising, which keeps host-to-GPU transfers 4x smaller.
    """
    x = torch.from_numpy(np.require(batch, requirements=["C", "W"]))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)) / torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> list[np.ndarray]:
    """Index batches over n items: a fresh permutation per call when `generator` is given, else in order."""
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]

"""Training data: each split decoded once into a memory-mapped uint8 array, then served in batches.

The cache lives in data/cache/ (not a DVC output: it is a pure function of its key, like a build cache).
A key covers everything the bytes depend on: the split's image hashes, the image size, the source of
the code that produced them and the versions of torch, torchvision, Pillow and numpy. Each entry checks
itself when loaded (size and sha256), so a corrupt or truncated entry is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from brain_tumor.core.console import progress
from brain_tumor.core.contracts import read_split_manifest
from brain_tumor.core.errors import one_line, warn
from brain_tumor.core.outputs import cache_dir, file_sha256, temporary_dir, write_json
from brain_tumor.core.resize import resize_rgb, standardise
from brain_tumor.core.stage import worker_pool

if TYPE_CHECKING:
    import pandas as pd

CACHE_FORMAT = "v4"  # a folder per entry: array.npy + meta.json (with the entry's key)
LIBRARIES = ("torch", "torchvision", "pillow", "numpy")


def code_fingerprint(*code: object) -> str:
    """What cached bytes depend on besides their inputs: the producing code's source and the library versions.

    Editing that code, or upgrading a library, gives new keys, so stale bytes are never read back.
    """
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for name in LIBRARIES:
        digest.update(f" {name}={version(name)}".encode())
    for obj in code:
        digest.update(inspect.getsource(obj).encode())
    return digest.hexdigest()[:16]


def cache_problem(entry: Path, shape: tuple[int, ...], dtype: type) -> str | None:
    """Why the cache entry cannot be used (another entry's content, missing part, other shape or dtype, wrong
    size, bad checksum), or None. An entry's name is its key, which says which images it holds; its meta.json
    repeats the key, so an entry renamed or swapped with another of the same shape is caught too.

    The sha256 reads the whole array once per load: 0.03 s for the default train split (32 MiB), 0.2 s for 300 MiB.
    """
    try:
        meta = json.loads((entry / "meta.json").read_text())
        size = (entry / "array.npy").stat().st_size
        if meta["key"] != entry.name:
            return f"holds entry {meta['key']!r}, not {entry.name!r} (renamed or swapped)"
        if meta["shape"] != list(shape) or meta["dtype"] != np.dtype(dtype).str:
            return f"holds {meta['dtype']} {meta['shape']}, expected {np.dtype(dtype).str} {list(shape)}"
        if size != meta["bytes"]:
            return f"array.npy is {size} bytes, expected {meta['bytes']} (truncated?)"
        if file_sha256(entry / "array.npy") != meta["sha256"]:
            return "array.npy does not match its sha256 (corrupt)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable ({one_line(err)})"
    return None


SAMPLE_ROWS = 8  # rows of a cached array recomputed from their sources on every load


def sample_rows(n: int) -> np.ndarray:
    """Which rows to recompute: drawn anew on every load (not seeded), so no row can count on being skipped."""
    return np.sort(np.random.default_rng().choice(n, min(SAMPLE_ROWS, n), replace=False))


def cached_array(
    entry: Path,
    shape: tuple[int, ...],
    dtype: type,
    fill: Callable[[np.ndarray], None],
    verify: Callable[[np.ndarray], str | None] | None = None,
) -> np.ndarray:
    """The array cached in the folder `entry`, memory-mapped read-only; built by `fill(array)` when it is
    missing, and rebuilt (with one warning) when it fails its check.

    What an entry is trusted for: its checksum (meta.json) catches damage, truncation and swapped entries,
    but a checksum the cache stores itself cannot catch an entry whose array and checksum were both replaced.
    So `verify(array)` also recomputes a few rows (`sample_rows`) from their sources on every load and names
    a row that differs: a few rows' decoding or prefix cost per load, which catches a wholesale replacement at
    once and a single altered row of n with probability SAMPLE_ROWS / n per load.

    Built in a temporary folder beside it and renamed whole, so an interrupted build never leaves an entry
    that looks finished; when another process (a DDP rank) publishes the same entry first, its copy is used.
    """
    if entry.exists():
        problem = cache_problem(entry, shape, dtype)
        if problem is None:
            array = np.load(entry / "array.npy", mmap_mode="r")
            if verify is None or (problem := verify(array)) is None:
                return array
            del array
        warn(f"cache {entry}: {problem}; rebuilding it")
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    tmp = temporary_dir(entry.parent, entry.name)
    try:
        array = np.lib.format.open_memmap(tmp / "array.npy", mode="w+", dtype=dtype, shape=shape)
        fill(array)
        array.flush()
        del array
        size = (tmp / "array.npy").stat().st_size
        meta = {"key": entry.name, "shape": list(shape), "dtype": np.dtype(dtype).str, "bytes": size}
        write_json(tmp / "meta.json", meta | {"sha256": file_sha256(tmp / "array.npy")})
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return np.load(entry / "array.npy", mmap_mode="r")


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


def load_split(split_dir: Path, split: str, image_size: int, manifest: pd.DataFrame | None = None) -> SplitImages:
    """One split's images, decoded once into the cache, in the manifest's row order. `manifest`: the split
    manifest the caller already read (read here when None), so that its rows and the images are one reading."""
    manifest = read_split_manifest(split_dir) if manifest is None else manifest
    rows = manifest.query("split == @split")
    digest = hashlib.sha256(f"{split} {image_size} {code_fingerprint(_decode_resized, resize_rgb)}".encode())
    for sha in rows["sha256"]:
        digest.update(sha.encode())
    key = digest.hexdigest()[:24]

    def decode(array: np.ndarray) -> None:
        jobs = [(split_dir / f, image_size) for f in rows["file"]]
        with worker_pool(min(len(jobs), os.cpu_count() or 1) or 1) as pool:
            decoded = pool.imap(_decode_resized, jobs, chunksize=32)
            for i, rgb in enumerate(progress(decoded, f"decode {split}", len(jobs), "img")):
                array[i] = rgb

    def verify(array: np.ndarray) -> str | None:
        for i in sample_rows(len(rows)):
            if not np.array_equal(array[i], _decode_resized((split_dir / rows["file"].iloc[i], image_size))):
                return f"row {i} differs from its source image {rows['file'].iloc[i]} (replaced?)"
        return None

    entry = cache_dir() / f"{split}-{image_size}px-{key}"
    images = cached_array(entry, (len(rows), image_size, image_size, 3), np.uint8, decode, verify)
    return SplitImages(images, rows["label"].astype(np.int64).to_numpy(), rows["id"].tolist(), key)


def to_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (channels_last in memory) on `device`.

    The uint8 batch is copied to the device before normalising, which keeps host-to-GPU transfers 4x smaller.
    """
    x = torch.from_numpy(np.require(batch, requirements=["C", "W"]))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return standardise(x.permute(0, 3, 1, 2).float()).contiguous(memory_format=torch.channels_last)


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """Index batches over n items: in order without `generator`; with it, a fresh permutation per call, or n
    draws with replacement in proportion to `weights` when they are given."""
    if generator is None:
        order = np.arange(n)
    elif weights is None:
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = torch.multinomial(torch.from_numpy(weights), n, replacement=True, generator=generator).numpy()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]

"""Which images show the same slice, or a neighbouring slice of one series, however they were re-processed.

Ingest's exact and perceptual hashes catch identical and lightly changed copies only. Public brain-MRI sets
also hold the same slice with another contrast, gamma, equalisation, sharpening, JPEG quality, size or crop,
mirrored left-right or upside down, and neighbouring slices of one patient's series.

The descriptor (`descriptor`): the greyscale image mapped to the ranks of its own grey levels (histogram
equalisation: any monotone re-mapping - contrast, brightness, gamma, equalisation - leaves the ranks as
they are), squared so the dark background counts little, resized to a 64-pixel working size, centred on
the head and scaled to its size (shifts, crops and zooms of a few pixels do not move it), band-passed on a
32x32 grid (a Gaussian blur of 1 cell minus one of 4 cells: noise, sharpening and the generic head shape
drop out, the anatomy stays) and scaled to unit length. The similarity of two images is the cosine of their
descriptors, the best of the four flips of one of them.

Grouping (`similarity_groups`): every pair at or above a threshold (re-processed copies), then groups that
are each other's nearest groups above a lower threshold (neighbouring slices); pairs are joined most
similar first and never into a group above a size cap, so that no chain of small steps makes a giant group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.console import progress
from brain_tumor.core.stage import worker_pool

GRID = 32  # the descriptor is GRID x GRID band-passed values
DIM = GRID * GRID
_WORK = 64  # working thumbnail size
LOOSER = (0.90, 0.85, 0.80)  # residual leakage is also counted at these similarities, below the threshold
_ZOOM = 1.6  # the head's rms radius spans 1/1.6 of the half-window: the whole head fits with a margin
_FINE, _COARSE = 1.0, 4.0  # band-pass: Gaussian sigmas in grid cells


# ---------------------------------------------------------------- descriptor


def _grey_ranks(grey: np.ndarray) -> np.ndarray:
    """Each pixel's mid-rank among the image's grey levels, in [0, 1]: unchanged by monotone re-mappings."""
    counts = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    return ((np.cumsum(counts) - counts / 2) / counts.sum()).astype(np.float32)[grey]


def _box_resize(values: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(values, mode="F").resize((size, size), Image.Resampling.BOX))


def _head_window(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`values` resampled on a GRID x GRID window centred on the weights' centroid, scaled to their spread."""
    from scipy import ndimage

    total = max(float(weights.sum()), 1e-6)
    yy, xx = np.mgrid[0 : values.shape[0], 0 : values.shape[1]] + 0.5
    cy, cx = (weights * yy).sum() / total, (weights * xx).sum() / total
    radius = np.sqrt((weights * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total)
    step = _ZOOM * max(radius, 1.0) / (GRID / 2)
    oy, ox = np.mgrid[0:GRID, 0:GRID] + 0.5 - GRID / 2
    coords = [cy + oy * step - 0.5, cx + ox * step - 0.5]
    return ndimage.map_coordinates(ndimage.gaussian_filter(values, _WORK / GRID / 2), coords, order=1, cval=0.0)


def descriptor(image: np.ndarray) -> np.ndarray:
    """The unit-length DIM-vector of a greyscale (HxW) or RGB (HxWx3) uint8 image (zeros for a flat image)."""
    from scipy import ndimage

    grey = image if image.ndim == 2 else (image.astype(np.float32) @ [0.299, 0.587, 0.114]).round().astype(np.uint8)
    if grey.min() == grey.max():
        return np.zeros(DIM, np.float32)
    ranks = _box_resize(_grey_ranks(grey), _WORK)
    head = np.clip(2 * ranks - 1, 0, 1)  # the brighter half of the pixels: where the head is
    window = _head_window(ranks**2, head)
    band = ndimage.gaussian_filter(window, _FINE, mode="nearest") - ndimage.gaussian_filter(
        window, _COARSE, mode="nearest"
    )
    band = (band - band.mean()).ravel()
    norm = float(np.linalg.norm(band))
    return (band / norm if norm > 1e-6 else np.zeros_like(band)).astype(np.float32)


def _file_descriptor(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return descriptor(np.asarray(img.convert("L")))


def file_descriptors(files: list[Path], processes: int | None = None) -> np.ndarray:
    """Descriptors of image files (n x DIM float32), decoded and computed in `processes` workers."""
    processes = min(processes or os.cpu_count() or 1, max(len(files), 1))
    if processes <= 1:
        rows = [_file_descriptor(f) for f in progress(files, "descriptors", unit="img")]
    else:
        with worker_pool(processes) as pool:
            rows = list(progress(pool.imap(_file_descriptor, files, chunksize=64), "descriptors", len(files), "img"))
    return np.stack(rows) if rows else np.zeros((0, DIM), np.float32)


def flipped(descriptors: np.ndarray) -> list[np.ndarray]:
    """The descriptors of the images mirrored left-right, upside down, and both (a flip of the grid, as the
    window is symmetric): the public sets hold such copies, so a similarity takes the best of the four."""
    grids = descriptors.reshape(-1, GRID, GRID)
    return [
        np.ascontiguousarray(g.reshape(descriptors.shape))
        for g in (grids[:, :, ::-1], grids[:, ::-1], grids[:, ::-1, ::-1])
    ]


def _symmetrised(descriptors: np.ndarray) -> np.ndarray:
    """A (DIM / 4)-vector equal for an image and its flips: the sum of the four orientations, whose
    top-left quadrant holds all of it. A cheap first search on it finds the candidates for `similarity`."""
    grids = descriptors.reshape(-1, GRID, GRID)
    total = grids + grids[:, :, ::-1] + grids[:, ::-1] + grids[:, ::-1, ::-1]
    quarter = np.ascontiguousarray(total[:, : GRID // 2, : GRID // 2].reshape(len(descriptors), -1))
    return quarter / np.maximum(np.linalg.norm(quarter, axis=1, keepdims=True), 1e-6)


# ---------------------------------------------------------------- neighbour search


@dataclass
class Neighbours:
    """Each image's `k` most similar other images, most similar first (`ids` -1 where there are fewer)."""

    sims: np.ndarray  # n x k float32
    ids: np.ndarray  # n x k int64


def _flat_index(vectors: np.ndarray):
    """Exact inner-product search (faiss: blocked BLAS over all pairs, no Python loop)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Similarity of image a[i] and b[i] for each row: the best cosine over the four flips of a."""
    return np.max([np.einsum("ij,ij->i", o, b) for o in (a, *flipped(a))], axis=0)


def nearest_neighbours(descriptors: np.ndarray, k: int, candidates: int = 128, block: int = 64) -> Neighbours:
    """The k most similar other images of each image.

    A search on the flip-symmetrised descriptor proposes `candidates` per image; their exact similarity
    (best of four flips) ranks them. The proposal finds every pair at 0.95 or above on the real set.
    """
    n = len(descriptors)
    found = min(candidates + 1, n)
    _, ids = _flat_index(_symmetrised(descriptors)).search(_symmetrised(descriptors), found)
    sims = np.empty(ids.shape, np.float32)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        oriented = np.stack([descriptors[rows], *flipped(descriptors[rows])], axis=1)  # block x 4 x DIM
        sims[rows] = np.matmul(oriented, descriptors[ids[rows]].transpose(0, 2, 1)).max(axis=1)
    sims[(ids == np.arange(n)[:, None]) | (ids < 0)] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    top_sims = np.take_along_axis(sims, order, axis=1)
    top_ids = np.where(np.isfinite(top_sims), np.take_along_axis(ids, order, axis=1), -1)
    return Neighbours(np.where(np.isfinite(top_sims), top_sims, -1.0).astype(np.float32), top_ids)


def best_matches(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query, its highest similarity to any reference image and which one (exact: all pairs)."""
    if len(queries) == 0 or len(reference) == 0:
        return np.full(len(queries), -1.0, np.float32), np.full(len(queries), -1, np.int64)
    index = _flat_index(reference)
    found = [index.search(o, 1) for o in (queries, *flipped(queries))]
    sims, ids = np.hstack([s for s, _ in found]), np.hstack([i for _, i in found])
    pick = sims.argmax(axis=1)
    rows = np.arange(len(queries))
    return sims[rows, pick], ids[rows, pick]


# ---------------------------------------------------------------- grouping


@dataclass
class Grouping:
    """Group index per image (its smallest member's index), and what each step and the size cap did."""

    labels: np.ndarray
    copies: np.ndarray  # the groups after the first step (re-processed copies) only
    same_pairs: int  # image pairs at or above the similarity threshold
    neighbour_pairs: int  # group pairs that are mutual nearest neighbours at or above the neighbour threshold
    refused: int  # pairs left apart because their groups together would exceed the size cap
    refused_max_similarity: float  # the most similar of those (-1 if none)


def threshold_pairs(neighbours: Neighbours, threshold: float) -> pd.DataFrame:
    """Every listed pair (a < b) at or above `threshold`, with its similarity."""
    n, k = neighbours.ids.shape
    rows = np.repeat(np.arange(n), k)
    ids, sims = neighbours.ids.ravel(), neighbours.sims.ravel()
    keep = (ids >= 0) & (sims >= threshold)
    a, b = rows[keep], ids[keep]
    pairs = pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b), "similarity": sims[keep]})
    return pairs.groupby(["a", "b"], as_index=False)["similarity"].max()


def mutual_group_pairs(neighbours: Neighbours, labels: np.ndarray, threshold: float, mutual: int) -> pd.DataFrame:
    """Image pairs (a, b, similarity) whose groups are each other's `mutual` nearest groups, at or above
    `threshold`: one pair per group pair, its most similar images.

    Groups, not images: an image's nearest images are often its own re-processed copies, while the
    neighbouring slice is the nearest other group. Mutuality keeps a generic-looking image from linking
    many unrelated ones.
    """
    n, k = neighbours.ids.shape
    rows = np.repeat(np.arange(n), k)
    ids, sims = neighbours.ids.ravel(), neighbours.sims.ravel()
    ok = ids >= 0
    links = pd.DataFrame({"a": rows[ok], "b": ids[ok], "similarity": sims[ok]})
    links["g"], links["h"] = labels[links["a"]], labels[links["b"]]
    links = links[links["g"] != links["h"]].sort_values("similarity", ascending=False, kind="stable")
    links = links.drop_duplicates(["g", "h"])  # each group's best link to each other group
    links = links[(links.groupby("g").cumcount() < mutual) & (links["similarity"] >= threshold)]
    g, h = links["g"].to_numpy(), links["h"].to_numpy()
    links = links[np.isin(g * n + h, h * n + g) & (g < h)]
    return links[["a", "b", "similarity"]].reset_index(drop=True)


def group_pairs(n: int, pairs: pd.DataFrame, max_size: int, seed_groups: np.ndarray) -> Grouping:
    """Join pairs most similar first (union-find), unless the two groups together would exceed `max_size`.

    `seed_groups` (one label per image) are joined beforehand, whatever their size.
    """
    first = pd.Series(np.arange(n)).groupby(seed_groups).transform("min").to_numpy()
    parent, size = first.tolist(), np.bincount(first, minlength=n).tolist()  # lists: fast scalar access

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    refused, refused_max = 0, -1.0
    ordered = pairs.sort_values(["similarity", "a", "b"], ascending=[False, True, True], kind="stable")
    for a, b, sim in zip(ordered["a"].tolist(), ordered["b"].tolist(), ordered["similarity"].tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if size[ra] + size[rb] > max_size:
            refused += 1
            refused_max = max(refused_max, sim)
            continue
        ra, rb = min(ra, rb), max(ra, rb)  # the root stays the smallest member: labels need no second pass
        parent[rb] = ra
        size[ra] += size[rb]
    labels = np.array([find(i) for i in range(n)])
    return Grouping(labels, labels, len(pairs), 0, refused, float(refused_max))


def similarity_groups(
    neighbours: Neighbours,
    seed_groups: np.ndarray,
    threshold: float,
    neighbour_threshold: float,
    mutual: int,
    max_size: int,
) -> Grouping:
    """Groups that keep re-processed copies (similarity >= `threshold`) and neighbouring slices (mutual
    nearest groups >= `neighbour_threshold`) together, on top of `seed_groups`; none above `max_size`."""
    n = len(neighbours.ids)
    same = group_pairs(n, threshold_pairs(neighbours, threshold), max_size, seed_groups)
    near = mutual_group_pairs(neighbours, same.labels, neighbour_threshold, mutual)
    joined = group_pairs(n, near, max_size, same.labels)
    return Grouping(
        joined.labels,
        same.labels,
        same.same_pairs,
        len(near),
        same.refused + joined.refused,
        max(same.refused_max_similarity, joined.refused_max_similarity),
    )


def group_size_table(labels: np.ndarray) -> dict[str, int]:
    """Number of groups per size (images in the group): how much grouping happened, and whether one grew too large."""
    sizes = pd.Series(labels).value_counts()
    bins = [0, 1, 2, 5, 10, 20, 50, 100, np.inf]
    names = ["1", "2", "3-5", "6-10", "11-20", "21-50", "51-100", ">100"]
    groups = pd.cut(sizes, bins, labels=names).value_counts().reindex(names, fill_value=0)
    return {name: int(count) for name, count in groups.items()}


def leakage_levels(threshold: float) -> dict[str, float]:
    """Residual-leakage report key -> similarity: the grouping threshold, then the looser levels below it."""
    return {"above_threshold": threshold} | {f"above_{v:.2f}".replace(".", "_"): v for v in LOOSER if v < threshold}

"""Synthetic lesions: copies of no-tumour training scans with a tumour-like lesion drawn in, labelled tumour.

In the shared collection the no-tumour scans come mostly from another archive than the tumour scans, so a
model can tell the classes by plane, anatomy and framing without finding a tumour, and on other archives'
axial slices it calls tumours normal. A lesioned copy differs from its original only by the lesion: the
pair can be told apart by the lesion alone (in the spirit of synthetic-tumour training, Hu et al., 2023).

A lesion is an irregular blob (a few Gaussian lobes) 5-15% of the head's width, inside the brain away from
the skull, with a core brighter or darker than the tissue around it, and at random an enhancing rim, a
bright oedema halo (T2 / FLAIR-like) and texture. Mass effect is not modelled. A copy depends only on
(seed, row, copy) and the pixels.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy import ndimage

from brain_tumor.core.arrays import SplitImages, code_fingerprint
from brain_tumor.core.blobs import blob
from brain_tumor.training.domain import head_mask


def add_lesion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One lesion drawn into a uint8 H x W x C scan (grey in every channel of the result)."""
    grey = image.astype(np.float64).mean(-1) / 255
    mask = head_mask(grey)
    radius = np.sqrt(mask.sum() / np.pi)
    inner = ndimage.distance_transform_edt(mask) > 0.25 * radius
    if radius < 4 or not inner.any():
        return image
    cy, cx = np.unravel_index(rng.choice(np.flatnonzero(inner)), grey.shape)
    yy, xx = np.mgrid[: grey.shape[0], : grey.shape[1]].astype(np.float64)
    size = rng.uniform(0.1, 0.3) * radius
    local = float(np.median(grey[inner]))
    brain = ndimage.gaussian_filter((ndimage.distance_transform_edt(mask) > 0.1 * radius).astype(float), 2)
    out = grey.copy()  # each part shifts the tissue's intensity and keeps its texture
    if rng.random() < 0.6:  # oedema: a larger, softer bright halo
        halo = ndimage.gaussian_filter(blob(rng, yy, xx, cy, cx, size * rng.uniform(1.4, 2.2)), 2) * brain
        out += halo * rng.uniform(0.15, 0.4)
    core = blob(rng, yy, xx, cy, cx, size) * brain
    shift = rng.uniform(0.2, 0.6) if rng.random() < 0.6 else -rng.uniform(0.15, max(local, 0.2))
    texture = 1 + 0.3 * ndimage.gaussian_filter(rng.normal(0, 1, grey.shape), 1.5)
    out += core * shift * texture
    if rng.random() < 0.5:  # an enhancing rim around the core
        rim = np.clip(blob(rng, yy, xx, cy, cx, size * 1.2) - core, 0, 1) * brain
        out += rim * rng.uniform(0.2, 0.5)
    out = np.clip(out, 0, 1)
    return np.repeat(np.round(out * 255).astype(np.uint8)[..., None], image.shape[-1], axis=-1)


def with_lesions(split: SplitImages, rows: pd.DataFrame, copies: int, seed: int) -> tuple[SplitImages, pd.DataFrame]:
    """The training split with `copies` lesioned copies of each no-tumour scan appended (labelled tumour),
    and its manifest rows likewise (a copy keeps its original's acquisition kind, for balancing)."""
    if not copies:
        return split, rows
    sources = np.repeat(np.flatnonzero(split.labels == 0), copies)
    copy = np.tile(np.arange(copies), int((split.labels == 0).sum()))
    pairs = zip(sources.tolist(), copy.tolist(), strict=True)
    drawn = [add_lesion(split.images[s], np.random.default_rng([seed, s, c])) for s, c in pairs]
    extra = np.stack(drawn) if drawn else split.images[:0]
    code = code_fingerprint(add_lesion, with_lesions, blob, head_mask)
    key = hashlib.sha256(f"{split.key} lesions {copies} {seed} {code}".encode()).hexdigest()[:24]
    grown = SplitImages(
        np.concatenate([split.images, extra]),
        np.concatenate([split.labels, np.ones(len(sources), split.labels.dtype)]),
        [*split.ids, *(f"{split.ids[s]}+lesion{c}" for s, c in zip(sources, copy, strict=True))],
        key,
    )
    copied = rows.iloc[sources].assign(label=1)
    return grown, pd.concat([rows, copied], ignore_index=True)

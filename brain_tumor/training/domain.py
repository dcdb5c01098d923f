"""Domain randomisation: each training scan shown as if another scanner, sequence and preprocessing made it.

A model trained on one collection learns that collection's look (its contrasts, its skulls, its framing) as
much as the tumours, and on scans from elsewhere ranks tumour slices below normal ones. In the spirit of
SynthSeg (Billot et al., 2023), a domain view keeps a scan's anatomy and label and randomises the rest:

- tissue contrast: the head's intensities are cut into 3-6 classes (quantiles, a 1-D k-means stand-in), each
  class gets a random intensity (any order: T1 <-> T2 <-> FLAIR-like) and keeps its own texture, scaled;
- acquisition: a smooth multiplicative bias field, Gaussian noise and blur;
- skull: half the views strip skull and scalp (the head mask eroded by a random depth), as skull-stripped
  archives do, and the background is black in every view;
- framing: 90-degree rotations, up-down flips (left-right flips are train_*.augment) and a random scale
  (smaller or larger heads).

The libraries we considered (MONAI, TorchIO, kornia) have the bias field, noise and blur but not the
per-class contrast on 2-D slices without label maps; these few scipy lines keep one dependency set.
A view depends only on (seed, row, look) and the scan's pixels, so a frozen-prefix cache can key on them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLASSES_RANGE = (3, 7)  # tissue classes per view: 3 to 6
STRIP_PROBABILITY = 0.5
SCALE_RANGE = (0.6, 1.3)  # the external archives frame heads from small to cropped


def head_mask(grey: np.ndarray) -> np.ndarray:
    """The head (or brain, when already stripped): above a dark threshold, holes filled, the largest part."""
    level = max(0.04, 0.25 * float(np.percentile(grey, 60)))
    mask = ndimage.binary_opening(grey > level, iterations=2)
    labels, count = ndimage.label(mask)
    if count == 0:
        return grey > level
    sizes = ndimage.sum_labels(mask, labels, np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def strip_skull(grey: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask eroded by 4-12% of the head's radius: skull and scalp removed, roughly, as a mask would."""
    depth = ndimage.distance_transform_edt(mask)
    radius = np.sqrt(mask.sum() / np.pi)
    return mask & (depth > rng.uniform(0.04, 0.12) * radius)


def tissue_contrast(grey: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random intensity per tissue class inside `mask`, each class keeping its texture at a random gain."""
    inside = grey[mask]
    if inside.size < 16:
        return grey
    k = int(rng.integers(*CLASSES_RANGE))
    edges = np.quantile(inside, np.linspace(0, 1, k + 1)[1:-1])
    label = np.digitize(grey, edges)
    centres = np.array([np.median(inside[label[mask] == c]) if np.any(label[mask] == c) else 0 for c in range(k)])
    means = rng.uniform(0.1, 1.0, k)
    gains = rng.uniform(-1.0, 1.0, k)
    # soft class boundaries: blur the class means a little, so the remap adds no staircase edges
    mean_map = ndimage.gaussian_filter(means[label], 1.0)
    out = mean_map + gains[label] * (grey - centres[label])
    return np.where(mask, out, 0.0)


def bias_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field, exp of a random polynomial of degree 3 in (y, x), as MONAI's RandBiasField."""
    y, x = (np.linspace(-1, 1, n) for n in shape)
    powers = [(i, j) for i in range(4) for j in range(4 - i) if i + j]
    coefficients = rng.normal(0, rng.uniform(0.05, 0.3), len(powers))
    log_field = sum(c * np.outer(y**i, x**j) for c, (i, j) in zip(coefficients, powers, strict=True))
    return np.exp(log_field)


def reframe(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 90-degree rotation, maybe an up-down flip, and a random scale about the centre."""
    grey = np.rot90(grey, int(rng.integers(4)))
    if rng.random() < 0.5:
        grey = grey[::-1]
    scale = float(np.exp(rng.uniform(*np.log(SCALE_RANGE))))
    centre = (np.array(grey.shape) - 1) / 2
    return ndimage.affine_transform(grey, np.eye(2) / scale, offset=centre - centre / scale, order=1, cval=0.0)


def domain_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One randomised view of a uint8 H x W x C scan, uint8 of the same shape (grey in every channel)."""
    grey = image.astype(np.float64).mean(-1) / 255
    mask = head_mask(grey)
    if rng.random() < STRIP_PROBABILITY:
        mask = strip_skull(grey, mask, rng)
    out = tissue_contrast(grey, mask, rng)
    out = out * bias_field(out.shape, rng)
    out = ndimage.gaussian_filter(out, rng.uniform(0, 1.0)) + rng.normal(0, rng.uniform(0, 0.04), out.shape) * mask
    out = np.where(mask, out, 0.0)
    top = np.percentile(out[mask], 99.5) if mask.any() else 1.0
    out = np.clip(out / max(top, 1e-6), 0, 1)
    out = reframe(out, rng)
    return np.repeat(np.round(out * 255).astype(np.uint8)[..., None], image.shape[-1], axis=-1)

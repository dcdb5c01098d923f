"""Intensity looks: random uint8 look-up tables that change how a scan's sequence looks, not its anatomy.

Training with them (train_*.intensity_looks) shows each scan under other contrasts, so that "what kind of
scan is this" stops predicting the label (see docs/data.md, the shortcut check). A look is one of:

- gamma: v ** g, g log-uniform in [1/2.5, 2.5];
- contrast: (v - c) * k + c, k in [0.6, 1.8], c in [0.3, 0.7], clipped;
- monotonic: a piecewise-linear rising curve through random levels;
- non-monotonic: a piecewise-linear curve through random levels (folds mid-greys: T1 <-> T2-like);
- inverted: 1 - v.

Black stays black in every look but the inversion (background and air are dark under every sequence).
Look 0 is always the scan itself. Tables depend only on (seed, row, look): the same params give the same
looks, and a cache of the looks' prefix outputs is keyed by their bytes.
"""

import numpy as np

LEVELS = np.arange(256, dtype=np.float64) / 255
KINDS = ("gamma", "contrast", "monotonic", "non-monotonic", "inverted")
KNOTS = 6  # interior levels of the piecewise-linear curves


def curve(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One random look of `kind` as levels in [0, 1] for the 256 uint8 values."""
    if kind == "gamma":
        return LEVELS ** np.exp(rng.uniform(-np.log(2.5), np.log(2.5)))
    if kind == "contrast":
        centre, gain = rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.8)
        return np.clip((LEVELS - centre) * gain + centre, 0, 1) * (LEVELS > 0)
    if kind == "inverted":
        return 1 - LEVELS
    at = np.sort(rng.uniform(0, 1, KNOTS))
    values = rng.uniform(0.05, 1, KNOTS)
    if kind == "monotonic":
        values = np.sort(values)
    return np.interp(LEVELS, np.r_[0, at, 1], np.r_[0, values, values[-1] if kind == "non-monotonic" else 1])


def look_tables(seed: int, rows: int, looks: int) -> np.ndarray:
    """rows x (1 + looks) x 256 uint8 tables; table 0 of every row is the identity."""
    tables = np.empty((rows, 1 + looks, 256), dtype=np.uint8)
    tables[:, 0] = np.arange(256, dtype=np.uint8)
    for row in range(rows):
        rng = np.random.default_rng([seed, row])
        for look in range(1, 1 + looks):
            tables[row, look] = np.round(curve(KINDS[rng.integers(len(KINDS))], rng) * 255).astype(np.uint8)
    return tables


def apply_looks(images: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Each uint8 image (N x H x W x C) through its own table (N x 256)."""
    return np.stack([table[image] for image, table in zip(images, tables, strict=True)])

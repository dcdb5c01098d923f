"""Irregular lesion shapes, shared by the synthetic generator (data/synthetic.py) and the synthetic lesions
drawn into training scans (training/lesions.py)."""

from __future__ import annotations

import numpy as np


def blob(rng: np.random.Generator, yy, xx, cy, cx, radius) -> np.ndarray:
    """An irregular lesion mask: a few overlapping Gaussian lobes, softly thresholded."""
    field = np.zeros_like(yy)
    for _ in range(rng.integers(2, 5)):
        oy, ox = rng.normal(0.0, radius * 0.45, 2)
        ry, rx = radius * rng.uniform(0.5, 1.0, 2)
        field += np.exp(-(((yy - cy - oy) / ry) ** 2 + ((xx - cx - ox) / rx) ** 2))
    return np.clip((field - 0.5) * 3.0, 0.0, 1.0)

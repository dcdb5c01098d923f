"""Confidence intervals of proportions, shared by the split stage's shortcut check and evaluate (no torch)."""

from __future__ import annotations

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion: inside [0, 1] and sensible for small groups and for 0 or n."""
    p, n = np.asarray(successes, np.float64) / n, np.asarray(n, np.float64)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half

"""Which looks a training scan can take: view 0 is the scan itself, then `intensity_looks` look-up-table
remappings (intensity.py), then `domain_looks` domain-randomised views (domain.py). Every view depends only
on (seed, row, look) and the pixels, so the frozen prefix can be computed once per view and cached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from brain_tumor.training.domain import domain_view
from brain_tumor.training.intensity import apply_looks, look_tables


@dataclass(frozen=True)
class Looks:
    seed: int
    rows: int
    intensity: int = 0  # look-up-table remappings per row
    domain: int = 0  # domain-randomised views per row

    @property
    def count(self) -> int:
        return 1 + self.intensity + self.domain

    @cached_property
    def tables(self) -> np.ndarray:
        return look_tables(self.seed, self.rows, self.intensity)

    def apply(self, images: np.ndarray, rows: np.ndarray, looks: np.ndarray) -> np.ndarray:
        """Row `rows[i]`'s look `looks[i]` of each uint8 image (N x H x W x C)."""
        if not np.any(looks):
            return images
        looks = np.asarray(looks)
        out = images.copy()
        remapped = (looks > 0) & (looks <= self.intensity)
        if remapped.any():
            out[remapped] = apply_looks(images[remapped], self.tables[rows[remapped], looks[remapped]])
        for i in np.flatnonzero(looks > self.intensity):
            out[i] = domain_view(images[i], np.random.default_rng([self.seed, int(rows[i]), int(looks[i])]))
        return out

    def key(self) -> str:
        """What decides every view's pixels (the producing code is fingerprinted by the cache)."""
        text = f"looks {self.seed} {self.rows} {self.intensity} {self.domain}"
        if self.intensity:
            text += hashlib.sha256(self.tables.tobytes()).hexdigest()
        return text

"""Training and validation batches: decoded images with their flips and intensity looks, and the sampling weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from brain_tumor.core.arrays import (
    SplitImages,
    to_input,
)
from brain_tumor.training.looks import Looks


@dataclass
class Batches:
    """Inputs (uint8 images, or cached prefix outputs with their views) and labels; `prepare` turns rows into a
    model input, given which rows to mirror and which intensity look each row takes (training), or None."""

    inputs: np.ndarray
    labels: np.ndarray
    prepare: Callable[[np.ndarray, torch.Tensor | None, np.ndarray | None], torch.Tensor]
    augment: bool = False  # training draws random horizontal flips for these inputs
    looks: int = 1  # training draws one of this many intensity looks per row (look 0: the scan itself)
    weights: np.ndarray | None = None  # training draws rows with these weights (with replacement), else shuffles

    def __len__(self) -> int:
        return len(self.labels)

    def get(
        self, idx: np.ndarray, device: torch.device, flips: torch.Tensor | None = None, looks: np.ndarray | None = None
    ):
        return self.prepare(idx, flips, looks), torch.from_numpy(self.labels[idx]).to(device)


def image_batches(split: SplitImages, device: torch.device, augment: bool, looks: Looks | None = None) -> Batches:
    """Decoded images; `looks` (looks.py) gives each row its other looks."""

    def prepare(idx: np.ndarray, flips: torch.Tensor | None, chosen: np.ndarray | None) -> torch.Tensor:
        batch = split.images[idx]
        if chosen is not None and looks is not None:
            batch = looks.apply(batch, idx, chosen)
        x = to_input(batch, device)
        if flips is not None:  # random horizontal flips: brains are near-symmetric
            flips = flips.to(x.device)
            x[flips] = x[flips].flip(-1)
        return x

    return Batches(split.images, split.labels, prepare, augment, 1 if looks is None else looks.count)


def acquisition_weights(labels: np.ndarray, rows) -> np.ndarray:
    """Sampling weights that give every estimated acquisition kind the same share of its class's draws, the
    class's share unchanged: a rare kind of scan (T2-like tumours) is drawn as often as the common one."""
    cell = rows["label"].astype(str).str.cat(rows["acquisition"].astype(str), sep=" ").to_numpy()
    weights = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        in_class = labels == label
        kinds, counts = np.unique(cell[in_class], return_counts=True)
        per_cell = dict(zip(kinds, in_class.sum() / (len(kinds) * counts), strict=True))
        weights[in_class] = [per_cell[c] for c in cell[in_class]]
    return weights

"""The two classes (index = label, as ImageFolder orders the class folders) and the three splits, in one place."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from brain_tumor.core.errors import PipelineError

CLASSES = ("non_tumor", "tumor")
SPLITS = ("train", "val", "test")


def require_both_classes(labels: Iterable[int], where: str) -> None:
    """Training and evaluation need images of both classes; say so before any training, not after."""
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=len(CLASSES))
    if missing := [name for name, n in zip(CLASSES, counts, strict=True) if n == 0]:
        have = ", ".join(f"{n} {name}" for name, n in zip(CLASSES, counts, strict=True) if n)
        raise PipelineError(f"{where}: no {missing[0]} images ({have or 'no images at all'}); both classes are needed")

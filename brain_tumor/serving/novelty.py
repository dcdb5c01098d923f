"""How unlike the training collection a scan is: the novelty score beside each model, and its threshold.

A model that fails on another hospital's scans should at least say that they are new to it. The score is the
mean cosine distance from a scan's feature vector (`models.embed`: the mean and spread of each channel of one
of the model's middle layers) to its K nearest training scans (deep nearest neighbours, Sun et al., 2022).
Evaluate writes the training scans' vectors and a threshold beside the model, `models/<model>.novelty.npz`:
the 99th percentile of the validation scans' scores, so about one scan in a hundred like the collection
exceeds it. `brain-tumor predict` prints each scan's score, flags those above the threshold and warns when
any are.

The file is a zip of .npy arrays (as the seen-index: same vectors, same bytes), readable without torch,
and bound to the model file by its sha256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.npz import read_arrays, save_arrays

KIND = "brain-tumor novelty v1"
NEIGHBOURS = 10
QUANTILE = 0.99  # of the validation scans' scores: the threshold
REFERENCE_SCANS = 3000  # training scans kept as the reference (evenly spaced rows): the file stays small
REBUILD = "run the evaluate stage again (dvc repro)"


def novelty_path(model_path: Path) -> Path:
    """models/transfer.pt (or .onnx) -> models/transfer.novelty.npz."""
    return model_path.with_suffix(".novelty.npz")


def unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def novelty_scores(reference: np.ndarray, features: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Mean cosine distance of each row of `features` to its `neighbours` nearest rows of `reference` (unit rows)."""
    queries = unit_rows(features)
    k = min(neighbours, len(reference))
    out = np.empty(len(queries), np.float64)
    for start in range(0, len(queries), 512):
        similarity = queries[start : start + 512] @ reference.T
        nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
        out[start : start + 512] = 1 - nearest.astype(np.float64).mean(1)
    return np.round(out, 6)


@dataclass(frozen=True)
class Novelty:
    reference: np.ndarray  # unit feature vectors of training scans
    threshold: float  # scores above it: unlike the training collection
    model_sha256: str

    def scores(self, features: np.ndarray) -> np.ndarray:
        return novelty_scores(self.reference, features)


def reference_rows(n: int) -> np.ndarray:
    """At most REFERENCE_SCANS of n training rows, evenly spaced: the same rows for the same split."""
    return np.unique(np.linspace(0, n - 1, min(REFERENCE_SCANS, n)).astype(int))


def build_novelty(reference_features: np.ndarray, val_features: np.ndarray, model_sha256: str) -> Novelty:
    """The reference (training scans' vectors) and the threshold calibrated on the validation scans."""
    reference = unit_rows(reference_features)
    threshold = float(np.quantile(novelty_scores(reference, val_features), QUANTILE))
    return Novelty(reference, round(threshold, 6), model_sha256)


def save_novelty(path: Path, novelty: Novelty) -> None:
    meta = {"kind": KIND, "threshold": novelty.threshold, "model_sha256": novelty.model_sha256}
    meta |= {"neighbours": NEIGHBOURS, "quantile": QUANTILE}
    save_arrays(path, {"reference": novelty.reference, "meta": json.dumps(meta)})


def read_novelty(path: Path, model_sha256: str | None) -> Novelty:
    """The novelty file beside a model, checked: what it is, its values, and that it was made for this model."""
    reference, meta = read_arrays(path, ("reference",), KIND, "a novelty file", REBUILD)
    if reference.ndim != 2 or not len(reference) or reference.dtype != np.float32:
        raise PipelineError(f"{path}: not a novelty file of this code (the reference's shape); {REBUILD}")
    if model_sha256 is not None and meta.get("model_sha256") != model_sha256:
        raise PipelineError(f"{path}: made for another model file than the one beside it; {REBUILD}")
    return Novelty(reference, meta["threshold"], meta["model_sha256"])

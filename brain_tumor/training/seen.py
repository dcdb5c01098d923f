"""Which scans has a model effectively seen? The seen-index beside each model, and the look-up in it.

Public "external" brain-MRI sets hold many re-saved copies of the common training sets, so a figure measured
on them is partly a training-set figure. The training stage writes, beside the model, the split's similarity
descriptor (`similarity.descriptor`: blind to contrast, gamma, re-encoding, small shifts and flips) of every
training and validation scan; `brain-tumor predict` compares each new scan with them and marks it as seen at
the split's own same-slice threshold. The index is bound to the model by the split manifest both were made
from (a model record's `split_manifest_sha256`, the ONNX metadata's copy of it).

The file (`models/<model>.seen.npz`) is a zip of .npy arrays with fixed timestamps, so the same index has the
same bytes (DVC hashes it), and reading it needs neither pickle nor torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.npz import read_arrays
from brain_tumor.data.similarity import DIM, best_matches, descriptor, file_descriptors

KIND = "brain-tumor seen-index v1"
RETRAIN = "run the model's training stage again (dvc repro)"


def index_path(model_path: Path) -> Path:
    """models/transfer.pt (or .onnx) -> models/transfer.seen.npz."""
    return model_path.with_suffix(".seen.npz")


@dataclass(frozen=True)
class SeenIndex:
    descriptors: np.ndarray  # n x DIM float32, unit length
    sources: np.ndarray  # the scans' source paths, as ingest recorded them
    threshold: float  # the split's similarity_threshold: at or above it, the same slice
    split_manifest_sha256: str


def build_index(split_dir: Path, manifest: pd.DataFrame, manifest_sha256: str, threshold: float) -> dict:
    """The arrays of the index of the training and validation scans of `manifest` (the split manifest, read)."""
    seen = manifest[manifest["split"].isin(("train", "val"))]
    descriptors = file_descriptors([split_dir / f for f in seen["file"]]).astype(np.float16)
    meta = {"kind": KIND, "split_manifest_sha256": manifest_sha256, "threshold": threshold, "images": len(seen)}
    sources = np.array(seen["source"].astype(str).tolist(), dtype=np.str_)
    return {"descriptors": descriptors, "sources": sources, "meta": json.dumps(meta)}


def read_index(path: Path, split_manifest_sha256: str | None) -> SeenIndex:
    """The index beside a model, checked: what it is, its shapes and values, and (given the model's
    `split_manifest_sha256`) that it was made from the split the model was trained on."""
    descriptors, sources, meta = read_arrays(path, ("descriptors", "sources"), KIND, "a seen-index", RETRAIN)
    threshold = meta["threshold"]
    valid = (
        0 < threshold <= 1
        and descriptors.ndim == 2
        and descriptors.shape[1] == DIM
        and sources.shape == (len(descriptors),)
        and sources.dtype.kind == "U"
    )
    if not valid:
        raise PipelineError(f"{path}: not a seen-index of this code (kind, threshold or shapes); {RETRAIN}")
    if split_manifest_sha256 is not None and meta.get("split_manifest_sha256") != split_manifest_sha256:
        raise PipelineError(f"{path}: made from another split than the model beside it; {RETRAIN}")
    return SeenIndex(descriptors.astype(np.float32), sources, threshold, meta["split_manifest_sha256"])


def nearest_seen(index: SeenIndex, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For decoded RGB scans: the highest similarity to any scan in the index (4 decimals, rounded down, as the
    split reports it) and that scan's source path."""
    from PIL import Image

    queries = np.stack([descriptor(np.asarray(Image.fromarray(rgb).convert("L"))) for rgb in images])
    sims, rows = best_matches(queries, index.descriptors)
    return np.floor(sims.astype(np.float64) * 10_000) / 10_000, index.sources[rows]

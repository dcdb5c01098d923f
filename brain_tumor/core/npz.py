"""Arrays beside a model (the seen-index, the novelty reference): a zip of .npy files with fixed timestamps, so
the same arrays have the same bytes (DVC hashes them), readable without pickle or torch, and checked on read."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np

from brain_tumor.core.errors import PipelineError, one_line
from brain_tumor.core.outputs import atomic_write


def save_arrays(path: Path, arrays: dict) -> None:
    """Named arrays as a zip of .npy files with fixed timestamps (the same arrays, the same bytes), written
    atomically."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                    np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)

    atomic_write(path, write)


def read_arrays(path: Path, names: tuple[str, ...], kind: str, what: str, fix: str) -> tuple:
    """The named arrays of a file `save_arrays` wrote, and its `meta` (JSON), checked to be of `kind` with a
    finite float threshold; one error line naming the file when it is not."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays, meta = [saved[name] for name in names], json.loads(str(saved["meta"]))
    except Exception as err:  # a damaged zip, a foreign file or a missing array fail in many ways: say which file
        raise PipelineError(f"{path}: not {what} ({one_line(err)}); {fix}") from None
    threshold = meta.get("threshold") if isinstance(meta, dict) else None
    if not (isinstance(meta, dict) and meta.get("kind") == kind and isinstance(threshold, float)):
        raise PipelineError(f"{path}: not {what} of this code (kind or threshold); {fix}")
    if not math.isfinite(threshold) or not all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f"):
        raise PipelineError(f"{path}: not {what} of this code (a value is not finite); {fix}")
    return (*arrays, meta)

"""Helpers every stage uses: params, seeds, one-line errors, atomic outputs, tables."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

CLASSES = ("non_tumor", "tumor")  # index = label, as ImageFolder orders the class folders


class PipelineError(Exception):
    """A problem with the user's data or params: reported as one line, exit status 1."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a PipelineError becomes `error: ...` on stderr and exit 1, not a traceback."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces `target` only if the block succeeds.

    A failed stage therefore never leaves a half-written output that looks finished.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result to `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def write_table(path: str | Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda p: table.to_csv(p, index=False))


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV this pipeline wrote; ids and hashes stay strings (a hex id like '1e5' is not a number)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar on a terminal; silent when output is a log file or CI (disable=None)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, dynamic_ncols=True)

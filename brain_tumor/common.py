"""Helpers every stage uses: params, seeds, one-line errors, atomic outputs, tables."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

CLASSES = ("non_tumor", "tumor")  # index = label, as ImageFolder orders the class folders
TMP_PREFIX = ".tmp-"  # temporary outputs: `.tmp-<pid>-<name>...` next to their target (gitignored)


class PipelineError(Exception):
    """A problem with the user's data or params: reported as one line, exit status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the stage is, so that `finally` blocks and `atomic_dir` clean up as on Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a PipelineError becomes `error: ...` on stderr and exit 1, not a traceback.

    SIGTERM and Ctrl-C remove the partial outputs (as any failure does) and exit 143 / 130 with one line.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, Terminated) else "interrupt"
        print(f"error: stopped by {name}; partial outputs removed", file=sys.stderr)
        sys.exit(143 if isinstance(err, Terminated) else 130)


def pool_worker_init() -> None:
    """Pool workers leave signals to the stage process, which stops them (SIGTERM) and cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def one_line(err: BaseException) -> str:
    """An exception as one short line for an error message (its first line, or its type)."""
    text = " ".join(str(err).split("\n", 1)[0].split())
    return text[:200] or type(err).__name__


def warn(message: str) -> None:
    """One line on stderr for something the run repaired by itself (e.g. a rebuilt cache)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """params.yaml, checked against the schema (params.py) before a stage does any work."""
    from .params import ParamsLoader, validate_params

    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=ParamsLoader)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: not readable YAML ({' '.join(str(err).split())})") from None
    return validate_params(raw, str(path))


def require_both_classes(labels: Iterable[int], where: str) -> None:
    """Training and evaluation need images of both classes; say so before any training, not after."""
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=len(CLASSES))
    if missing := [name for name, n in zip(CLASSES, counts, strict=True) if n == 0]:
        have = ", ".join(f"{n} {name}" for name, n in zip(CLASSES, counts, strict=True) if n)
        raise PipelineError(f"{where}: no {missing[0]} images ({have or 'no images at all'}); both classes are needed")


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)


# ---------------------------------------------------------------- temporary outputs next to their target

_swept: set[Path] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sweep_temporaries(folder: Path) -> None:
    """Remove what a killed run left in `folder`: `.tmp-<pid>-*` entries whose process is gone.

    Runs once per folder and process; a live process's temporaries (a parallel stage, a DDP rank) stay.
    """
    folder = Path(os.path.abspath(folder))
    if folder in _swept or not folder.is_dir():
        return
    _swept.add(folder)
    for entry in folder.iterdir():
        match = re.match(rf"{re.escape(TMP_PREFIX)}(\d+)-", entry.name)
        if match and not _alive(int(match[1])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def temporary_dir(parent: Path, name: str) -> Path:
    """A new empty folder in `parent` that a later run recognises as debris if this process dies."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(parent)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-{name}-", dir=parent))


@contextlib.contextmanager
def scratch_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """A working folder in `parent` (not /tmp: big data stays on the project's disk), removed on exit."""
    tmp = temporary_dir(Path(parent), name)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a scratch folder that replaces `target` only if the block succeeds.

    A failed stage therefore never leaves a half-written output that looks finished.
    """
    target = Path(target)
    tmp = temporary_dir(target.parent, target.name)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the output gets the usual permissions
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result to `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
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

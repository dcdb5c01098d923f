"""Outputs that are whole or absent: temporaries next to their target, renamed into place on success.

A failed or killed stage never leaves a half-written file that a later `dvc repro` could take for a good one;
a later run sweeps the `.tmp-<pid>-*` debris of dead processes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

TMP_PREFIX = ".tmp-"  # temporary outputs: `.tmp-<pid>-<name>...` next to their target (gitignored)


def file_digest(path: str | Path, algorithm: str) -> str:
    """The file's hex digest by `algorithm` (md5 is the hash dvc.lock records)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def file_sha256(path: str | Path) -> str:
    return file_digest(path, "sha256")


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
    if target.is_symlink() or (target.exists() and not target.is_dir()):  # never delete a user's file
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(target))
    tmp = temporary_dir(target.parent, target.name)
    try:
        yield tmp
        publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(finished: Path, target: Path) -> None:
    """Move the finished scratch folder to `target` in one rename (the old `target` goes first)."""
    os.chmod(finished, 0o777 & ~_umask())  # mkdtemp makes it private; the output gets the usual permissions
    if target.exists():
        shutil.rmtree(target)
    os.replace(finished, target)


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


def cache_dir() -> Path:
    """data/cache, or $BRAIN_TUMOR_CACHE (tests and benchmarks keep theirs apart)."""
    return Path(os.environ.get("BRAIN_TUMOR_CACHE", "data/cache"))

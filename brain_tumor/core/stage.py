"""The stage boundary: every stage script runs its `main` through `run_stage`.

Whatever goes wrong ends as one `error:` line and a non-zero exit, never a traceback: a PipelineError
(bad data, params or artifacts), a file-system fault (named path and cause), Ctrl-C (130) or SIGTERM (143).
Partial outputs are removed on the way out by the `atomic_*` helpers' clean-up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from brain_tumor.core.errors import PipelineError, Terminated

CAUSES = {  # errno -> what to tell the user
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "is a folder, a file is needed",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
    errno.ENOTEMPTY: "folder not empty",
}


@contextlib.contextmanager
def publishing() -> Iterator[None]:
    """Put a stage's finished outputs in place as one step with respect to SIGTERM and Ctrl-C: a signal that
    arrives while the block runs is held (Python runs signal handlers in the main thread, whichever thread the
    kernel picked) and dropped when the block completes, since every output is then in place and the run ends
    as a success. If the block fails, its error ends the run as usual."""
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if arrived:
        names = ", ".join(sorted({signal.Signals(s).name for s in arrived}))
        print(
            f"note: {names} arrived while the finished outputs were being put in place: they are complete, "
            "the run ends as a success",
            file=sys.stderr,
        )


def producer_of(path: str, dvc_yaml: Path = Path("dvc.yaml")) -> str | None:
    """The dvc.yaml stage whose output holds `path` (so the user knows what to re-run), if any."""
    import yaml

    try:
        stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    except Exception:  # no dvc.yaml here, or not ours: no hint, the error line stands without it
        return None
    target = Path(os.path.relpath(os.path.abspath(path))).as_posix()
    for name, stage in stages.items():
        for entry in stage.get("outs", []):
            out = next(iter(entry)) if isinstance(entry, dict) else str(entry)
            if target == out or target.startswith(out.rstrip("/") + "/"):
                return name
    return None


def describe_os_error(err: OSError) -> str:
    """One line naming the path and the cause, with what to do about a missing pipeline file."""
    path = err.filename if err.filename is not None else "(no path)"
    if err.errno == errno.ENOENT:
        stage = producer_of(str(path))
        hint = f"; run `dvc repro {stage}` first" if stage else ""
        return f"{path}: missing{hint}"
    cause = CAUSES.get(err.errno, err.strerror or type(err).__name__)
    other = f" (and {err.filename2})" if getattr(err, "filename2", None) else ""
    return f"{path}{other}: {cause}"


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated


def handle_signals() -> None:
    """SIGTERM raises Terminated; Ctrl-C raises KeyboardInterrupt even where the process was started with
    SIGINT ignored (a background job of a non-interactive shell), so that both stop the stage."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def keep_torch_cache_in(folder: Path) -> None:
    """torch writes a compile cache (`torchinductor_<user>`) to $TMPDIR unless told where: keep it in `folder`."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder.resolve() / "torchinductor"))


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; every failure is one `error:` line on stderr and a non-zero exit."""
    from brain_tumor.core.outputs import cache_dir

    handle_signals()
    keep_torch_cache_in(cache_dir())  # the project's ignored cache, not $TMPDIR
    sys.exit(exit_status(main))


def exit_status(main: Callable[[], None]) -> int:
    """0, or 1 / 130 / 143 after printing one `error:` line (shared by the stages and the CLI)."""
    try:
        main()
    except PipelineError as err:
        print(f"error: {' '.join(str(err).splitlines())}", file=sys.stderr)  # one line, whatever a value held
        return 1
    except OSError as err:
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        name = "SIGTERM" if isinstance(err, Terminated) else "interrupt"
        print(f"error: stopped by {name}; partial outputs removed", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    return 0


# ---------------------------------------------------------------- worker processes

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def pool_worker_init() -> None:
    """Pool workers leave signals to the stage process, which stops them (SIGTERM) and cleans up, and die
    quietly with it if it is killed outright (no BrokenPipeError from orphaned workers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


@contextlib.contextmanager
def worker_pool(processes: int) -> Iterator[Any]:
    """A multiprocessing Pool whose start cannot swallow a stop signal: SIGTERM and SIGINT are held while the
    workers fork and delivered right after, where the stage's clean-up can act on them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pool = Pool(processes, initializer=pool_worker_init)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    with pool:
        yield pool

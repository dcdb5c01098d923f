"""One-line errors and warnings: what a user sees when something is wrong."""

from __future__ import annotations

import sys


class PipelineError(Exception):
    """A problem with the user's data, params or files: reported as one line, exit status 1."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the stage is, so that `finally` blocks and `atomic_dir` clean up as on Ctrl-C."""


def one_line(err: BaseException) -> str:
    """An exception as one short line for an error message (its first line, or its type)."""
    text = " ".join(str(err).split("\n", 1)[0].split())
    return text[:200] or type(err).__name__


def warn(message: str) -> None:
    """One line on stderr for something the run repaired by itself (e.g. a rebuilt cache)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)

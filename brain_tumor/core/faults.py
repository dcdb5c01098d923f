"""Fault injection, for the tests only: each hook does nothing unless its environment variable is set.

The interruption and resume tests need a run to stop at a known point, whatever the machine's speed; these
are the only places in the package that read such variables:

    BRAIN_TUMOR_PAUSE_AFTER=<stage>:<n>      `pause_point`: wait for a signal once n items are done
    BRAIN_TUMOR_SIGTERM_AT=<where>           `signal_point`: send ourselves SIGTERM at that point
    BRAIN_TUMOR_KILL_AFTER_EPOCH=<k>[:TERM]  `kill_point`: SIGKILL (or SIGTERM) right after epoch k is saved
"""

from __future__ import annotations

import os
import signal
import sys


def pause_point(stage: str, done: int) -> None:
    """Say `paused: <stage> after <n> items` on stderr once `stage` has finished n items, then wait for a
    signal, so a test kills it mid-run by reading that line, not by polling the file system."""
    if os.environ.get("BRAIN_TUMOR_PAUSE_AFTER") == f"{stage}:{done}":
        print(f"paused: {stage} after {done} items", file=sys.stderr, flush=True)
        signal.pause()


def signal_point(where: str) -> None:
    """SIGTERM at `where`, as a `kill` arriving at that very moment would."""
    if os.environ.get("BRAIN_TUMOR_SIGTERM_AT") == where:
        os.kill(os.getpid(), signal.SIGTERM)


def kill_point(epoch: int) -> None:
    """SIGKILL (or SIGTERM) right after epoch k's state is saved, as a machine going down at that moment would."""
    at, _, name = os.environ.get("BRAIN_TUMOR_KILL_AFTER_EPOCH", "").partition(":")
    if at.isdigit() and int(at) == epoch:
        os.kill(os.getpid(), signal.SIGTERM if name == "TERM" else signal.SIGKILL)

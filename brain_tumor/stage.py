"""The stage boundary: every stage script runs its `main` through `run_stage`."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from .errors import PipelineError, Terminated


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

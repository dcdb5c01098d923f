"""A killed run resumes: the full training state saved beside the model after each epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from brain_tumor.core.outputs import atomic_write
from brain_tumor.training.checkpoint import save_checkpoint


class ResumeFile:
    """The training state beside the model (`models/<kind>.resume.pt`), written atomically after an epoch.

    It is used only by a run with the same inputs (`fingerprint`: params, split, code, library versions);
    anything else starts afresh. The finished run removes it. Writing it is not free (the scratch CNN's state
    with Adam's moments and the best epoch's weights is 1.6 GB, about 10 s here), so it is written after the
    first epoch and then whenever the training since the last write took at least SPEND times as long as that
    write: resuming costs at most 1/SPEND of the run, and a kill loses at most about SPEND writes' worth of
    training. Which epochs are saved never changes the result: a resumed run ends byte-identical anyway.
    """

    SPEND = 10

    def __init__(self, path: Path, fingerprint: str, clock: Callable[[], float] = time.perf_counter):
        self.path, self.fingerprint, self.clock = path, fingerprint, clock  # tests pass a clock of their own
        self.last_write_s = 0.0  # how long the last write took
        self.since_write_s = 0.0  # training time since then
        self.epoch_started = clock()

    def due(self, epoch: int) -> bool:
        """Whether to write after `epoch`, which has just ended (timed from the end of the previous one)."""
        now = self.clock()
        self.since_write_s += now - self.epoch_started
        self.epoch_started = now
        return epoch == 1 or self.since_write_s >= self.SPEND * self.last_write_s

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # writes are atomic, so not a torn file: a foreign or damaged one; start afresh
            saved = None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            print(f"{self.path}: from another run (other params, data or code); starting afresh", flush=True)
            return None
        return saved

    def save(self, saved: dict) -> None:
        started = self.clock()
        atomic_write(self.path, lambda p: save_checkpoint(saved | {"fingerprint": self.fingerprint}, p))
        self.epoch_started = self.clock()  # the next epoch's training starts after the write
        self.last_write_s, self.since_write_s = self.epoch_started - started, 0.0

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

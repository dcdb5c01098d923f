"""The one training loop for both models: epochs, Adam, the schedule, the best epoch, resume and DDP."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from brain_tumor.core.arrays import (
    batch_indices,
)
from brain_tumor.core.console import progress
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.faults import kill_point
from brain_tumor.core.params import TrainParams
from brain_tumor.training.batches import Batches
from brain_tumor.training.device import autocast, world
from brain_tumor.training.models import (
    seed_dropout,
    sync_batchnorm,
)
from brain_tumor.training.resume import ResumeFile

DIVERGED_LOSS = 10 * math.log(2)  # a best validation loss above 10x a coin flip's: the run diverged


@dataclass
class EpochStats:
    loss: float
    accuracy: float


def run_epoch(
    model: nn.Module,
    batches: Batches,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    desc: str = "",
    augment_generator: torch.Generator | None = None,
    label_smoothing: float = 0.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> EpochStats:
    """One pass: trains when `optimizer` is given (shuffled by `generator`), else evaluates.

    Under torchrun each global batch is divided between the ranks; losses are summed and scaled so that
    DDP's gradient averaging yields exactly the single-process mean over the global batch. Augmentation
    flips come from their own generator and are drawn for the whole global batch, so every rank (and one
    process alone) sees the same flips whatever the number of ranks. The reported loss is plain cross
    entropy (no label smoothing), so runs with and without smoothing compare.
    """
    rank, size = world()
    training = optimizer is not None
    model.train(training)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.set_grad_enabled(training):
        order = batch_indices(len(batches), batch_size, generator, batches.weights if training else None)
        for idx in progress(order, desc, unit="batch"):
            share = np.array_split(np.arange(len(idx)), size)[rank]
            local = idx[share]
            flips = looks = None
            if training and batches.augment:
                flips = (torch.rand(len(idx), generator=augment_generator) < 0.5)[torch.from_numpy(share)]
            if training and batches.looks > 1:
                looks = torch.randint(batches.looks, (len(idx),), generator=augment_generator).numpy()[share]
            x, y = batches.get(local, device, flips, looks)
            with autocast(device, amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            if training:
                optimizer.zero_grad(set_to_none=True)
                smoothed = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
                (smoothed * size / len(idx)).backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            totals += torch.tensor([loss.item(), (logits.argmax(1) == y).sum().item(), len(local)], dtype=torch.float64)
    if size > 1:
        dist.all_reduce(totals)
    return EpochStats(loss=float(totals[0] / totals[2]), accuracy=float(totals[1] / totals[2]))


@dataclass
class RunState:
    """What a run has done so far: saved after every epoch, so that a killed run can resume."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)  # per epoch: train/val loss and accuracy
    best: dict = field(default_factory=dict)  # the best epoch by validation loss: epoch, val_loss, val_accuracy
    best_state: dict | None = None  # its weights

    def record(self, epoch: int, train: EpochStats, val: EpochStats, network: nn.Module) -> bool:
        """Adds the epoch; keeps the network's weights when its validation loss is the lowest so far."""
        if not (math.isfinite(train.loss) and math.isfinite(val.loss)):
            raise PipelineError(
                f"epoch {epoch}: loss {train.loss:.4g} (train), {val.loss:.4g} (val): training diverged; lower lr"
            )
        self.epoch = epoch
        self.history.append({"train": vars(train), "val": vars(val)})
        is_best = val.loss < self.best.get("val_loss", math.inf)
        if is_best:
            self.best = {"epoch": epoch, "val_loss": val.loss, "val_accuracy": val.accuracy}
            self.best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        return is_best

    def replay(self, on_epoch: Callable[[int, EpochStats, EpochStats, bool, bool], None]) -> None:
        """The curves of the epochs done, logged again exactly as the killed run logged them."""
        best = math.inf
        for done, record in enumerate(self.history, start=1):
            train, val = EpochStats(**record["train"]), EpochStats(**record["val"])
            on_epoch(done, train, val, val.loss < best, True)
            best = min(best, val.loss)

    def saved(self) -> dict:
        return {"epoch": self.epoch, "history": self.history, "best": self.best, "best_state": self.best_state}


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr from its value down to 0 along half a cosine over the run (stateless but for the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )


class Optimisation:
    """Adam on the trainable parameters, the lr schedule and the random generators: everything besides the
    weights that a resumed run must restore to continue byte for byte."""

    def __init__(self, model: nn.Module, cfg: TrainParams, train_size: int):
        self.optimizer = torch.optim.Adam(  # fused: one kernel per step, 2x on the scratch CNN
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, fused=True
        )
        steps = cfg.epochs * -(-train_size // cfg.batch_size)
        self.scheduler = cosine_schedule(self.optimizer, steps) if cfg.lr_schedule == "cosine" else None
        self.generators = {
            "shuffle": torch.Generator().manual_seed(cfg.seed),
            "augment": torch.Generator().manual_seed(cfg.seed + 1),  # flips never shift the shuffling
            **{f"dropout{i}": g for i, g in enumerate(seed_dropout(model, cfg.seed + 2))},
        }

    def saved(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "generators": {name: g.get_state() for name, g in self.generators.items()},
        }

    def restore(self, saved: dict) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        for name, generator in self.generators.items():
            generator.set_state(saved["generators"][name])


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    cfg: TrainParams,
    *,
    device: torch.device,
    amp: torch.dtype | None,
    on_epoch: Callable[[int, EpochStats, EpochStats, bool, bool], None],
    resume: ResumeFile | None = None,
    network: nn.Module | None = None,
) -> RunState:
    """Adam on the trainable parameters (cfg: epochs, batch_size, lr, lr_schedule, label_smoothing, seed);
    validation (eval mode) every epoch; the weights of `network` (default: `model`, which may wrap it) with the
    lowest validation loss are kept.

    A loss that is not finite stops the run with an error: a diverged model must not look trained.
    """
    rank, size = world()
    network = network if network is not None else model
    if size > 1:
        sync_batchnorm(model)  # before the optimizer and DDP see the model: same parameters, global statistics
    opt = Optimisation(model, cfg, len(train))
    net = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    state = RunState()
    saved = resume.load() if resume is not None else None
    if saved is not None:
        network.load_state_dict(saved["model"])
        opt.restore(saved)
        state = RunState(saved["epoch"], saved["history"], saved["best"], saved["best_state"])
        print(f"resuming after epoch {state.epoch}/{cfg.epochs} from {resume.path}", flush=True)
        if rank == 0:
            state.replay(on_epoch)
    if resume is not None:
        resume.epoch_started = resume.clock()  # after the set-up and any replay: training time only
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        desc = f"epoch {epoch}/{cfg.epochs}"
        train_stats = run_epoch(
            net, train, cfg.batch_size, device, amp, opt.optimizer, opt.generators["shuffle"], desc,
            opt.generators["augment"], cfg.label_smoothing, opt.scheduler,
        )  # fmt: skip
        val_stats = run_epoch(net, val, cfg.batch_size, device, amp, desc="validate")
        is_best = state.record(epoch, train_stats, val_stats, network)
        if rank == 0:
            on_epoch(epoch, train_stats, val_stats, is_best, False)
            last = epoch == cfg.epochs  # the model is written next: nothing to resume
            if resume is not None and not last and resume.due(epoch):
                resume.save(state.saved() | opt.saved() | {"model": network.state_dict()})
            kill_point(epoch)
    if state.best["val_loss"] > DIVERGED_LOSS:
        raise PipelineError(
            f"training diverged: the best validation loss is {state.best['val_loss']:.4g} (guessing scores "
            f"{math.log(2):.3f}); lower lr"
        )
    return state

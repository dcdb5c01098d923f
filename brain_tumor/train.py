"""One training loop for both models, the decode-once and frozen-prefix fast paths, resumable runs.

Fast paths never change results: images are decoded once into a uint8 cache (data.py); the frozen part of
the transfer model (eval-mode BatchNorm, no gradients) is a pure function of the image, so its output is
computed once per split, for the image and for its mirror where flips are used, and only the trainable
blocks and the head run every epoch. That is the same computation as running the whole model every epoch
(tests/test_train.py checks it).

A killed run resumes: after each epoch the full training state (weights, optimizer, random generators, the
curves so far and the best epoch's weights) is saved beside the model, and a new run with the same inputs
continues from there and ends byte-identical to an uninterrupted run, DVCLive's files included.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import data as data_module
from . import models as models_module
from .checkpoint import save_checkpoint
from .console import progress
from .contracts import read_split_manifest
from .data import (
    MEAN,
    STD,
    SplitImages,
    batch_indices,
    cached_array,
    code_fingerprint,
    load_split,
    sample_rows,
    to_input,
)
from .errors import PipelineError
from .intensity import apply_looks, look_tables
from .labels import CLASSES, require_both_classes
from .models import (
    WEIGHTS_SHA256,
    TransferNet,
    architecture,
    build_network,
    load_imagenet_backbone,
    resolve_weights,
    seed_dropout,
    sync_batchnorm,
)
from .numerics import reproducible, signature, threads
from .outputs import atomic_write, cache_dir, file_sha256, publish_dir, temporary_dir
from .params import Params, TrainParams, typed
from .seen import build_index, index_path, save_index
from .stage import publishing, signal_point

DIVERGED_LOSS = 10 * math.log(2)  # a best validation loss above 10x a coin flip's: the run diverged

# ---------------------------------------------------------------- hardware


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless launched by torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def setup_device() -> torch.device:
    """CUDA when present, else CPU; joins the process group when started by torchrun."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not reproducible()  # autotuning picks kernels run to run
        torch.backends.cudnn.deterministic = reproducible()
        torch.use_deterministic_algorithms(reproducible(), warn_only=True)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":  # reproducible mode: a fixed count (numerics.py); else every core on this node
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(threads() if reproducible() else max(1, (os.cpu_count() or 1) // per_node))
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for fp32; bf16 when asked, or for `auto` where the hardware runs it fast (recent GPUs, AMX CPUs).

    fp16 is not offered: it would need loss scaling, and bf16 does not.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if fast else None
    raise PipelineError(f"precision: {precision!r} is not fp32, bf16 or auto")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- batches


@dataclass
class Batches:
    """Inputs (uint8 images, or cached prefix outputs with their views) and labels; `prepare` turns rows into a
    model input, given which rows to mirror and which intensity look each row takes (training), or None."""

    inputs: np.ndarray
    labels: np.ndarray
    prepare: Callable[[np.ndarray, torch.Tensor | None, np.ndarray | None], torch.Tensor]
    augment: bool = False  # training draws random horizontal flips for these inputs
    looks: int = 1  # training draws one of this many intensity looks per row (look 0: the scan itself)
    weights: np.ndarray | None = None  # training draws rows with these weights (with replacement), else shuffles

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx: np.ndarray, device: torch.device, flips: torch.Tensor | None = None, looks=None):
        return self.prepare(idx, flips, looks), torch.from_numpy(self.labels[idx]).to(device)


def image_batches(split: SplitImages, device: torch.device, augment: bool, tables: np.ndarray | None = None) -> Batches:
    """Decoded images; `tables` (rows x looks x 256, see intensity.py) gives each row its intensity looks."""

    def prepare(idx: np.ndarray, flips: torch.Tensor | None, looks: np.ndarray | None) -> torch.Tensor:
        batch = split.images[idx]
        if looks is not None:
            batch = apply_looks(batch, tables[idx, looks])
        x = to_input(batch, device)
        if flips is not None:  # random horizontal flips: brains are near-symmetric
            flips = flips.to(x.device)
            x[flips] = x[flips].flip(-1)
        return x

    return Batches(split.images, split.labels, prepare, augment, 1 if tables is None else tables.shape[1])


def prefix_batches(
    views: np.ndarray, labels: np.ndarray, device: torch.device, augment: bool, looks: int = 1
) -> Batches:
    """Cached prefix outputs, N x (looks x mirrors) x ... (view look * mirrors: the look; + 1: its mirror): a
    training batch takes each row's drawn look and mirror, an evaluation batch all views (PrefixViews averages
    the image and its mirror for TTA)."""
    mirrors = views.shape[1] // looks

    def prepare(idx: np.ndarray, flips: torch.Tensor | None, chosen: np.ndarray | None) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(views[idx]))
        if flips is not None or chosen is not None:
            view = torch.zeros(len(idx), dtype=torch.long)
            if chosen is not None:
                view += torch.from_numpy(chosen).long() * mirrors
            if flips is not None:
                view += flips.long()
            x = x[torch.arange(len(x)), view].unsqueeze(1)
        return x.to(device)

    return Batches(views, labels, prepare, augment, looks)


def acquisition_weights(labels: np.ndarray, rows) -> np.ndarray:
    """Sampling weights that give every estimated acquisition kind the same share of its class's draws, the
    class's share unchanged: a rare kind of scan (T2-like tumours) is drawn as often as the common one."""
    cell = rows["label"].astype(str).str.cat(rows["acquisition"].astype(str), sep=" ").to_numpy()
    weights = np.empty(len(labels), dtype=np.float64)
    for label in np.unique(labels):
        in_class = labels == label
        kinds, counts = np.unique(cell[in_class], return_counts=True)
        per_cell = dict(zip(kinds, in_class.sum() / (len(kinds) * counts), strict=True))
        weights[in_class] = [per_cell[c] for c in cell[in_class]]
    return weights


class PrefixViews(nn.Module):
    """The transfer model's trainable part on cached prefix outputs (batch x views x ...): one view while
    training; in eval mode view 0, or the mean logits of the image and its mirror when the model averages
    them (tta), exactly as TransferNet.forward does on images."""

    def __init__(self, model: TransferNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use = x.shape[1] if (self.model.tta and not self.training) else 1
        logits = [self.model.trainable_part(_fast_layout(x[:, v])) for v in range(use)]
        return sum(logits[1:], logits[0]) / use


def _fast_layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


# ---------------------------------------------------------------- the loop


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


def kill_point(epoch: int) -> None:
    """Fault injection for the resume tests: BRAIN_TUMOR_KILL_AFTER_EPOCH=k[:TERM] makes the run kill itself
    (SIGKILL, or SIGTERM) right after epoch k's state is saved, as a machine going down at that moment would."""
    spec = os.environ.get("BRAIN_TUMOR_KILL_AFTER_EPOCH", "")
    at, _, name = spec.partition(":")
    if at.isdigit() and int(at) == epoch:
        os.kill(os.getpid(), signal.SIGTERM if name == "TERM" else signal.SIGKILL)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr from its value down to 0 along half a cosine over the run (stateless but for the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )


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
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, fused=True)  # one kernel per step: 2x on the scratch CNN
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    scheduler = cosine_schedule(optimizer, cfg.epochs * steps_per_epoch) if cfg.lr_schedule == "cosine" else None
    net = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    dropout = seed_dropout(model, cfg.seed + 2)
    generators = {
        "shuffle": torch.Generator().manual_seed(cfg.seed),
        "augment": torch.Generator().manual_seed(cfg.seed + 1),  # flips never shift the shuffling
        **{f"dropout{i}": g for i, g in enumerate(dropout)},
    }
    state = RunState()
    saved = resume.load() if resume is not None else None
    if saved is not None:
        network.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        for name, generator in generators.items():
            generator.set_state(saved["generators"][name])
        state = RunState(saved["epoch"], saved["history"], saved["best"], saved["best_state"])
        print(f"resuming after epoch {state.epoch}/{cfg.epochs} from {resume.path}", flush=True)
        if rank == 0:  # the curves of the epochs done, logged again exactly as the killed run logged them
            best = math.inf
            for done, record in enumerate(state.history, start=1):
                tr, va = EpochStats(**record["train"]), EpochStats(**record["val"])
                on_epoch(done, tr, va, va.loss < best, True)
                best = min(best, va.loss)
    if resume is not None:
        resume.epoch_started = resume.clock()  # after the set-up and any replay: training time only
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        desc = f"epoch {epoch}/{cfg.epochs}"
        train_stats = run_epoch(
            net, train, cfg.batch_size, device, amp, optimizer, generators["shuffle"], desc,
            generators["augment"], cfg.label_smoothing, scheduler,
        )  # fmt: skip
        val_stats = run_epoch(net, val, cfg.batch_size, device, amp, desc="validate")
        if not (math.isfinite(train_stats.loss) and math.isfinite(val_stats.loss)):
            raise PipelineError(
                f"epoch {epoch}: loss {train_stats.loss:.4g} (train), {val_stats.loss:.4g} (val): training "
                "diverged; lower lr"
            )
        state.epoch = epoch
        state.history.append({"train": vars(train_stats), "val": vars(val_stats)})
        is_best = val_stats.loss < state.best.get("val_loss", math.inf)
        if is_best:
            state.best = {"epoch": epoch, "val_loss": val_stats.loss, "val_accuracy": val_stats.accuracy}
            state.best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        if rank == 0:
            on_epoch(epoch, train_stats, val_stats, is_best, False)
            last = epoch == cfg.epochs  # the model is written next: nothing to resume
            if resume is not None and not last and resume.due(epoch):
                resume.save(
                    {
                        "epoch": state.epoch,
                        "history": state.history,
                        "best": state.best,
                        "best_state": state.best_state,
                        "model": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else {},
                        "generators": {name: g.get_state() for name, g in generators.items()},
                    }
                )
            kill_point(epoch)
    if state.best["val_loss"] > DIVERGED_LOSS:
        raise PipelineError(
            f"training diverged: the best validation loss is {state.best['val_loss']:.4g} (guessing scores "
            f"{math.log(2):.3f}); lower lr"
        )
    return state


# ---------------------------------------------------------------- the frozen prefix, computed once

PREFIX_BATCH = 8  # images per batch of the prefix pass: 1.2-1.4x the speed of 64 on a 2-core CPU (in cache)


@torch.inference_mode()
def prefix_views(
    model: TransferNet,
    split: SplitImages,
    mirrors: int,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
    desc: str = "prefix",
    tables: np.ndarray | None = None,
) -> np.ndarray:
    """The frozen prefix's output for every image of a split under each intensity look of `tables` (rows x
    looks x 256; None: the image only), and for each look's mirror when `mirrors` is 2, cached on disk as
    float32: N x (looks x mirrors) x (the prefix's output shape); view look * mirrors + mirror.

    Key: the split's pixels, the look tables, the weights' sha256, image size, normalisation, how many blocks
    are frozen and the prefix's output shape, precision, device type, the batch size (kernels may round
    differently for another one), and the producing code and library versions.
    """
    prefix = model.frozen_prefix().to(device)
    size = split.images.shape[1]
    shape = tuple(prefix(torch.zeros(1, 3, size, size, device=device)).shape[1:])
    looks = 1 if tables is None else tables.shape[1]
    code = code_fingerprint(prefix_views, to_input, TransferNet, autocast, apply_looks)
    key = hashlib.sha256(
        f"{split.key} {WEIGHTS_SHA256} {split.images.shape} {MEAN} {STD} {model.n_frozen} {shape} {mirrors} {amp} "
        f"{batch_size} {device.type} {signature()} {code}".encode()
    )
    if tables is not None:
        key.update(tables.tobytes())

    def compute(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), looks * mirrors, *shape), np.float32)
        for look in range(looks):
            images = split.images[rows] if look == 0 else apply_looks(split.images[rows], tables[rows, look])
            x = to_input(images, device)
            for mirror in range(mirrors):
                with autocast(device, amp):
                    out[:, look * mirrors + mirror] = prefix(x.flip(-1) if mirror else x).float().cpu().numpy()
        return out

    def fill(out: np.ndarray) -> None:
        for idx in progress(batch_indices(len(split.labels), batch_size, None), desc, unit="batch"):
            out[idx] = compute(idx)

    def verify(array: np.ndarray) -> str | None:
        """A sample of rows recomputed in one batch: other batch sizes round differently, hence the tolerance."""
        rows = sample_rows(len(split.labels))
        fresh = compute(rows)
        for view in range(looks * mirrors):
            scale = max(float(np.abs(fresh[:, view]).max()), 1e-6) * (1e-3 if amp is None else 3e-2)  # bf16: 8 bits
            if not np.allclose(array[rows, view], fresh[:, view], rtol=0, atol=scale):
                return f"rows {rows.tolist()} differ from the frozen prefix's output (replaced?)"
        return None

    entry = cache_dir() / f"prefix-{key.hexdigest()[:24]}"
    return cached_array(entry, (len(split.labels), looks * mirrors, *shape), np.float32, fill, verify)


# ---------------------------------------------------------------- the stages


def build_model(kind: str, cfg: TrainParams) -> nn.Module:
    """The model a training run starts from: the one factory's network, ImageNet weights in the backbone."""
    model = build_network(architecture(kind, cfg))
    if kind == "transfer":
        load_imagenet_backbone(model, resolve_weights())
    return model


@contextlib.contextmanager
def exclusive(model_path: Path) -> Iterator[None]:
    """One training run per model file at a time: a second run is refused, not interleaved with the first."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with open(model_path.with_name(f".{model_path.name}.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{model_path}: another training run is writing it; wait for it to end") from None
        yield


def run_fingerprint(cfg: TrainParams, manifest_sha256: str, cached: bool, device: torch.device) -> str:
    """What a resumed run must share with the killed one: params, split, fast path, code, library versions."""
    code = code_fingerprint(sys.modules[__name__], models_module, data_module)
    _, size = world()
    text = json.dumps([asdict(cfg), manifest_sha256, cached, code, device.type, size, signature()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def train_model(
    kind: str,
    params: Params | dict,
    split_dir: Path,
    model_path: Path,
    live_dir: Path,
    feature_batch: int = PREFIX_BATCH,
    feature_cache: bool | None = None,
) -> dict:
    """Train `kind` ('scratch' or 'transfer') with params.train_<kind>; write the best model and curves.

    `feature_cache` None takes the frozen-prefix path wherever the transfer model has a frozen prefix;
    False forces the full forward every epoch (for tests and benchmarks).
    """
    params = typed(params)
    cfg = params.training(kind)
    device = setup_device()
    rank, _ = world()
    amp = autocast_dtype(cfg.precision, device)
    seed_everything(cfg.seed)
    model = build_model(kind, cfg).to(device, memory_format=torch.channels_last)  # faster convolutions (oneDNN, cuDNN)
    train_split = load_split(split_dir, "train", cfg.image_size)
    val_split = load_split(split_dir, "val", cfg.image_size)
    manifest_sha256 = file_sha256(split_dir / "split_manifest.csv")
    if not len(train_split.labels) or not len(val_split.labels):
        raise PipelineError(f"{split_dir}: the train and val splits must both hold images")
    for which, part in (("train", train_split), ("val", val_split)):
        require_both_classes(part.labels, f"{split_dir}: the {which} split")

    looks = 1 + cfg.intensity_looks
    tables = look_tables(cfg.seed + 3, len(train_split.labels), cfg.intensity_looks) if looks > 1 else None
    cached = kind == "transfer" and model.n_frozen > 0 and feature_cache is not False
    if cached:  # the frozen prefix once per image (look, mirror), the trainable part every epoch: same result
        mirrors = 2 if (cfg.augment or cfg.tta_flip) else 1
        trainable = PrefixViews(model)
        train_views = prefix_views(model, train_split, mirrors, feature_batch, device, amp, "prefix train", tables)
        train = prefix_batches(train_views, train_split.labels, device, cfg.augment, looks)
        val_views = prefix_views(model, val_split, mirrors, feature_batch, device, amp, "prefix val")
        val = prefix_batches(val_views, val_split.labels, device, False)
    else:
        trainable = model
        train = image_batches(train_split, device, cfg.augment, tables)
        val = image_batches(val_split, device, False)
    if cfg.balance_acquisition:
        rows = read_split_manifest(split_dir).query("split == 'train'")
        train.weights = acquisition_weights(train_split.labels, rows)

    meta = architecture(kind, cfg) | {
        "classes": list(CLASSES),
        "mean": list(MEAN),
        "std": list(STD),
        "precision": "fp32" if amp is None else "bf16",
        "split_manifest_sha256": manifest_sha256,
    }
    with exclusive(model_path) if rank == 0 else nullcontext():  # ranks > 0 write nothing
        resume = ResumeFile(model_path.with_suffix(".resume.pt"), run_fingerprint(cfg, manifest_sha256, cached, device))
        live_tmp = temporary_dir(live_dir.parent, live_dir.name) if rank == 0 else None
        try:
            live = open_live(live_tmp, asdict(cfg)) if live_tmp is not None else None

            def log_epoch(epoch: int, tr: EpochStats, va: EpochStats, is_best: bool, replayed: bool) -> None:
                log_to_live(live, epoch, tr, va)
                mark = "  * best so far" if is_best else ""
                again = " (logged again from the resumed state)" if replayed else ""
                print(
                    f"{kind} epoch {epoch:>2}/{cfg.epochs}: train loss {tr.loss:.4f} acc {tr.accuracy:.3f} | "
                    f"val loss {va.loss:.4f} acc {va.accuracy:.3f}{mark}{again}",
                    flush=True,
                )

            state = fit(
                trainable, train, val, cfg, device=device, amp=amp, on_epoch=log_epoch, resume=resume, network=model
            )
            if rank == 0:
                manifest, threshold = read_split_manifest(split_dir), params.split.similarity_threshold
                index = build_index(split_dir, manifest, manifest_sha256, threshold)
                saved = {"state_dict": state.best_state, "meta": meta | state.best}
                live.summary["best"] = state.best
                live.end()  # into the scratch folder
                with publishing():  # every output, or (stopped before this) none
                    save_index(index_path(model_path), index)
                    atomic_write(model_path, lambda p: save_checkpoint(saved, p))
                    signal_point("publishing")
                    publish_dir(live_tmp, live_dir)
                    resume.remove()
        finally:
            if live_tmp is not None:
                shutil.rmtree(live_tmp, ignore_errors=True)
    best = state.best
    print(f"{kind}: best epoch {best['epoch']} (val loss {best['val_loss']:.4f}, acc {best['val_accuracy']:.3f})")
    return {"best": best, "feature_cache": cached}


def open_live(folder: Path, params: dict):
    """DVCLive in a scratch folder that replaces the stage's output folder only when training ends, so a
    killed run never leaves curves that look finished. Epochs are numbered from 1, in the curves too."""
    from dvclive import Live

    live = Live(dir=str(folder), save_dvc_exp=False, dvcyaml=None, report="md")
    live.log_params(params)
    live.step = 1
    return live


def log_to_live(live, epoch: int, train: EpochStats, val: EpochStats) -> None:
    """One epoch's curves. The report (four matplotlib plots, about 1 s) is drawn once, by `live.end()`:
    drawing it every epoch into a folder nobody sees until the end cost more than training the head."""
    if live is None:
        return
    live.step = epoch
    for split_name, stats in (("train", train), ("val", val)):
        live.log_metric(f"{split_name}/loss", stats.loss)
        live.log_metric(f"{split_name}/accuracy", stats.accuracy)
    live.make_summary()

"""One training loop for both models, the decode-once and feature-cache fast paths, and the stage runner.

Fast paths never change results: images are decoded once into a uint8 cache (data.py); with a frozen
backbone and no augmentation, the backbone's output for each image is computed once and the head is
trained on it, which is the same computation as running the frozen backbone every epoch.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .common import CLASSES, PipelineError, atomic_write, one_line, progress, require_both_classes, seed_everything
from .data import MEAN, STD, SplitImages, batch_indices, cache_dir, cached_array, code_fingerprint, load_split, to_input
from .models import (
    WEIGHTS_SHA256,
    ScratchCNN,
    TransferNet,
    load_imagenet_backbone,
    resolve_weights,
    seed_dropout,
    sync_batchnorm,
)

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
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":  # every core, shared between the processes on this node
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
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


# ---------------------------------------------------------------- batches


@dataclass
class Batches:
    """Inputs (uint8 images or cached features) and labels; `prepare` turns a slice into a model input."""

    inputs: np.ndarray
    labels: np.ndarray
    prepare: Callable[[np.ndarray, torch.Tensor | None], torch.Tensor]  # (rows, which rows to flip) -> input
    augment: bool = False  # training draws random horizontal flips for these inputs

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, idx: np.ndarray, device: torch.device, flips: torch.Tensor | None = None):
        return self.prepare(self.inputs[idx], flips), torch.from_numpy(self.labels[idx]).to(device)


def image_batches(split: SplitImages, device: torch.device, augment: bool) -> Batches:
    def prepare(batch: np.ndarray, flips: torch.Tensor | None) -> torch.Tensor:
        x = to_input(batch, device)
        if flips is not None:  # random horizontal flips: brains are near-symmetric
            flips = flips.to(x.device)
            x[flips] = x[flips].flip(-1)
        return x

    return Batches(split.images, split.labels, prepare, augment)


def feature_batches(features: np.ndarray, labels: np.ndarray, device: torch.device) -> Batches:
    return Batches(features, labels, lambda batch, _: torch.from_numpy(np.ascontiguousarray(batch)).to(device))


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
) -> EpochStats:
    """One pass: trains when `optimizer` is given (shuffled by `generator`), else evaluates.

    Under torchrun each global batch is divided between the ranks; losses are summed and scaled so that
    DDP's gradient averaging yields exactly the single-process mean over the global batch. Augmentation
    flips come from their own generator and are drawn for the whole global batch, so every rank (and one
    process alone) sees the same flips whatever the number of ranks.
    """
    rank, size = world()
    training = optimizer is not None
    model.train(training)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    with torch.set_grad_enabled(training):
        for idx in progress(batch_indices(len(batches), batch_size, generator), desc, unit="batch"):
            share = np.array_split(np.arange(len(idx)), size)[rank]
            local = idx[share]
            flips = None
            if training and batches.augment:
                flips = (torch.rand(len(idx), generator=augment_generator) < 0.5)[torch.from_numpy(share)]
            x, y = batches.get(local, device, flips)
            with autocast(device, amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            if training:
                optimizer.zero_grad(set_to_none=True)
                (loss * size / len(idx)).backward()
                optimizer.step()
            totals += torch.tensor([loss.item(), (logits.argmax(1) == y).sum().item(), len(local)], dtype=torch.float64)
    if size > 1:
        dist.all_reduce(totals)
    return EpochStats(loss=float(totals[0] / totals[2]), accuracy=float(totals[1] / totals[2]))


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    amp: torch.dtype | None,
    on_epoch: Callable[[int, EpochStats, EpochStats], None],
    on_best: Callable[[int, float], None],
) -> None:
    """Adam on the trainable parameters; validation (eval mode) every epoch; `on_best` at each new best val loss.

    A loss that is not finite stops the run with an error: a diverged model must not look trained.
    """
    if epochs < 1:
        raise PipelineError(f"epochs: {epochs} is not allowed (expected an integer >= 1)")
    rank, size = world()
    if size > 1:
        sync_batchnorm(model)  # before the optimizer and DDP see the model: same parameters, global statistics
    seed_dropout(model, seed + 2)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, fused=True)  # one kernel per step: 2x faster on the 103M-param CNN
    net = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator().manual_seed(seed + 1)  # flips never shift the shuffling
    best = float("inf")
    for epoch in range(1, epochs + 1):
        desc = f"epoch {epoch}/{epochs}"
        train_stats = run_epoch(net, train, batch_size, device, amp, optimizer, generator, desc, augment_generator)
        val_stats = run_epoch(net, val, batch_size, device, amp, desc="validate")
        if not (math.isfinite(train_stats.loss) and math.isfinite(val_stats.loss)):
            raise PipelineError(
                f"epoch {epoch}: loss {train_stats.loss:.4g} (train), {val_stats.loss:.4g} (val): training "
                "diverged; lower lr"
            )
        if rank == 0:
            on_epoch(epoch, train_stats, val_stats)
            if val_stats.loss < best:
                best = val_stats.loss
                on_best(epoch, best)


# ---------------------------------------------------------------- frozen-backbone features, computed once


@torch.inference_mode()
def embed_split(
    model: TransferNet,
    split: SplitImages,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None,
    desc: str = "features",
) -> np.ndarray:
    """The frozen backbone's output for every image of a split, cached on disk as float32.

    Key: the split's pixels, the weights' sha256, image size, normalisation, head input width, precision,
    device type, and the producing code and library versions (`code_fingerprint`).
    """
    width = model.embed_width
    code = code_fingerprint(embed_split, to_input, TransferNet, autocast)
    key = hashlib.sha256(
        f"{split.key} {WEIGHTS_SHA256} {split.images.shape} {MEAN} {STD} {width} {amp} {device.type} {code}".encode()
    )

    def fill(out: np.ndarray) -> None:
        embed = model.inference_embedder().to(device)
        for idx in progress(batch_indices(len(split.labels), batch_size, None), desc, unit="batch"):
            with autocast(device, amp):
                out[idx] = embed(to_input(split.images[idx], device)).float().cpu().numpy()

    return cached_array(cache_dir() / f"features-{key.hexdigest()[:24]}", (len(split.labels), width), np.float32, fill)


# ---------------------------------------------------------------- the stages


def build_model(kind: str, cfg: dict) -> nn.Module:
    if kind == "scratch":
        return ScratchCNN(cfg["image_size"])
    model = TransferNet(cfg["head"], cfg["image_size"], cfg["unfreeze_last"])
    load_imagenet_backbone(model, resolve_weights())
    return model


def save_model(saved: dict, path: Path) -> None:
    """torch.save through a file object: given a path, torch names the archive's root folder after the file,
    and the temporary file's name holds the pid, so the same model would hash differently on every run."""
    with open(path, "wb") as f:
        torch.save(saved, f)


def load_trained(path: Path) -> tuple[nn.Module, dict]:
    """A model file written by a training stage, and its metadata."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such model file; run its training stage first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = saved["meta"], saved["state_dict"]
        if meta["kind"] not in ("scratch", "transfer"):
            raise ValueError(f"unknown model kind {meta['kind']!r}")
        if meta["kind"] == "scratch":
            model = ScratchCNN(int(meta["image_size"]))
        else:
            model = TransferNet(meta["head"], int(meta["image_size"]), int(meta["unfreeze_last"]))
    except Exception as err:  # a truncated or foreign file fails anywhere in unpickling: say which file
        raise PipelineError(
            f"{path}: not a model file written by a training stage ({one_line(err)}); retrain it (dvc repro)"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise PipelineError(
            f"{path}: weights do not fit this code's {type(model).__name__}; retrain it (dvc repro)"
        ) from None
    return model.eval(), meta


def train_model(
    kind: str,
    params: dict,
    split_dir: Path,
    model_path: Path,
    live_dir: Path,
    feature_batch: int = 64,
    feature_cache: bool | None = None,
) -> dict:
    """Train `kind` ('scratch' or 'transfer') with params['train_<kind>']; write the best model and curves.

    `feature_cache` None takes the cached-feature path wherever it is exact (frozen backbone, no
    augmentation); False forces the full forward every epoch (for tests and benchmarks).
    """
    from dvclive import Live

    cfg = params[f"train_{kind}"]
    device = setup_device()
    rank, _ = world()
    amp = autocast_dtype(cfg["precision"], device)
    seed_everything(params["seed"])
    model = build_model(kind, cfg).to(device, memory_format=torch.channels_last)  # faster convolutions (oneDNN, cuDNN)
    train_split = load_split(split_dir, "train", cfg["image_size"])
    val_split = load_split(split_dir, "val", cfg["image_size"])
    if not len(train_split.labels) or not len(val_split.labels):
        raise PipelineError(f"{split_dir}: the train and val splits must both hold images")
    for which, part in (("train", train_split), ("val", val_split)):
        require_both_classes(part.labels, f"{split_dir}: the {which} split")

    exact = kind == "transfer" and not cfg["augment"] and cfg["unfreeze_last"] == 0
    cached = exact if feature_cache is None else feature_cache and exact
    if cached:  # train the head alone on features computed once: same result, a fraction of the time
        trainable = model.head
        train = feature_batches(
            embed_split(model, train_split, feature_batch, device, amp, "features train"), train_split.labels, device
        )
        val = feature_batches(
            embed_split(model, val_split, feature_batch, device, amp, "features val"), val_split.labels, device
        )
    else:
        trainable = model
        train = image_batches(train_split, device, cfg["augment"])
        val = image_batches(val_split, device, False)

    meta = {
        "kind": kind,
        "image_size": cfg["image_size"],
        "classes": list(CLASSES),
        "mean": list(MEAN),
        "std": list(STD),
        "head": cfg.get("head", ""),
        "unfreeze_last": cfg.get("unfreeze_last", 0),
    }
    best: dict = {}  # the saved model's epoch and validation figures
    latest: dict[str, EpochStats] = {}
    started = time.perf_counter()

    def save_best(epoch: int, val_loss: float) -> None:
        best.update(epoch=epoch, val_loss=val_loss, val_accuracy=latest["val"].accuracy)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_write(model_path, lambda p: save_model({"state_dict": state, "meta": meta | best}, p))

    # DVCLive: params, per-epoch curves (plots/metrics/{train,val}/*.tsv), a markdown report; the summary
    # (metrics.json) adds the best epoch, since the saved model is the best epoch's, not the last one's.
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report="md") if rank == 0 else None
    if live is not None:
        live.log_params({"seed": params["seed"], **cfg})

    def log_epoch(epoch: int, tr: EpochStats, va: EpochStats) -> None:
        latest["val"] = va
        for split_name, stats in (("train", tr), ("val", va)):
            live.log_metric(f"{split_name}/loss", stats.loss)
            live.log_metric(f"{split_name}/accuracy", stats.accuracy)
        live.next_step()
        mark = "  * best so far, saved" if va.loss < best.get("val_loss", float("inf")) else ""
        print(
            f"{kind} epoch {epoch:>2}/{cfg['epochs']}: train loss {tr.loss:.4f} acc {tr.accuracy:.3f} | "
            f"val loss {va.loss:.4f} acc {va.accuracy:.3f}{mark}",
            flush=True,
        )

    model_path.parent.mkdir(parents=True, exist_ok=True)
    fit(
        trainable,
        train,
        val,
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        seed=params["seed"],
        device=device,
        amp=amp,
        on_epoch=log_epoch,
        on_best=save_best,
    )
    if live is not None:
        live.summary["best"] = best
        live.end()
        print(f"{kind}: best epoch {best['epoch']} (val loss {best['val_loss']:.4f}, acc {best['val_accuracy']:.3f})")
    return {"best": best, "seconds": time.perf_counter() - started, "feature_cache": cached}

"""The training stages: one training loop (loop.py) for both models, the decode-once and frozen-prefix fast
paths (core/arrays.py, prefix.py), resumable runs (resume.py).

Fast paths never change results: images are decoded once into a uint8 cache (core/arrays.py); the frozen part of
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
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from brain_tumor.core import arrays as data_module
from brain_tumor.core.arrays import (
    SplitImages,
    code_fingerprint,
    load_split,
)
from brain_tumor.core.contracts import read_split_manifest
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.faults import signal_point
from brain_tumor.core.labels import CLASSES, require_both_classes
from brain_tumor.core.npz import save_arrays
from brain_tumor.core.numerics import signature
from brain_tumor.core.outputs import atomic_write, file_sha256, publish_dir, temporary_dir
from brain_tumor.core.params import Params, TrainParams
from brain_tumor.core.resize import MEAN, STD
from brain_tumor.core.stage import publishing
from brain_tumor.training import batches as batches_code
from brain_tumor.training import device as device_code
from brain_tumor.training import domain as domain_code
from brain_tumor.training import intensity as intensity_code
from brain_tumor.training import lesions as lesions_code
from brain_tumor.training import looks as looks_code
from brain_tumor.training import loop as loop_code
from brain_tumor.training import models as models_module
from brain_tumor.training import prefix as prefix_code
from brain_tumor.training import resume as resume_code
from brain_tumor.training.batches import acquisition_weights, image_batches
from brain_tumor.training.checkpoint import save_checkpoint
from brain_tumor.training.device import autocast_dtype, seed_everything, setup_device, world
from brain_tumor.training.lesions import with_lesions
from brain_tumor.training.looks import Looks
from brain_tumor.training.loop import EpochStats, fit
from brain_tumor.training.models import (
    TransferNet,
    architecture,
    build_network,
    load_imagenet_backbone,
    resolve_weights,
)
from brain_tumor.training.prefix import PREFIX_BATCH, PrefixViews, prefix_batches, prefix_views
from brain_tumor.training.resume import ResumeFile
from brain_tumor.training.seen import build_index, index_path

TRAINING_CODE = (
    loop_code,
    batches_code,
    prefix_code,
    resume_code,
    device_code,
    intensity_code,
    domain_code,
    looks_code,
    lesions_code,
)  # a resumed run must have run this very code


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
    code = code_fingerprint(sys.modules[__name__], *TRAINING_CODE, models_module, data_module)
    _, size = world()
    text = json.dumps([asdict(cfg), manifest_sha256, cached, code, device.type, size, signature()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_training_splits(split_dir: Path, manifest, cfg: TrainParams) -> tuple[SplitImages, SplitImages, object]:
    """The train split (with its lesioned copies, lesions.py) and its manifest rows, and the val split; both
    checked to hold images of both classes."""
    train_split = load_split(split_dir, "train", cfg.image_size, manifest)
    val_split = load_split(split_dir, "val", cfg.image_size, manifest)
    if not len(train_split.labels) or not len(val_split.labels):
        raise PipelineError(f"{split_dir}: the train and val splits must both hold images")
    for which, part in (("train", train_split), ("val", val_split)):
        require_both_classes(part.labels, f"{split_dir}: the {which} split")
    train_split, train_rows = with_lesions(
        train_split, manifest.query("split == 'train'"), cfg.lesion_copies, cfg.seed + 5
    )
    return train_split, val_split, train_rows


def epoch_batches(model, train_split, val_split, cfg: TrainParams, device, amp, feature_batch: int, feature_cache):
    """What every epoch runs: (the module trained, train batches, val batches, whether the frozen prefix is
    cached). With a frozen prefix it runs once per image, look and mirror, and the trainable part every
    epoch (the same result); else the whole model on the images, their looks drawn as batches are built."""
    looks = Looks(cfg.seed + 3, len(train_split.labels), cfg.intensity_looks, cfg.domain_looks)
    if not (isinstance(model, TransferNet) and model.n_frozen > 0 and feature_cache is not False):
        return (
            model,
            image_batches(train_split, device, cfg.augment, looks),
            image_batches(val_split, device, False),
            False,
        )
    mirrors = 2 if (cfg.augment or cfg.tta_flip) else 1
    train_views = prefix_views(model, train_split, mirrors, feature_batch, device, amp, "prefix train", looks)
    val_views = prefix_views(model, val_split, mirrors, feature_batch, device, amp, "prefix val")
    train = prefix_batches(train_views, train_split.labels, device, cfg.augment, looks.count)
    return PrefixViews(model), train, prefix_batches(val_views, val_split.labels, device, False), True


def train_model(
    kind: str,
    params: Params,
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
    cfg = params.training(kind)
    device = setup_device()
    rank, _ = world()
    amp = autocast_dtype(cfg.precision, device)
    seed_everything(cfg.seed)
    model = build_model(kind, cfg).to(device, memory_format=torch.channels_last)  # faster convolutions (oneDNN, cuDNN)
    manifest, manifest_sha256 = read_split_manifest(split_dir), file_sha256(split_dir / "split_manifest.csv")
    train_split, val_split, train_rows = read_training_splits(split_dir, manifest, cfg)
    trainable, train, val, cached = epoch_batches(
        model, train_split, val_split, cfg, device, amp, feature_batch, feature_cache
    )
    if cfg.balance_acquisition:
        train.weights = acquisition_weights(train_split.labels, train_rows)

    with exclusive(model_path) if rank == 0 else nullcontext():  # ranks > 0 write nothing
        resume = ResumeFile(model_path.with_suffix(".resume.pt"), run_fingerprint(cfg, manifest_sha256, cached, device))
        live_tmp = temporary_dir(live_dir.parent, live_dir.name) if rank == 0 else None
        try:
            live = open_live(live_tmp, asdict(cfg)) if live_tmp is not None else None
            log_epoch = epoch_logger(live, kind, cfg.epochs)
            state = fit(
                trainable, train, val, cfg, device=device, amp=amp, on_epoch=log_epoch, resume=resume, network=model
            )
            if rank == 0:
                index = build_index(split_dir, manifest, manifest_sha256, params.split.similarity_threshold)
                meta = model_meta(kind, cfg, amp, manifest_sha256) | state.best
                saved = {"state_dict": state.best_state, "meta": meta}
                live.summary["best"] = state.best
                live.end()  # into the scratch folder
                with publishing():  # every output, or (stopped before this) none
                    save_arrays(index_path(model_path), index)
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


def model_meta(kind: str, cfg: TrainParams, amp: torch.dtype | None, manifest_sha256: str) -> dict:
    """What the model file says about itself besides its best epoch (checkpoint.check_meta reads it back)."""
    return architecture(kind, cfg) | {
        "classes": list(CLASSES),
        "mean": list(MEAN),
        "std": list(STD),
        "precision": "fp32" if amp is None else "bf16",
        "split_manifest_sha256": manifest_sha256,
    }


def epoch_logger(live, kind: str, epochs: int) -> Callable[[int, EpochStats, EpochStats, bool, bool], None]:
    """`fit`'s on_epoch: the curves into DVCLive, one line per epoch on stdout."""

    def log_epoch(epoch: int, tr: EpochStats, va: EpochStats, is_best: bool, replayed: bool) -> None:
        log_to_live(live, epoch, tr, va)
        mark = "  * best so far" if is_best else ""
        again = " (logged again from the resumed state)" if replayed else ""
        print(
            f"{kind} epoch {epoch:>2}/{epochs}: train loss {tr.loss:.4f} acc {tr.accuracy:.3f} | "
            f"val loss {va.loss:.4f} acc {va.accuracy:.3f}{mark}{again}",
            flush=True,
        )

    return log_epoch


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

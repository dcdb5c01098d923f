"""The frozen prefix of the transfer model, computed once per image (look, mirror), and batches of its outputs.

A pure function of the image (eval-mode BatchNorm, no gradients): running it once and only the trainable
blocks and the head every epoch is the same computation as the whole model every epoch (tests/test_train.py).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from brain_tumor.core.arrays import (
    SplitImages,
    batch_indices,
    cached_array,
    code_fingerprint,
    sample_rows,
    to_input,
)
from brain_tumor.core.console import progress
from brain_tumor.core.numerics import signature
from brain_tumor.core.outputs import cache_dir
from brain_tumor.core.resize import MEAN, STD
from brain_tumor.training import domain, intensity, standardisation
from brain_tumor.training import looks as looks_code
from brain_tumor.training.batches import Batches
from brain_tumor.training.device import autocast
from brain_tumor.training.looks import Looks
from brain_tumor.training.models import (
    WEIGHTS_SHA256,
    TransferNet,
)


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


def _prefix_key(model: TransferNet, split: SplitImages, looks: Looks, run: str) -> str:
    """The prefix cache's key: the split's pixels, the looks, the weights' sha256, image size, normalisation,
    the head standardisation, how many blocks are frozen, `run` (the prefix's output shape, mirrors,
    precision, the batch size: kernels may round differently for another one, device type), and the producing
    code and library versions."""
    code = code_fingerprint(
        prefix_views, to_input, TransferNet, autocast, looks_code, domain, intensity, standardisation
    )
    key = hashlib.sha256(
        f"{split.key} {WEIGHTS_SHA256} {split.images.shape} {MEAN} {STD} {model.standardisation} {model.n_frozen} "
        f"{run} {signature()} {code}".encode()
    )
    if looks.count > 1:
        key.update(looks.key().encode())
    return key.hexdigest()[:24]


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
    looks: Looks | None = None,
) -> np.ndarray:
    """The frozen prefix's output for every image of a split under each of its `looks` (looks.py; None: the
    image only), and for each look's mirror when `mirrors` is 2, cached on disk as
    float32: N x (looks x mirrors) x (the prefix's output shape); view look * mirrors + mirror.
    """
    prefix = model.frozen_prefix().to(device)
    size = split.images.shape[1]
    shape = tuple(prefix(torch.zeros(1, 3, size, size, device=device)).shape[1:])
    looks = looks or Looks(0, len(split.labels))
    count = looks.count
    key = _prefix_key(model, split, looks, f"{shape} {mirrors} {amp} {batch_size} {device.type}")

    def compute(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), count * mirrors, *shape), np.float32)
        for look in range(count):
            images = (
                split.images[rows] if look == 0 else looks.apply(split.images[rows], rows, np.full(len(rows), look))
            )
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
        for view in range(count * mirrors):
            scale = max(float(np.abs(fresh[:, view]).max()), 1e-6) * (1e-3 if amp is None else 3e-2)  # bf16: 8 bits
            if not np.allclose(array[rows, view], fresh[:, view], rtol=0, atol=scale):
                return f"rows {rows.tolist()} differ from the frozen prefix's output (replaced?)"
        return None

    entry = cache_dir() / f"prefix-{key}"
    return cached_array(entry, (len(split.labels), count * mirrors, *shape), np.float32, fill, verify)

"""Per-scan intensity standardisation inside the head, as the first layer of a model (`head_standardisation`).

Scanners, sequences and archives window and scale a head's intensities each their own way. `histogram`
replaces each pixel's grey level by the fraction of the head's pixels at or below it (in-head histogram
equalisation; the background, below HEAD_LEVEL, stays black): any increasing remapping of the head's
intensities (window, gain, gamma) gives the same input. It cannot undo a change of contrast order (T1 vs
T2), which no per-scan monotone map can.

It is part of the network rather than of the input contract, so training (the frozen-prefix cache
included), evaluate, the ONNX export and `brain-tumor predict` apply the same float computation by
construction; it has no weights, so a model file's state_dict does not change with it.
"""

from __future__ import annotations

import torch
from torch import nn

from brain_tumor.core.resize import MEAN, STD

LEVELS = 256
HEAD_LEVEL = 10  # grey levels 0-10 of 255 are background (the dark surround and its noise), not head


class HeadHistogram(nn.Module):
    """Normalised RGB batch -> the same layout, each scan's head histogram-equalised (greyscale, as RGB)."""

    def __init__(self):
        super().__init__()
        # not persistent: a model file's state_dict stays the weights alone
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # under bf16 autocast too: the grey levels must round as in fp32
        grey = ((x * self.std + self.mean).mean(1) * 255).clamp(0, LEVELS - 1).round().long()  # N x H x W
        levels = grey.flatten(1)
        head = (levels > HEAD_LEVEL).float()
        # shape[0], not len(): the ONNX graph keeps a dynamic batch; sums of ones are exact in any order (CUDA)
        counts = head.new_zeros(head.shape[0], LEVELS).scatter_add(1, levels, head)
        cdf = counts.cumsum(1) / counts.sum(1, keepdim=True).clamp(min=1)
        equalised = (cdf.gather(1, levels) * head).view_as(grey).unsqueeze(1)
        return ((equalised - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


def standardiser(kind: str) -> nn.Module:
    """The first layer of a model for a `head_standardisation` value (the params schema lists them)."""
    return HeadHistogram() if kind == "histogram" else nn.Identity()

"""The trained models applied to decoded images: logits and feature vectors, in eval mode, batch by batch."""

from __future__ import annotations

import numpy as np
import torch

from brain_tumor.core.arrays import batch_indices, to_input
from brain_tumor.core.console import progress


def batched(apply, model: torch.nn.Module, images: np.ndarray, batch_size: int, desc: str) -> list[torch.Tensor]:
    """`apply(model, input batch)` over the images in batches (float32, on the CPU), the model in eval mode, on
    the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # moved outside inference mode: parameters created inside it could not be used by Grad-CAM afterwards
    model.eval().to(device=device, memory_format=torch.channels_last)
    with torch.inference_mode():
        return [
            apply(model, to_input(images[idx], device)).float().cpu()
            for idx in progress(batch_indices(len(images), batch_size, None), desc, unit="batch")
        ]


def predict_logits(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """The model's logits (N x 2) for each image."""
    out = batched(lambda m, x: m(x), model, images, batch_size, "predict")
    return torch.cat(out) if out else torch.zeros(0, 2)


def predict_features(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's feature vector for each image (`embed`: the novelty score's space), as numpy."""
    out = batched(lambda m, x: m.embed(x), model, images, batch_size, "features")
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)

"""The trained models applied to decoded images: logits and feature vectors, in eval mode, batch by batch."""

from __future__ import annotations

import numpy as np
import torch

from brain_tumor.core.arrays import batch_indices, to_input
from brain_tumor.core.console import progress


def predict_logits(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """The model's logits (N x 2, float32, on the CPU) for each image, in eval mode, on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # moved outside inference mode: parameters created inside it could not be used by Grad-CAM afterwards
    model.eval().to(device=device, memory_format=torch.channels_last)
    with torch.inference_mode():
        out = [
            model(to_input(images[idx], device)).float().cpu()
            for idx in progress(batch_indices(len(images), batch_size, None), "predict", unit="batch")
        ]
    return torch.cat(out) if out else torch.zeros(0, 2)


def predict_features(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's feature vector (`embed`: what its head reads) for each image, float32, in eval mode."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device=device, memory_format=torch.channels_last)
    with torch.inference_mode():
        out = [
            model.embed(to_input(images[idx], device)).float().cpu().numpy()
            for idx in progress(batch_indices(len(images), batch_size, None), "features", unit="batch")
        ]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

"""The input rules, each written once: training, evaluation, export and `brain-tumor predict` all resize and
normalise a scan this way, so a model sees at prediction time what it saw in training. Its own module, so
that a change to ingest's decoding rules does not retrain the models (DVC tracks files)."""

from __future__ import annotations

import numpy as np
from PIL import Image

MEAN = STD = (0.5, 0.5, 0.5)  # the seed's Normalize((0.5,)*3, (0.5,)*3)


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize to size x size, as torchvision's Resize does on a PIL image."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def standardise(x, mean=MEAN, std=STD):
    """A float32 NCHW batch of 0-255 values -> (x / 255 - mean) / std per channel. `x` is a numpy array (the
    torch-free ONNX path) or a torch tensor (on its device); both give the same float32 values."""
    if isinstance(x, np.ndarray):
        mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (mean, std))
        return (x / np.float32(255.0) - mean) / std
    mean, std = (x.new_tensor(v).view(1, 3, 1, 1) for v in (mean, std))
    return (x.div(255.0) - mean) / std

"""The one resize rule: training, evaluation, export and `brain-tumor predict` all scale a scan this way,
so a model sees at prediction time what it saw in training. Its own module, so that a change to ingest's
decoding rules does not retrain the models (DVC tracks files)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize to size x size, as torchvision's Resize does on a PIL image."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))

"""Grad-CAM: where a model looked. Heat maps, blended over the scan at its own size, and the evaluate gallery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from brain_tumor.core.labels import CLASSES
from brain_tumor.core.resize import MEAN, STD
from brain_tumor.serving.inference import model_input
from brain_tumor.training.models import ScratchCNN, TransferNet

OVERLAY_IMAGE_WEIGHT = 0.6  # share of the scan in the overlay; the rest is the heat map's colour


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional block: the ReLU after the scratch CNN's second conv, MobileNetV2's last block."""
    if isinstance(model, ScratchCNN):
        return model.features[4]
    if isinstance(model, TransferNet):
        return model.backbone[-1]
    raise TypeError(f"no Grad-CAM target layer known for {type(model).__name__}")


def heatmaps(model: nn.Module, x: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM of `classes[i]` for each normalised NCHW image: N x H x W in [0, 1], at the input's size.

    The input requires grad, so gradients reach the target layer even through a frozen backbone. A model
    that averages over the mirror (tta) is explained on the scan as it is, in one pass: the target layer
    must see the scan once, not the scan and then its mirror image.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model.eval()
    tta, model.tta = getattr(model, "tta", False), False
    inputs = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    try:
        with torch.inference_mode(False), torch.enable_grad(), GradCAM(model, [target_layer(model)]) as cam:
            maps = cam(inputs, [ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.tta = tta
    model.zero_grad(set_to_none=True)
    return maps


def blend(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heat map resized (bilinear) to the image's own size and laid over it in the jet colour map."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    height, width = image.shape[:2]
    heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR))
    return show_cam_on_image(
        image.astype(np.float32) / 255.0, np.clip(heat, 0.0, 1.0), use_rgb=True, image_weight=OVERLAY_IMAGE_WEIGHT
    )


def gallery_indices(
    labels: np.ndarray, p_tumor: np.ndarray, threshold: float, n_wrong: int, n_right: int
) -> tuple[np.ndarray, np.ndarray]:
    """The most confident mistakes first, then right answers spread over the range of p_tumor."""
    predicted = (p_tumor >= threshold).astype(int)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-np.abs(p_tumor[wrong] - threshold), kind="stable")][:n_wrong]
    right = np.flatnonzero(predicted == labels)
    right = right[np.argsort(p_tumor[right], kind="stable")]
    if len(right) > n_right:
        right = right[np.linspace(0, len(right) - 1, n_right).round().astype(int)]
    return wrong, right


def gallery(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    p_tumor: np.ndarray,
    threshold: float,
    path: Path,
    n_wrong: int = 8,
    n_right: int = 4,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> None:
    """One PNG: each chosen scan beside its Grad-CAM overlay (of the predicted class), titled with the true
    class, the predicted class at `threshold` and p_tumor; wrong ones in red. `images` are uint8 NHWC."""
    from brain_tumor.core.plotting import plt, save_figure

    predicted = (p_tumor >= threshold).astype(int)
    wrong, right = gallery_indices(labels, p_tumor, threshold, n_wrong, n_right)
    chosen = np.concatenate([wrong, right]).astype(int)
    x = model_input(list(images[chosen]), images.shape[1], list(mean), list(std)) if len(chosen) else None
    heat = heatmaps(model, x, predicted[chosen]) if len(chosen) else []
    per_row = 2  # pairs (scan, overlay) per row
    rows = max(1, -(-len(chosen) // per_row))
    # a fixed grid, not layout="constrained": constrained layout drew this figure in twice the time
    height = 2.9 * rows + 0.4  # inches: each row, and the heading above them
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(2.6 * 2 * per_row, height), squeeze=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.85 / height, wspace=0.08, hspace=0.35)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (i, h) in enumerate(zip(chosen, heat, strict=True)):
        scan_ax, cam_ax = axes.ravel()[2 * k], axes.ravel()[2 * k + 1]
        scan_ax.imshow(images[i])
        cam_ax.imshow(blend(images[i], h))
        colour = "red" if predicted[i] != labels[i] else "black"
        scan_ax.set_title(f"true {CLASSES[labels[i]]}\npredicted {CLASSES[predicted[i]]}", fontsize=8, color=colour)
        cam_ax.set_title(f"p_tumor {p_tumor[i]:.3f}\nGrad-CAM: {CLASSES[predicted[i]]}", fontsize=8, color=colour)
    n_errors = int((predicted != labels).sum())
    fig.suptitle(
        f"{n_errors} of {len(labels)} wrong at threshold {threshold:.3f}: "
        f"{len(wrong)} most confident mistakes, {len(right)} right answers",
        fontsize=9,
        y=1 - 0.1 / height,
        va="top",
    )
    save_figure(fig, path)

"""PNG figures of the evaluate stage: confusion matrices, ROC curves, prediction grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .common import CLASSES


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def confusion_figure(y: np.ndarray, pred: np.ndarray, title: str, path: Path) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ConfusionMatrixDisplay.from_predictions(
        y, pred, labels=[0, 1], display_labels=CLASSES, cmap="Blues", colorbar=False, ax=ax
    )
    ax.set_title(title)
    save_figure(fig, path)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """One ROC curve per model; sklearn's curve, so it agrees with the reported ROC AUC (ties as one step)."""
    from sklearn.metrics import RocCurveDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for i, (name, (y, score)) in enumerate(curves.items()):
        RocCurveDisplay.from_predictions(y, score, name=name, ax=ax, plot_chance_level=i == 0)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC on the test split")
    save_figure(fig, path)


def prediction_grid(outcomes: dict, n_images: int, seed: int, path: Path) -> None:
    """Test images titled with the true class and each model's prediction (red when any is wrong).

    `outcomes` maps model name -> evaluate.TestPredictions; all hold the same test split in the same order.
    """
    first = next(iter(outcomes.values()))
    labels, images = first.labels, first.images
    n = min(n_images, len(labels))
    pick = np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick, strict=False):
        ax.imshow(images[i])
        wrong = any(o.predicted[i] != labels[i] for o in outcomes.values())
        guesses = ", ".join(f"{name}: {CLASSES[o.predicted[i]]}" for name, o in outcomes.items())
        ax.set_title(f"true: {CLASSES[labels[i]]}\n{guesses}", fontsize=8, color="red" if wrong else "black")
    save_figure(fig, path)

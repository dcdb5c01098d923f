"""PNG figures for people: confusion matrices, ROC curves, prediction grids, class balance and samples."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .common import CLASSES  # noqa: E402


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def confusion_figure(y: np.ndarray, pred: np.ndarray, title: str, path: Path) -> None:
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (y, pred), 1)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], CLASSES)
    ax.set_yticks([0, 1], CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    _save(fig, path)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, score) in curves.items():
        order = np.argsort(-score, kind="mergesort")
        tps, fps = np.cumsum(y[order] == 1), np.cumsum(y[order] == 0)
        tpr = np.concatenate([[0], tps / max(tps[-1], 1)])
        fpr = np.concatenate([[0], fps / max(fps[-1], 1)])
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC on the test split")
    ax.legend()
    _save(fig, path)


def prediction_grid(runs: dict, n_images: int, seed: int, path: Path) -> None:
    """Test images titled with the true class and each model's prediction (red when any is wrong).

    `runs` maps model name -> evaluate.TestPredictions; all hold the same test split in the same order.
    """
    first = next(iter(runs.values()))
    labels, images = first.labels, first.images
    n = min(n_images, len(labels))
    pick = np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), pick):
        ax.imshow(images[i])
        wrong = any(run.predicted[i] != labels[i] for run in runs.values())
        guesses = ", ".join(f"{name}: {CLASSES[run.predicted[i]]}" for name, run in runs.items())
        ax.set_title(f"true: {CLASSES[labels[i]]}\n{guesses}", fontsize=8, color="red" if wrong else "black")
    _save(fig, path)


def class_balance_figure(counts: dict[str, dict[str, int]], path: Path) -> None:
    splits = list(counts)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.arange(len(splits))
    for k, name in enumerate(CLASSES):
        ax.bar(x + (k - 0.5) * 0.4, [counts[s][name] for s in splits], 0.4, label=name)
    ax.set_xticks(x, splits)
    ax.set_ylabel("images")
    ax.set_title("class balance per split")
    ax.legend()
    _save(fig, path)


def samples_figure(files_by_class: dict[str, list[Path]], path: Path) -> None:
    from PIL import Image

    cols = max(len(v) for v in files_by_class.values())
    fig, axes = plt.subplots(len(CLASSES), cols, figsize=(2 * cols, 2.2 * len(CLASSES)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, name in enumerate(CLASSES):
        for c, f in enumerate(files_by_class.get(name, [])):
            with Image.open(f) as img:
                axes[r, c].imshow(np.asarray(img.convert("RGB")))
            axes[r, c].set_title(name, fontsize=8)
    _save(fig, path)

"""PNG figures of the data report (split stage): class balance and sample images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import CLASSES
from .plotting import plt, save_figure


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
    save_figure(fig, path)


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
    save_figure(fig, path)

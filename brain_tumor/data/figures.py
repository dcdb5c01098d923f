"""PNG figures of the data report (split stage): class balance, samples, threshold sheets, residual leakage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.labels import CLASSES
from brain_tumor.core.plotting import plt, save_figure


def _image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


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
    cols = max(len(v) for v in files_by_class.values())
    fig, axes = plt.subplots(len(CLASSES), cols, figsize=(2 * cols, 2.2 * len(CLASSES)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, name in enumerate(CLASSES):
        for c, f in enumerate(files_by_class.get(name, [])):
            axes[r, c].imshow(_image(f))
            axes[r, c].set_title(name, fontsize=8)
    save_figure(fig, path)


def pair_sheet(sections: dict[str, pd.DataFrame], images: dict[str, np.ndarray], title: str, path: Path) -> None:
    """Image pairs side by side, four pairs a row, under one heading per section.

    Each section lists pairs by row (`a`, `b`) into `images` (arrays `file` and `name`), with `similarity`.
    """
    per_row = 4
    rows = [max(1, -(-len(pairs) // per_row)) for pairs in sections.values()]
    fig, axes = plt.subplots(sum(rows), 2 * per_row, figsize=(4 * per_row, 2.3 * sum(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    first = 0
    for (heading, pairs), n_rows in zip(sections.items(), rows, strict=True):
        axes[first, 0].text(0, 1.25, heading, transform=axes[first, 0].transAxes, fontsize=10, weight="bold")
        if pairs.empty:
            axes[first, 0].text(0, 0.5, "no such pair", fontsize=9)
        for k, (a, b, similarity) in enumerate(pairs[["a", "b", "similarity"]].itertuples(index=False)):
            left = axes[first + k // per_row, 2 * (k % per_row)]
            for ax, i in ((left, a), (axes[first + k // per_row, 2 * (k % per_row) + 1], b)):
                ax.imshow(_image(images["file"][i]))
                ax.set_title(Path(images["name"][i]).name, fontsize=6)
            left.text(
                0.03, 0.97, f"{similarity:.4f}", transform=left.transAxes, color="yellow", va="top", weight="bold"
            )
        first += n_rows
    fig.suptitle(title, fontsize=11)
    save_figure(fig, path)


def leakage_figure(best: dict[str, np.ndarray], levels: dict[str, float], path: Path) -> None:
    """Histogram of each held-out image's highest similarity to any training image, with the thresholds."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    bins = np.linspace(min([0.5, *(float(v.min()) for v in best.values() if len(v))]), 1.0, 51)
    for split, values in best.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=f"{split} ({len(values)} images)")
    for (name, level), style in zip(levels.items(), ("-", "--", ":"), strict=False):
        counts = ", ".join(f"{s} {int((v >= level).sum())}" for s, v in best.items())
        ax.axvline(level, color="black", linestyle=style, linewidth=1, label=f"{name} {level}: {counts} at or above")
    ax.set_xlabel("highest similarity to any training image")
    ax.set_ylabel("held-out images")
    ax.set_title("residual leakage: held-out images vs the training split")
    ax.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)


def statistics_figure(statistics: pd.DataFrame, path: Path) -> None:
    """Per-class histograms of the shortcut check's statistics (`statistics`: one row per image, `class`)."""
    columns = [c for c in statistics.columns if c != "class"]
    fig, axes = plt.subplots(3, -(-len(columns) // 3), figsize=(3 * -(-len(columns) // 3), 7.5))
    for ax, column in zip(axes.ravel(), columns, strict=False):
        values = statistics[column].to_numpy(np.float64)
        edges = np.histogram_bin_edges(values, bins=20) if np.ptp(values) > 0 else 2
        for name in CLASSES:
            ax.hist(
                statistics.loc[statistics["class"] == name, column], bins=edges, alpha=0.5, density=True, label=name
            )
        ax.set_title(column, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(columns) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("image statistics per class (no anatomy in them: where they differ, the label leaks)")
    save_figure(fig, path)

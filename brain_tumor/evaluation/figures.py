"""PNG figures of the evaluate stage: confusion matrices, ROC curves, prediction grids, reliability diagrams."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brain_tumor.core.labels import CLASSES
from brain_tumor.core.plotting import plt, save_figure
from brain_tumor.evaluation.calibration import BINS, expected_calibration_error, reliability_table
from brain_tumor.evaluation.metrics import confusion_counts, rates


def confusion_figure(outcome, name: str, path: Path) -> None:
    """Test confusion matrices of one model at 0.5 and at its operating point (evaluate.TestPredictions)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, predicted, label in (
        (axes[0], outcome.predicted, "threshold 0.5"),
        (axes[1], outcome.predicted_at_threshold, f"operating point {outcome.threshold:.3f}"),
    ):
        ConfusionMatrixDisplay.from_predictions(
            outcome.labels, predicted, labels=[0, 1], display_labels=CLASSES, cmap="Blues", colorbar=False, ax=ax
        )
        ax.set_title(f"{name}, test, {label}", fontsize=9)
    save_figure(fig, path)


def operating_point_figure(outcomes: dict, path: Path) -> None:
    """ROC and precision-recall curves per model (sklearn's, so they agree with the reported AUC), each
    marking the 0.5 threshold (circle) and the operating point chosen on validation (cross)."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9.5, 4.5))
    for i, (name, o) in enumerate(outcomes.items()):
        roc = RocCurveDisplay.from_predictions(o.labels, o.p_tumor, name=name, ax=roc_ax, plot_chance_level=i == 0)
        pr = PrecisionRecallDisplay.from_predictions(o.labels, o.p_tumor, name=name, ax=pr_ax)
        color = roc.line_.get_color()
        pr.line_.set_color(color)
        for predicted, marker in ((o.predicted, "o"), (o.predicted_at_threshold, "X")):
            point = rates(*confusion_counts(o.labels, predicted))
            roc_ax.plot(1 - point["specificity"], point["recall"], marker, color=color, ms=8)
            pr_ax.plot(point["recall"], point["precision"], marker, color=color, ms=8)
    roc_ax.set(xlabel="false positive rate (1 - specificity)", ylabel="sensitivity", title="ROC, test split")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall, test split")
    roc_ax.plot([], [], "ko", label="threshold 0.5")
    roc_ax.plot([], [], "kX", label="operating point")
    roc_ax.legend(fontsize=8)
    pr_ax.legend(fontsize=8)
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


def reliability_figure(labels: np.ndarray, p_tumor: np.ndarray, name: str, path: Path) -> None:
    """Observed tumour frequency against mean P(tumor) in each non-empty bin (calibration.py's bins), each
    point labelled with its image count; on the diagonal a model's P(tumor) is the frequency it predicts."""
    table = reliability_table(labels, p_tumor)
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.plot(table["mean_predicted"], table["observed"], "o-", label=name)
    for row in table.itertuples():
        ax.annotate(str(row.count), (row.mean_predicted, row.observed), xytext=(4, -10), textcoords="offset points")
    ece = expected_calibration_error(labels, p_tumor)
    ax.set(xlim=(0, 1), ylim=(-0.03, 1.03), xlabel="mean P(tumor) in bin", ylabel="observed tumour frequency")
    ax.set_title(f"{name}, test: ECE {ece:.3f} ({BINS} bins of P(tumor); numbers: images per bin)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    save_figure(fig, path)

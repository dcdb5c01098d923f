"""The shortcut check: how well do image statistics with no anatomy in them predict the label?

If brightness, contrast, the share of black background, the borders, the original size or the file format
predict tumour vs no tumour on the grouped split, the classes differ in how they were acquired or processed,
and a model can score well by learning that instead of the tumour. The split stage fits two simple
classifiers on the training split's statistics and reports their test accuracy beside the majority rate;
the data report shows the per-class distributions. A model's own test accuracy means little where this
check is close to it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.console import progress
from brain_tumor.core.intervals import wilson_interval
from brain_tumor.core.stage import worker_pool

# The statistics, from the greyscale image (mean of R, G, B, 0-255): none says where anything is.
INTENSITY = ("mean", "spread", "dark_share", "median", "p90", "p99", "border_brightness")
STATISTICS = (*INTENSITY, "colour", "width", "height", "aspect", "jpeg")
DARK = 10  # a pixel below this is background
BORDER = 0.08  # the left and right strips, as a share of the width
MARGIN = 0.05  # a check this far above the majority rate, and significantly so, is a warning

# The acquisition kind, estimated: is cerebrospinal fluid bright (T2-like) or dark (T1-like: T1 with or without
# contrast, FLAIR, CT)? Bright CSF fills the ventricles and sulci, so in a T2-like scan the inner brain has a
# long bright tail and a bright core. Threshold set on 48 eye-labelled scans of the shared real set and checked
# on 47 others (docs/data.md): 45 of 47 agree (T2-like 4 of 6, T1-like 41 of 41).
ACQUISITION_KINDS = ("T1-like", "T2-like")
CSF_BRIGHT = 3.0


def image_statistics(path: Path) -> tuple[float, ...]:
    """INTENSITY, `colour` (1 where the channels differ anywhere, 0 for a greyscale scan) and the CSF
    brightness score (`csf_brightness`) of one image."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        small = np.asarray(img.convert("L").resize((128, 128), Image.Resampling.BILINEAR), np.float32)
    grey = rgb.mean(axis=2)
    strip = max(1, round(grey.shape[1] * BORDER))
    p50, p90, p99 = np.percentile(grey, (50, 90, 99))
    border = np.concatenate([grey[:, :strip], grey[:, -strip:]], axis=1).mean()
    colour = float(np.any(rgb[..., 0] != rgb[..., 1]) or np.any(rgb[..., 1] != rgb[..., 2]))
    intensity = float(grey.mean()), float(grey.std()), float((grey < DARK).mean()), p50, p90, p99, float(border)
    return *intensity, colour, csf_brightness(small)


def csf_brightness(grey: np.ndarray) -> float:
    """How bright the inner brain's brightest tissue is (a T2-like scan's CSF), from a greyscale thumbnail:
    within the head, away from the scalp and skull, (p95 - p50) / (p50 - p5) times the 90th percentile of
    the deepest part over the median. NaN where no head is found."""
    from scipy import ndimage

    head = grey > max(12.0, 0.15 * float(np.percentile(grey, 99)))
    head = ndimage.binary_fill_holes(ndimage.binary_opening(head, iterations=2))
    if head.sum() < 200:
        return float("nan")
    depth = ndimage.distance_transform_edt(head)
    inner = grey[depth > 0.25 * depth.max()]
    p05, p50, p95 = np.percentile(inner, (5, 50, 95))
    tail = (p95 - p50) / max(p50 - p05, 1.0)
    core = float(np.percentile(grey[depth > 0.6 * depth.max()], 90)) / max(p50, 1.0)
    return float(tail * core)


def acquisition_kind(score: float) -> str:
    return ACQUISITION_KINDS[1] if score >= CSF_BRIGHT else ACQUISITION_KINDS[0]


def statistics_table(files: list[Path], width: pd.Series, height: pd.Series, source: pd.Series) -> pd.DataFrame:
    """One row of STATISTICS per image (the decoded image's, then its original size and format from the
    manifest), and its estimated `acquisition` kind."""
    processes = min(os.cpu_count() or 1, max(len(files), 1))  # as the similarity descriptors are computed
    with worker_pool(processes) as pool:
        rows = list(progress(pool.imap(image_statistics, files, chunksize=64), "statistics", len(files), "img"))
    table = pd.DataFrame(rows, columns=[*INTENSITY, "colour", "csf_brightness"])
    table["width"], table["height"] = width.astype(float).to_numpy(), height.astype(float).to_numpy()
    table["aspect"] = table["width"] / table["height"]
    table["jpeg"] = source.str.lower().str.endswith((".jpg", ".jpeg")).astype(float).to_numpy()
    table["acquisition"] = table["csf_brightness"].map(acquisition_kind)
    return table[[*STATISTICS, "acquisition"]]


def fit_shortcut_models(stats: pd.DataFrame, labels: np.ndarray, seed: int) -> dict:
    """Gradient-boosted trees and logistic regression fitted on STATISTICS alone."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models = {
        "gradient_boosting": HistGradientBoostingClassifier(max_iter=200, random_state=seed),
        "logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
    }
    x = stats[list(STATISTICS)].to_numpy(np.float64)
    for model in models.values():
        model.fit(x, np.asarray(labels, np.int64))
    return models


def shortcut_check(stats: pd.DataFrame, labels: np.ndarray, splits: pd.Series, seed: int) -> dict:
    """Fit on the training split, score the test split: gradient-boosted trees and logistic regression.

    Returns the test accuracy of each, the majority rate (the share of the test split's larger class: what a
    classifier that knows nothing scores), and `warning`: the better one is at least MARGIN above that rate and
    the lower bound of its 95% Wilson interval is above it too.
    """
    train, test = (splits == "train").to_numpy(), (splits == "test").to_numpy()
    x, y = stats[list(STATISTICS)].to_numpy(np.float64), np.asarray(labels, np.int64)
    models = fit_shortcut_models(stats[train], y[train], seed)
    n_test = int(test.sum())
    majority = float(max(np.bincount(y[test], minlength=2)) / n_test)
    result: dict = {"statistics": list(STATISTICS), "test_images": n_test, "majority_rate": round(majority, 4)}
    best = 0
    for name, model in models.items():
        correct = int((model.predict(x[test]) == y[test]).sum())
        result[f"{name}_accuracy"] = round(correct / n_test, 4)
        best = max(best, correct)
    result["best_ci_lower"] = round(float(wilson_interval(np.array([best]), np.array([n_test]))[0][0]), 4)
    result["warning"] = bool(best / n_test >= majority + MARGIN and result["best_ci_lower"] > majority)
    return result


def warning_line(check: dict) -> str | None:
    """The line the split stage prints when the check warns."""
    if not check["warning"]:
        return None
    best = max(check["gradient_boosting_accuracy"], check["logistic_regression_accuracy"])
    return (
        f"warning: image statistics with no anatomy in them (brightness, contrast, background, borders, size, "
        f"format) predict the label with test accuracy {best:.3f} against a majority rate of "
        f"{check['majority_rate']:.3f}: the classes differ in how they were acquired or processed, and a model "
        "can learn that instead of the tumour (reports/data/data_report.md, 'Shortcut check')"
    )

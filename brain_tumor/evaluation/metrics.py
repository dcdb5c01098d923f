"""The counts, rates, intervals and P(tumor) that every report reads: evaluate, external sets, figures,
predict and export compute them here and nowhere else."""

from __future__ import annotations

import warnings

import numpy as np

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def confusion_counts(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """(tp, fp, fn, tn) along the last axis of 0/1 label and prediction arrays (one row per resample)."""
    y, pred = y.astype(bool), pred.astype(bool)
    return (y & pred).sum(-1), (~y & pred).sum(-1), (y & ~pred).sum(-1), (~y & ~pred).sum(-1)


def rates(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """The count-based metrics, elementwise; a ratio with a zero denominator is 0 (as sklearn's zero_division=0)."""

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return {
        "accuracy": ratio(tp + tn, tp + fp + fn + tn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def binary_metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Tumor (1) is the positive class. A ratio with a zero denominator is 0; ROC AUC is nan with one class."""
    counts = rates(*confusion_counts(np.asarray(y), np.asarray(pred)))
    return {m: float(v) for m, v in counts.items()} | {"roc_auc": roc_auc(y, score)}


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC, nan (not an exception) when the labels hold one class only: the bootstrap's statistic on the
    sample itself (no sklearn here: predict and export read this module and start 1.5 s sooner without it)."""
    y, score = np.asarray(y), np.asarray(score)
    if len(np.unique(y)) < 2:  # none or one class (an empty set too)
        return float("nan")
    return float(resampled_roc_auc(y, score, np.arange(len(y))[None])[0])


def resampled_roc_auc(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """ROC AUC of each resample `y[idx[r]], score[idx[r]]`, all at once, as the Mann-Whitney statistic: the share
    of (tumor, non_tumor) pairs the score orders correctly, a tie counting half (sklearn's trapezoidal AUC is
    the same number); nan for a resample with one class."""
    ranks = np.unique(score, return_inverse=True)[1].reshape(-1)  # tied scores share a rank
    k, samples = int(ranks.max()) + 1, len(idx)
    cell = np.arange(samples)[:, None] * k + ranks[idx]  # (resample, rank) as one index
    positive = y[idx] == 1
    pos, neg = (np.bincount(cell[m], minlength=samples * k).reshape(samples, k) for m in (positive, ~positive))
    below = np.cumsum(neg, axis=1) - neg  # negatives scored lower than each rank
    wins = (pos * (below + 0.5 * neg)).sum(1)
    pairs = pos.sum(1).astype(np.float64) * neg.sum(1)
    return np.divide(wins, pairs, out=np.full(samples, np.nan), where=pairs > 0)


def bootstrap_ci(
    y: np.ndarray, pred: np.ndarray, score: np.ndarray, samples: int, seed: int
) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals from resampling the test set with replacement (nan where undefined).

    All resamples at once: a (samples x n) index array, counts and ranks per row; no per-resample sklearn calls.
    """
    idx = np.random.default_rng(seed).integers(0, len(y), (samples, len(y)))
    draws = rates(*confusion_counts(y[idx], pred[idx])) | {"roc_auc": resampled_roc_auc(y, score, idx)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan column: roc_auc with one class
        return {m: tuple(float(np.nanpercentile(draws[m], q)) for q in (2.5, 97.5)) for m in METRICS}


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired right/wrong verdicts of two models on the same images: (only A right,
    only B right, two-sided p). Under "no difference" each disagreement is a fair coin."""
    from scipy.stats import binomtest

    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0


def json_number(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)  # JSON has no NaN (AUC with one class in the test split)


def p_tumor_tensor(logits):
    """P(tumor) from a batch of logits (N x 2), as a torch tensor: inside the exported ONNX graph too."""
    import torch  # here, not at the top: predict's ONNX path reads this module without torch

    return torch.softmax(logits.float(), 1)[:, 1]


def p_tumor(logits) -> np.ndarray:
    """P(tumor) per image from logits, as `brain-tumor predict` and the ONNX file compute it."""
    return p_tumor_tensor(logits).numpy()

"""Evaluate: both best models, once, on the test split, in eval mode; metrics with bootstrap 95% CIs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from .common import CLASSES, PipelineError, progress, write_json, write_table
from .data import batch_indices, load_split, to_input
from .train import load_trained

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def binary_metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Tumor (1) is the positive class. A ratio with a zero denominator is 0; ROC AUC is nan with one class."""
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=[1], average=None, zero_division=0.0)
    tn, fp, _, _ = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
        "f1": float(f1[0]),
        "roc_auc": roc_auc(y, score),
    }


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """sklearn's ROC AUC, nan (not an exception) when the labels hold one class only."""
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def bootstrap_ci(
    y: np.ndarray, pred: np.ndarray, score: np.ndarray, samples: int, seed: int
) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals from resampling the test set with replacement (nan where undefined)."""
    rng = np.random.default_rng(seed)
    resamples = (rng.integers(0, len(y), len(y)) for _ in range(samples))
    draws = pd.DataFrame([binary_metrics(y[i], pred[i], score[i]) for i in resamples])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan column: roc_auc with one class
        return {m: tuple(float(np.nanpercentile(draws[m], q)) for q in (2.5, 97.5)) for m in METRICS}


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """P(tumor) for each image, model in eval mode, on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device=device, memory_format=torch.channels_last)
    out = [
        torch.softmax(model(to_input(images[idx], device)).float(), 1)[:, 1].cpu().numpy()
        for idx in progress(batch_indices(len(images), batch_size, None), "predict", unit="batch")
    ]
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class TestPredictions:
    labels: np.ndarray  # true class per test image
    predicted: np.ndarray  # predicted class (P(tumor) >= 0.5)
    p_tumor: np.ndarray
    images: np.ndarray  # the test images as the model saw them (uint8 NHWC)


def json_number(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)  # JSON has no NaN (AUC with one class in the test split)


def evaluate_models(
    params: dict, split_dir: Path, model_paths: dict[str, Path], metrics_dir: Path, figures_dir: Path
) -> dict:
    """The evaluate stage: metrics, confidence intervals, confusion-plot data and PNG figures per model."""
    cfg = params["evaluate"]
    results, ci, outcomes = {}, {}, {}
    for name, path in model_paths.items():
        model, meta = load_trained(path)
        test = load_split(split_dir, "test", meta["image_size"])
        if not len(test.labels):
            raise PipelineError(f"{split_dir}: the test split holds no images")
        score = predict(model, test.images, cfg["batch_size"])
        outcome = outcomes[name] = TestPredictions(test.labels, (score >= 0.5).astype(np.int64), score, test.images)
        metrics = binary_metrics(outcome.labels, outcome.predicted, score)
        results[name] = {m: json_number(v) for m, v in metrics.items()} | {"test_images": len(outcome.labels)}
        intervals = bootstrap_ci(outcome.labels, outcome.predicted, score, cfg["bootstrap_samples"], params["seed"])
        ci[name] = {m: [json_number(low), json_number(high)] for m, (low, high) in intervals.items()}
        names = np.array(CLASSES)
        table = pd.DataFrame(
            {
                "id": test.ids,
                "actual": names[outcome.labels],
                "predicted": names[outcome.predicted],
                "p_tumor": score.astype(np.float64).round(6),
            }
        )
        write_table(metrics_dir / "predictions" / f"{name}.csv", table)
    write_json(metrics_dir / "test.json", results)
    write_json(metrics_dir / "test_ci95.json", ci)

    from .figures import confusion_figure, prediction_grid, roc_figure

    for name, outcome in outcomes.items():
        confusion_figure(
            outcome.labels, outcome.predicted, f"{name}: test confusion matrix", figures_dir / f"confusion_{name}.png"
        )
    roc_figure({name: (o.labels, o.p_tumor) for name, o in outcomes.items()}, figures_dir / "roc.png")
    prediction_grid(outcomes, cfg["grid_images"], params["seed"], figures_dir / "test_predictions.png")
    return results

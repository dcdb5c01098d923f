"""Evaluate: both best models, once, on the test split, in eval mode; metrics with bootstrap 95% CIs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import CLASSES, PipelineError, progress, write_csv, write_json
from .data import batch_indices, load_split, to_input
from .train import load_trained

METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U form of the ROC AUC (ties count half); nan when one class is absent."""
    pos, neg = score[y == 1], score[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    all_scores = np.concatenate([pos, neg])[order]
    # average ranks over ties
    _, first, counts = np.unique(all_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        if count > 1:
            ranks[order[start : start + count]] = ranks[order[start : start + count]].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def binary_metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Tumor (1) is the positive class. A ratio with a zero denominator is reported as 0."""
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * recall, precision + recall) if precision + recall else 0.0,
        "roc_auc": roc_auc(y, score),
    }


def bootstrap_ci(y: np.ndarray, pred: np.ndarray, score: np.ndarray, samples: int, seed: int) -> dict[str, list[float]]:
    """Percentile 95% intervals from resampling the test set with replacement."""
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in METRICS}
    for _ in range(samples):
        i = rng.integers(0, len(y), len(y))
        for m, v in binary_metrics(y[i], pred[i], score[i]).items():
            draws[m].append(v)
    return {m: [_json_number(float(np.nanpercentile(v, q))) for q in (2.5, 97.5)] for m, v in draws.items()}


@torch.inference_mode()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """P(tumor) for each image, model in eval mode, on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device=device, memory_format=torch.channels_last)
    out = []
    for idx in progress(batch_indices(len(images), batch_size, None), "predict", unit="batch"):
        out.append(torch.softmax(model(to_input(images[idx], device)).float(), 1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class TestPredictions:
    labels: np.ndarray  # true class per test image
    predicted: np.ndarray  # predicted class (P(tumor) >= 0.5)
    p_tumor: np.ndarray
    images: np.ndarray  # the test images as the model saw them (uint8 NHWC)


def _json_number(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)  # JSON has no NaN (AUC with one class in the test split)


def run(params: dict, split_dir: Path, model_paths: dict[str, Path], metrics_dir: Path, figures_dir: Path) -> dict:
    """The evaluate stage: metrics, confidence intervals, confusion-plot data and PNG figures per model."""
    cfg = params["evaluate"]
    results, ci, runs = {}, {}, {}
    for name, path in model_paths.items():
        model, meta = load_trained(path)
        test = load_split(split_dir, "test", meta["image_size"])
        if not len(test.labels):
            raise PipelineError(f"{split_dir}: the test split holds no images")
        score = predict(model, test.images, cfg["batch_size"])
        run = runs[name] = TestPredictions(test.labels, (score >= 0.5).astype(np.int64), score, test.images)
        metrics = binary_metrics(run.labels, run.predicted, score)
        results[name] = {m: _json_number(v) for m, v in metrics.items()} | {"test_images": len(run.labels)}
        ci[name] = bootstrap_ci(run.labels, run.predicted, score, cfg["bootstrap_samples"], params["seed"])
        write_csv(metrics_dir / "predictions" / f"{name}.csv", [
            {"id": i, "actual": CLASSES[a], "predicted": CLASSES[p], "p_tumor": round(float(s), 6)}
            for i, a, p, s in zip(test.ids, run.labels, run.predicted, score)
        ])
    write_json(metrics_dir / "test.json", results)
    write_json(metrics_dir / "test_ci95.json", ci)

    from .figures import confusion_figure, prediction_grid, roc_figure

    for name, run in runs.items():
        confusion_figure(run.labels, run.predicted, f"{name}: test confusion matrix", figures_dir / f"confusion_{name}.png")
    roc_figure({name: (run.labels, run.p_tumor) for name, run in runs.items()}, figures_dir / "roc.png")
    prediction_grid(runs, cfg["grid_images"], params["seed"], figures_dir / "test_predictions.png")
    return results

"""Evaluate: both best models, once, on the test split, in eval mode; metrics with bootstrap 95% CIs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from .checkpoint import load_trained
from .console import progress
from .data import batch_indices, load_split, to_input
from .errors import PipelineError
from .explain import gallery
from .inference import write_threshold
from .labels import CLASSES
from .outputs import file_sha256, write_json, write_table

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


def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    """P(tumor) for each image, model in eval mode, on the GPU when there is one."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # moved outside inference mode: parameters created inside it could not be used by Grad-CAM afterwards
    model.eval().to(device=device, memory_format=torch.channels_last)
    with torch.inference_mode():
        out = [
            torch.softmax(model(to_input(images[idx], device)).float(), 1)[:, 1].cpu().numpy()
            for idx in progress(batch_indices(len(images), batch_size, None), "predict", unit="batch")
        ]
    return np.concatenate(out) if out else np.zeros(0)


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, target_sensitivity: float) -> dict[str, float]:
    """The highest P(tumor) threshold whose validation sensitivity reaches the target.

    Missing a tumor costs more than a false alarm, so the operating point fixes sensitivity and takes the
    best specificity that leaves; it is chosen on validation only, so the test split stays untouched.
    """
    fpr, tpr, thresholds = roc_curve(y_val, p_val, drop_intermediate=False)
    i = int(np.flatnonzero(tpr >= target_sensitivity)[0])
    return {
        "threshold": float(min(thresholds[i], 1.0)),  # roc_curve's first threshold is +inf
        "target_sensitivity": target_sensitivity,
        "validation_sensitivity": round(float(tpr[i]), 4),
        "validation_specificity": round(float(1 - fpr[i]), 4),
    }


@dataclass
class TestPredictions:
    labels: np.ndarray  # true class per test image
    p_tumor: np.ndarray
    threshold: float  # the operating point chosen on validation
    images: np.ndarray  # the test images as the model saw them (uint8 NHWC)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class at the conventional 0.5."""
        return (self.p_tumor >= 0.5).astype(np.int64)

    @property
    def predicted_at_threshold(self) -> np.ndarray:
        return (self.p_tumor >= self.threshold).astype(np.int64)


def json_number(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)  # JSON has no NaN (AUC with one class in the test split)


def summary_rows(per_model: dict[str, dict[str, float]], intervals: dict[str, dict] | None = None) -> dict[str, dict]:
    """{metric: {model, model_ci_lower, model_ci_upper, ...}}: one small JSON file per metric (95% interval).

    DVC tables put one file per row and one key per column, so this shape prints as metrics x models.
    """
    rows: dict[str, dict] = {}
    for model, metrics in per_model.items():
        for metric, value in metrics.items():
            row = rows.setdefault(metric, {})
            row[model] = json_number(value)
            if intervals is not None:
                low, high = intervals[model][metric]
                row |= {f"{model}_ci_lower": json_number(low), f"{model}_ci_upper": json_number(high)}
    return rows


def evaluate_models(
    params: dict, split_dir: Path, model_paths: dict[str, Path], metrics_dir: Path, figures_dir: Path
) -> dict:
    """The evaluate stage: operating point on validation, then test metrics at 0.5 and at that point, with
    bootstrap intervals; per-model tables for DVC plots; the validation summary; PNG figures."""
    cfg = params["evaluate"]
    outcomes: dict[str, TestPredictions] = {}
    test_at = {"test": {}, "test_operating_point": {}}
    intervals = {"test": {}, "test_operating_point": {}}
    validation: dict[str, dict[str, float]] = {}
    manifest_sha256 = file_sha256(split_dir / "split_manifest.csv")
    trained = {  # all checked before any write: the right kind of model, trained on this very split
        name: load_trained(path, expect_kind=name, split_manifest_sha256=manifest_sha256)
        for name, path in model_paths.items()
    }
    for name, path in model_paths.items():
        model, meta = trained[name]
        val = load_split(split_dir, "val", meta["image_size"])
        test = load_split(split_dir, "test", meta["image_size"])
        if not len(test.labels) or not len(val.labels):
            raise PipelineError(f"{split_dir}: the val and test splits must both hold images")
        operating_point = choose_threshold(
            val.labels, predict(model, val.images, cfg["batch_size"]), cfg["target_sensitivity"]
        )
        write_threshold(path, operating_point, file_sha256(path))
        score = predict(model, test.images, cfg["batch_size"])
        outcome = outcomes[name] = TestPredictions(test.labels, score, operating_point["threshold"], test.images)
        for key, predicted in (("test", outcome.predicted), ("test_operating_point", outcome.predicted_at_threshold)):
            test_at[key][name] = binary_metrics(outcome.labels, predicted, score)
            intervals[key][name] = bootstrap_ci(outcome.labels, predicted, score, cfg["bootstrap_samples"], cfg["seed"])
        validation[name] = {
            "best_epoch": meta["epoch"],
            "best_loss": meta["val_loss"],
            "best_accuracy": meta.get("val_accuracy", float("nan")),
            "threshold": operating_point["threshold"],
        }
        write_model_tables(name, outcome, test.ids, metrics_dir / "evaluate")
        gallery(model, test.images, test.labels, score, outcome.threshold, figures_dir / f"gallery_{name}.png")

    for key, per_model in test_at.items():
        for metric, row in summary_rows(per_model, intervals[key]).items():
            write_json(metrics_dir / key / f"{metric}.json", row)
    for metric, row in summary_rows(validation).items():
        write_json(metrics_dir / "validation" / f"{metric}.json", row)

    from .figures import confusion_figure, operating_point_figure, prediction_grid

    for name, outcome in outcomes.items():
        confusion_figure(outcome, name, figures_dir / f"confusion_{name}.png")
    operating_point_figure(outcomes, figures_dir / "roc_pr.png")
    prediction_grid(outcomes, cfg["grid_images"], cfg["seed"], figures_dir / "test_predictions.png")
    return test_at["test"]


def write_model_tables(name: str, outcome: TestPredictions, ids: list[str], out_dir: Path) -> None:
    """Per-image predictions (DVC's confusion plot) and the test ROC curve (DVC's linear plot) of one model."""
    names = np.array(CLASSES)
    write_table(
        out_dir / "predictions" / f"{name}.csv",
        pd.DataFrame(
            {
                "id": ids,
                "actual": names[outcome.labels],
                "predicted": names[outcome.predicted],
                "predicted_at_threshold": names[outcome.predicted_at_threshold],
                "p_tumor": outcome.p_tumor.astype(np.float64).round(6),
            }
        ),
    )
    if len(np.unique(outcome.labels)) == 2:
        fpr, tpr, thresholds = roc_curve(outcome.labels, outcome.p_tumor)
        roc = pd.DataFrame({"fpr": fpr.round(6), "tpr": tpr.round(6), "threshold": np.minimum(thresholds, 1).round(6)})
        write_table(out_dir / "roc" / f"{name}.csv", roc)

"""Evaluate: both best models, once, on the test split, in eval mode; metrics with bootstrap 95% CIs at 0.5 and
at the operating point chosen on validation, per-subgroup accuracy, calibration, figures and the model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from brain_tumor.core.arrays import load_split
from brain_tumor.core.contracts import read_split_manifest
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.intervals import wilson_interval
from brain_tumor.core.labels import CLASSES
from brain_tumor.core.outputs import file_sha256, write_json, write_table
from brain_tumor.core.params import EvaluateParams, Params
from brain_tumor.evaluation.calibration import calibration_report
from brain_tumor.evaluation.explain import gallery, gallery_indices
from brain_tumor.evaluation.external import evaluate_external, external_summary, read_external_sets
from brain_tumor.evaluation.figures import confusion_figure, operating_point_figure, prediction_grid, reliability_figure
from brain_tumor.evaluation.metrics import binary_metrics, bootstrap_ci, json_number, p_tumor
from brain_tumor.evaluation.model_card import CardInputs, ModelFile, training_params, write_model_card
from brain_tumor.evaluation.predictions import predict_features, predict_logits
from brain_tumor.serving.inference import write_threshold
from brain_tumor.serving.novelty import Novelty, build_novelty, novelty_path, reference_rows, save_novelty
from brain_tumor.training.checkpoint import load_trained
from brain_tumor.training.seen import index_path, read_index

SUBGROUPS = ("subtype", "source_folder", "acquisition")  # manifest columns: class folder, first folder, kind
# each estimated acquisition kind within each class: within "T2-like tumor" accuracy is the kind's sensitivity
BY_KIND_AND_CLASS = "acquisition_class"
SUBGROUP_COLUMNS = ["model", "grouping", "group", "threshold_name", "n", "errors", "accuracy", "ci_lower", "ci_upper"]
REPORT_COLUMNS = (*SUBGROUPS, "source", "train_similarity", "group")


def fit_novelty(model, path: Path, split_dir: Path, manifest, val_images: np.ndarray, cfg: EvaluateParams) -> Novelty:
    """The novelty reference (training scans) and threshold (validation scans) of one model, written beside it."""
    train = load_split(split_dir, "train", val_images.shape[1], manifest)
    rows = reference_rows(len(train.labels))
    train_features = predict_features(model, train.images[rows], cfg.batch_size)
    novelty = build_novelty(train_features, predict_features(model, val_images, cfg.batch_size), file_sha256(path))
    save_novelty(novelty_path(path), novelty)
    return novelty


# How far evaluate's validation loss may be from the one training recorded for the best epoch: float rounding
# (training ran the folded frozen prefix, other batch sizes) is about 1e-6 on the CPU; bf16 autocast and
# cuDNN's TF32 convolutions round far more coarsely.
VALIDATION_LOSS_TOLERANCE = {"exact": 1e-4, "coarse": 2e-2}


def check_validation_figures(path: Path, meta: dict, labels: np.ndarray, logits: torch.Tensor) -> None:
    """The model as loaded must repeat its best epoch's validation loss and accuracy, as its record gives them:
    otherwise what is evaluated and served is not the model that was validated (a record that lost a flag,
    a factory that drifted). Accuracy may differ by one borderline image."""
    loss = float(F.cross_entropy(logits, torch.tensor(labels, dtype=torch.long), reduction="mean"))
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    coarse = meta["precision"] != "fp32" or torch.cuda.is_available()
    tolerance = VALIDATION_LOSS_TOLERANCE["coarse" if coarse else "exact"] * max(1.0, meta["val_loss"])
    if abs(loss - meta["val_loss"]) > tolerance or abs(accuracy - meta["val_accuracy"]) > 1.000001 / len(labels):
        raise PipelineError(
            f"{path}: the loaded model gives validation loss {loss:.6f} and accuracy {accuracy:.4f}, its record "
            f"says {meta['val_loss']:.6f} and {meta['val_accuracy']:.4f} (best epoch {meta['epoch']}; tta_flip "
            f"{meta['tta_flip']}): it is not the model that was validated; retrain it (dvc repro)"
        )


OPERATING_POINT_CAP = 0.5  # never above the point the model was trained for: a cap on how far scores may shift


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, target_sensitivity: float) -> dict[str, float]:
    """A P(tumor) threshold that keeps sensitivity at the target under a modest shift of the scores.

    Missing a tumour costs more than a false alarm, so the operating point fixes sensitivity: the highest
    threshold at which the lower bound of the 95% Wilson interval of the validation sensitivity reaches the
    target (not the point estimate, which lands just where a small shift costs sensitivity first), and never
    above OPERATING_POINT_CAP. Chosen on validation only, so the test split stays untouched. Where the
    validation split holds too few tumours for any threshold to reach the target with that margin, the
    highest threshold whose bare validation sensitivity reaches it (the rule in the file says which).
    """
    tumours = np.asarray(p_val)[np.asarray(y_val) == 1]
    candidates = np.unique(np.asarray(p_val))[::-1]  # highest first: sensitivity only grows from here
    found = len(tumours) - np.searchsorted(np.sort(tumours), candidates, side="left")  # tumours >= each
    lower, _ = wilson_interval(found, np.full(len(found), max(len(tumours), 1)))
    reaching = np.flatnonzero(lower >= target_sensitivity)
    rule = "highest threshold whose validation sensitivity's 95% Wilson lower bound reaches the target"
    if not len(reaching):  # too few validation tumours for any margin (all found needs about 73 at 0.95)
        reaching = np.flatnonzero(found >= target_sensitivity * len(tumours))
        rule = "too few validation tumours for the margin: highest threshold whose sensitivity reaches the target"
    threshold = min(float(candidates[reaching[0]]), OPERATING_POINT_CAP)
    sensitivity = float((tumours >= threshold).mean())
    specificity = float((np.asarray(p_val)[np.asarray(y_val) == 0] < threshold).mean())
    found_at = int((tumours >= threshold).sum())
    return {
        "threshold": threshold,
        "target_sensitivity": target_sensitivity,
        "validation_sensitivity": round(sensitivity, 4),
        "validation_sensitivity_lower": round(float(wilson_interval(found_at, max(len(tumours), 1))[0]), 4),
        "validation_specificity": round(specificity, 4),
        "rule": f"{rule}, at most {OPERATING_POINT_CAP}",
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

    def by_threshold(self) -> dict[str, np.ndarray]:
        """Predicted classes per threshold name (the keys of THRESHOLD_DIRS)."""
        return {"0.5": self.predicted, "operating_point": self.predicted_at_threshold}


THRESHOLD_DIRS = {"0.5": "test", "operating_point": "test_operating_point"}  # threshold name -> metrics folder


@dataclass
class ModelRun:
    """What the reports need of one model: its file, record and training params, its predictions."""

    file: ModelFile
    val_labels: np.ndarray
    val_p_tumor: np.ndarray
    test: TestPredictions
    novelty: Novelty | None = None  # fitted on training and validation scans (None: reports from saved files)
    test_novelty: np.ndarray | None = None  # each test scan's novelty score


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


def subgroup_rows(model: str, rows: pd.DataFrame, outcome: TestPredictions) -> pd.DataFrame:
    """Per subtype and per source folder (where the test split holds several): n, errors, accuracy, its 95%
    Wilson interval, at each threshold. Within a tumour subtype accuracy is its sensitivity, within the
    no-tumour subtype its specificity; the same holds per acquisition kind within each class (BY_KIND_AND_CLASS).
    `rows`: the test split's manifest rows, in the order of `outcome`."""
    classes = np.array(CLASSES)[outcome.labels]
    rows = rows.assign(**{BY_KIND_AND_CLASS: rows["acquisition"].to_numpy() + " " + classes})
    tables = []
    for grouping in (*SUBGROUPS, BY_KIND_AND_CLASS):
        if rows[grouping].nunique() < 2:
            continue
        for threshold_name, predicted in outcome.by_threshold().items():
            wrong = pd.DataFrame({"group": rows[grouping].to_numpy(), "wrong": predicted != outcome.labels})
            stats = wrong.groupby("group")["wrong"].agg(n="size", errors="sum").reset_index()
            low, high = wilson_interval(stats["n"] - stats["errors"], stats["n"])
            tables.append(
                stats.assign(
                    model=model,
                    grouping=grouping,
                    threshold_name=threshold_name,
                    accuracy=(1 - stats["errors"] / stats["n"]).round(4),
                    ci_lower=low.round(4),
                    ci_upper=high.round(4),
                )
            )
    return pd.concat(tables, ignore_index=True)[SUBGROUP_COLUMNS] if tables else pd.DataFrame(columns=SUBGROUP_COLUMNS)


def confident_mistakes(outcome: TestPredictions, rows: pd.DataFrame, count: int = 8) -> pd.DataFrame:
    """The mistakes the Grad-CAM gallery leads with: wrong at the operating point, most confident first."""
    wrong, _ = gallery_indices(outcome.labels, outcome.p_tumor, outcome.threshold, count, 0)
    return pd.DataFrame(
        {
            "id": rows["id"].to_numpy()[wrong],
            "true_class": np.array(CLASSES)[outcome.labels[wrong]],
            "subtype": rows["subtype"].to_numpy()[wrong],
            "p_tumor": outcome.p_tumor[wrong].astype(np.float64).round(4),
        }
    )


def read_report_manifest(split_dir: Path) -> pd.DataFrame:
    """The split manifest, checked for the columns the reports need (load_split takes its rows from it)."""
    manifest = read_split_manifest(split_dir)
    if missing := [c for c in REPORT_COLUMNS if c not in manifest.columns]:
        raise PipelineError(
            f"{split_dir / 'split_manifest.csv'}: no column {', '.join(missing)} (an older split); run `dvc repro`"
        )
    return manifest


def evaluate_models(
    params: Params,
    split_dir: Path,
    model_paths: dict[str, Path],
    metrics_dir: Path,
    figures_dir: Path,
    card_path: Path,
) -> dict[str, dict[str, float | None]]:
    """The evaluate stage: operating point on validation, then test predictions; reports (metrics with
    bootstrap intervals at 0.5 and at that point, subgroups, calibration, the model card) and PNG figures.
    Returns each model's test metrics at 0.5."""
    cfg = params.evaluate
    manifest = read_report_manifest(split_dir)  # first: a model cannot be checked against a split in doubt
    manifest_sha256 = file_sha256(split_dir / "split_manifest.csv")
    trained = {  # all checked before any write: the right kind of model, trained on this very split
        name: load_trained(path, expect_kind=name, split_manifest_sha256=manifest_sha256)
        for name, path in model_paths.items()
    }
    logged = {name: training_params(metrics_dir / f"train_{name}" / "params.yaml") for name in model_paths}
    external_sets, index = [], None
    if cfg.external:  # read (and refused, if they must be) before anything is written
        first = next(iter(model_paths))
        index = read_index(index_path(model_paths[first]), trained[first][1]["split_manifest_sha256"])
        external_sets = read_external_sets(cfg.external, params.data)
    validated = {}  # every model checked against its validation record before anything is written
    for name, path in model_paths.items():
        model, meta = trained[name]
        val = load_split(split_dir, "val", meta["image_size"], manifest)
        test = load_split(split_dir, "test", meta["image_size"], manifest)
        if not len(test.labels) or not len(val.labels):
            raise PipelineError(f"{split_dir}: the val and test splits must both hold images")
        val_logits = predict_logits(model, val.images, cfg.batch_size)
        check_validation_figures(path, meta, val.labels, val_logits)
        validated[name] = (val, p_tumor(val_logits), test)
    runs: dict[str, ModelRun] = {}
    for name, path in model_paths.items():
        model, meta = trained[name]
        val, p_val, test = validated[name]
        operating_point = choose_threshold(val.labels, p_val, cfg.target_sensitivity)
        write_threshold(path, operating_point, file_sha256(path))
        score = p_tumor(predict_logits(model, test.images, cfg.batch_size))
        outcome = TestPredictions(test.labels, score, operating_point["threshold"], test.images)
        novelty = fit_novelty(model, path, split_dir, manifest, val.images, cfg)
        test_novelty = novelty.scores(predict_features(model, test.images, cfg.batch_size))
        file = ModelFile(path, meta, logged[name], operating_point)
        runs[name] = ModelRun(file, val.labels, p_val, outcome, novelty, test_novelty)
        gallery(model, test.images, test.labels, score, outcome.threshold, figures_dir / f"gallery_{name}.png")

    external = {}
    if external_sets:
        models = {name: (trained[name][0], trained[name][1]["image_size"]) for name in runs}
        thresholds = {name: run.test.threshold for name, run in runs.items()}
        novelty = {name: (run.novelty, run.test_novelty) for name, run in runs.items()}
        external = {s.name: evaluate_external(s, models, thresholds, index, cfg, novelty) for s in external_sets}
    metrics = write_reports(params, manifest, runs, metrics_dir, figures_dir, card_path, external)
    write_figures({name: run.test for name, run in runs.items()}, cfg, figures_dir)
    return {name: {metric: row[name] for metric, row in metrics["test"].items()} for name in runs}


def threshold_metrics(runs: dict[str, ModelRun], cfg: EvaluateParams) -> dict[str, dict[str, dict]]:
    """{metrics folder: {metric: row}}: both models at each threshold, with bootstrap intervals."""
    point: dict[str, dict] = {folder: {} for folder in THRESHOLD_DIRS.values()}
    intervals: dict[str, dict] = {folder: {} for folder in THRESHOLD_DIRS.values()}
    samples, seed = cfg.bootstrap_samples, cfg.seed
    for name, run in runs.items():
        o = run.test
        for threshold_name, predicted in o.by_threshold().items():
            folder = THRESHOLD_DIRS[threshold_name]
            point[folder][name] = binary_metrics(o.labels, predicted, o.p_tumor)
            intervals[folder][name] = bootstrap_ci(o.labels, predicted, o.p_tumor, samples, seed)
    return {folder: summary_rows(point[folder], intervals[folder]) for folder in point}


def write_reports(
    params: Params,
    manifest: pd.DataFrame,
    runs: dict[str, ModelRun],
    metrics_dir: Path,
    figures_dir: Path,
    card_path: Path,
    external: dict | None = None,
) -> dict[str, dict[str, dict]]:
    """Everything but the figures, from predictions alone (no model needed): metrics/{test,
    test_operating_point,validation}/*.json, metrics/evaluate/ tables, calibration.json, metrics/external/
    (one file per external set, and sets.json) and the model card.
    The card is rendered from the very dicts written to the metric files, so the two cannot disagree."""
    external = external or {}
    write_json(metrics_dir / "external" / "sets.json", {"external_sets": len(external)})
    if external:
        write_json(metrics_dir / "external" / "summary.json", external_summary(external))
    for name, result in external.items():
        write_json(metrics_dir / "external" / f"{name}.json", result.metrics)
        write_table(metrics_dir / "evaluate" / "external" / f"{name}_seen.csv", result.seen)
        write_table(metrics_dir / "evaluate" / "external" / f"{name}_groups.csv", result.groups)
    test_rows = manifest[manifest["split"] == "test"].reset_index(drop=True)
    metrics = threshold_metrics(runs, params.evaluate) | {"validation": validation_rows(runs)}
    calibration = {name: calibration_row(run) for name, run in runs.items()}
    for folder, rows in metrics.items():
        for metric, row in rows.items():
            write_json(metrics_dir / folder / f"{metric}.json", row)
    for name, run in runs.items():
        write_model_tables(name, run.test, test_rows["id"].tolist(), metrics_dir / "evaluate")
    subgroups = pd.concat([subgroup_rows(name, test_rows, run.test) for name, run in runs.items()], ignore_index=True)
    write_table(metrics_dir / "evaluate" / "subgroups.csv", subgroups)
    write_json(metrics_dir / "evaluate" / "calibration.json", calibration)
    write_json(metrics_dir / "test" / "ece.json", {name: c["ece"] for name, c in calibration.items()})  # metrics diff
    card = CardInputs(
        source=params.data.source,
        evaluate=params.evaluate,
        similarity_threshold=params.split.similarity_threshold,
        manifest=manifest,
        models={name: run.file for name, run in runs.items()},
        metrics=metrics,
        subgroups=subgroups,
        calibration=calibration,
        mistakes={name: confident_mistakes(run.test, test_rows) for name, run in runs.items()},
        figures_dir=figures_dir,
        external=external,
    )
    write_model_card(card_path, card)
    return metrics


def validation_rows(runs: dict[str, ModelRun]) -> dict[str, dict]:
    """metrics/validation/: each model's best epoch, its validation loss and accuracy, the chosen threshold."""
    return summary_rows(
        {
            name: {
                "best_epoch": run.file.meta["epoch"],
                "best_loss": run.file.meta["val_loss"],
                "best_accuracy": run.file.meta.get("val_accuracy", float("nan")),
                "threshold": run.test.threshold,
            }
            for name, run in runs.items()
        }
    )


def calibration_row(run: ModelRun) -> dict[str, float | None]:
    """Test ECE and NLL, raw and temperature-scaled (T fitted on validation), as written to calibration.json."""
    report = calibration_report(run.val_labels, run.val_p_tumor, run.test.labels, run.test.p_tumor)
    return {key: json_number(value) for key, value in report.items()}


def write_figures(outcomes: dict[str, TestPredictions], cfg: EvaluateParams, figures_dir: Path) -> None:
    for name, outcome in outcomes.items():
        confusion_figure(outcome, name, figures_dir / f"confusion_{name}.png")
        reliability_figure(outcome.labels, outcome.p_tumor, name, figures_dir / f"reliability_{name}.png")
    operating_point_figure(outcomes, figures_dir / "roc_pr.png")
    prediction_grid(outcomes, cfg.grid_images, cfg.seed, figures_dir / "test_predictions.png")


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
        from sklearn.metrics import roc_curve  # here: a stage that refuses its inputs never loads sklearn

        fpr, tpr, thresholds = roc_curve(outcome.labels, outcome.p_tumor)
        roc = pd.DataFrame({"fpr": fpr.round(6), "tpr": tpr.round(6), "threshold": np.minimum(thresholds, 1).round(6)})
        write_table(out_dir / "roc" / f"{name}.csv", roc)

"""External test sets: labelled scans from another source, with what the model has effectively seen set apart.

A test figure on scans from the training collection says little about scans from elsewhere (the shortcut
check in the data report shows why). `evaluate.external` lists labelled sets under `data/external/` (folders
or .zip archives in any layout ingest reads); evaluate reads each with ingest's rules (rejects, duplicates,
label folders), compares every scan with the training and validation scans through the model's seen-index
(the split's similarity descriptor and same-slice threshold), counts the seen ones apart, and measures both
models on the unseen ones only: accuracy, sensitivity, specificity and ROC AUC with 95% bootstrap intervals,
at 0.5 and at the operating point chosen on validation. A class without unseen scans leaves the metrics
that need it undefined (null), and the file says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.contracts import DATASET_MANIFEST
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.labels import CLASSES
from brain_tumor.core.outputs import scratch_dir
from brain_tumor.core.params import DataParams, EvaluateParams
from brain_tumor.core.resize import resize_rgb
from brain_tumor.data.ingest import ingest_folder, ingest_settings, open_source
from brain_tumor.evaluation.evaluate import binary_metrics, bootstrap_ci, json_number, p_tumor, predict_logits
from brain_tumor.training.seen import SeenIndex, nearest_seen

EXTERNAL_DIR = Path("data/external")
REPORTED = ("accuracy", "recall", "specificity", "roc_auc")  # recall is the sensitivity
NEEDS = {"recall": (1,), "specificity": (0,), "roc_auc": (0, 1), "accuracy": ()}  # classes each metric needs


@dataclass
class ExternalSet:
    name: str  # the folder's or archive's name, made file-safe: metrics/external/<name>.json
    path: str  # as given in evaluate.external
    images: list[np.ndarray]  # the accepted scans, decoded RGB as ingest writes them
    labels: np.ndarray
    sources: list[str]
    ingest: dict  # ingest's report: files seen, accepted, duplicates, rejected by reason


def set_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem) or "external"


def read_external(path: str, data: DataParams) -> ExternalSet:
    """One external set, read with ingest's rules into a scratch folder that is removed afterwards."""
    from PIL import Image

    EXTERNAL_DIR.mkdir(parents=True, exist_ok=True)
    with scratch_dir(EXTERNAL_DIR.parent, "external") as work:
        max_bytes = data.max_archive_mb * 2**20
        root, refused = open_source(path, EXTERNAL_DIR, work, max_bytes, key="evaluate.external")
        settings = ingest_settings(data)
        report = ingest_folder(
            root, work / "dataset", **settings, pre_rejected=refused, source_name=path, both_classes=False
        )
        manifest = DATASET_MANIFEST.read(work / "dataset" / "manifest.csv")
        images = []
        for file in manifest["file"]:
            with Image.open(work / "dataset" / file) as img:
                images.append(np.asarray(img.convert("RGB")))
    return ExternalSet(
        set_name(path), path, images, manifest["label"].astype(int).to_numpy(), manifest["source"].tolist(), report
    )


def read_external_sets(paths: tuple[str, ...], data: DataParams) -> list[ExternalSet]:
    sets = [read_external(path, data) for path in paths]
    names = [s.name for s in sets]
    if len(set(names)) < len(names):
        raise PipelineError(f"evaluate.external: two sets share a name ({', '.join(names)}); rename one folder")
    return sets


def unseen_metrics(labels: np.ndarray, score: np.ndarray, threshold: float, samples: int, seed: int) -> dict:
    """REPORTED metrics with 95% bootstrap intervals; null where the scans lack a class the metric needs."""
    present = set(np.unique(labels).tolist())
    if len(labels) == 0:
        return {key: None for m in REPORTED for key in (m, f"{m}_ci_lower", f"{m}_ci_upper")}
    predicted = (score >= threshold).astype(np.int64)
    point = binary_metrics(labels, predicted, score)
    intervals = bootstrap_ci(labels, predicted, score, samples, seed)
    row: dict = {}
    for metric in REPORTED:
        defined = all(c in present for c in NEEDS[metric])
        row[metric] = json_number(point[metric]) if defined else None
        low, high = intervals[metric] if defined else (float("nan"), float("nan"))
        row[f"{metric}_ci_lower"], row[f"{metric}_ci_upper"] = json_number(low), json_number(high)
    return row


@dataclass
class ExternalResult:
    metrics: dict  # metrics/external/<name>.json: counts, then per model and threshold (numbers and nulls only)
    seen: pd.DataFrame  # the seen scans: source, training_similarity, nearest_training_scan
    notes: list[str]  # what is undefined and why (the model card prints them)


def evaluate_external(
    ext: ExternalSet, models: dict[str, tuple], thresholds: dict[str, float], index: SeenIndex, cfg: EvaluateParams
) -> ExternalResult:
    """Counts, then per model and threshold the metrics on the unseen scans of one external set.

    `models`: name -> (the loaded model in eval mode, its image size); `thresholds`: name -> its operating point.
    """
    if ext.images:
        similarity, nearest = nearest_seen(index, ext.images)
    else:
        similarity, nearest = np.zeros(0), np.zeros(0, dtype=str)
    seen = similarity >= index.threshold
    unseen = ~seen
    counts = {key: ext.ingest[key] for key in ("files_seen", "accepted", "duplicates", "rejected")}
    counts |= {"seen": int(seen.sum()), "unseen": int(unseen.sum()), "same_slice_threshold": index.threshold}
    for k, name in enumerate(CLASSES):
        counts[f"seen_{name}"] = int((seen & (ext.labels == k)).sum())
        counts[f"unseen_{name}"] = int((unseen & (ext.labels == k)).sum())
    notes = [
        f"no unseen {name} scans: the metrics that need them are null"
        for name in CLASSES
        if not counts[f"unseen_{name}"]
    ]
    metrics: dict = counts | {"models": {}}
    for name, (model, image_size) in models.items():
        score = external_scores(model, ext.images, image_size, cfg.batch_size)[unseen]
        y = ext.labels[unseen]
        samples, seed = cfg.bootstrap_samples, cfg.seed
        metrics["models"][name] = {
            "0.5": unseen_metrics(y, score, 0.5, samples, seed),
            "operating_point": unseen_metrics(y, score, thresholds[name], samples, seed),
        }
    seen_table = pd.DataFrame(
        {
            "source": np.asarray(ext.sources, dtype=object)[seen],
            "training_similarity": np.round(similarity[seen], 4),
            "nearest_training_scan": np.asarray(nearest, dtype=object)[seen],
        }
    )
    return ExternalResult(metrics, seen_table, notes)


def external_scores(model, images: list[np.ndarray], image_size: int, batch_size: int) -> np.ndarray:
    """P(tumor) per decoded RGB scan, resized as the training data was."""
    if not images:
        return np.zeros(0)
    batch = np.stack([resize_rgb(rgb, image_size) for rgb in images])
    return p_tumor(predict_logits(model, batch, batch_size))

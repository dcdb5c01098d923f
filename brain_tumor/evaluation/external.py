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
from brain_tumor.core.errors import PipelineError, one_line
from brain_tumor.core.intervals import wilson_interval
from brain_tumor.core.labels import CLASSES
from brain_tumor.core.outputs import scratch_dir
from brain_tumor.core.params import DataParams, EvaluateParams
from brain_tumor.core.resize import resize_rgb
from brain_tumor.data.ingest import ingest_folder, ingest_settings, open_source
from brain_tumor.data.synthetic import write_other_source
from brain_tumor.evaluation.metrics import binary_metrics, bootstrap_ci, json_number, p_tumor, roc_auc
from brain_tumor.evaluation.predictions import predict_features, predict_logits
from brain_tumor.serving.novelty import Novelty
from brain_tumor.training.seen import SeenIndex, nearest_seen

EXTERNAL_DIR = Path("data/external")
SYNTHETIC_EXTERNAL = EXTERNAL_DIR / "synthetic-other-source"  # a committed folder (its README): generated
SYNTHETIC_EXTERNAL_IMAGES = 96
SYNTHETIC_EXTERNAL_SEED = 2026  # its own: a new data.synthetic.seed re-runs ingest, not evaluate
REPORTED = ("accuracy", "recall", "specificity", "roc_auc")  # recall is the sensitivity
NEEDS = {"recall": (1,), "specificity": (0,), "roc_auc": (0, 1), "accuracy": ()}  # classes each metric needs
LABELS_FILE = "labels.csv"  # optional, at the set's top: file, and any of subject, modality (or weighting), z
SLICE_NAME = re.compile(r"^(?P<subject>.+?)_(?P<weighting>[A-Za-z0-9]+)_z(?P<z>\d+)$")  # <subject>_<weighting>_z<n>
SLICE_COLUMNS = ("subject", "weighting", "z")
GROUPINGS = ("weighting", "subject", "region")  # the per-group table of each set: one block per grouping
GROUP_COLUMNS = [
    "model", "threshold_name", "grouping", "group", "tumor", "found", "sensitivity", "sensitivity_ci_lower",
    "sensitivity_ci_upper", "non_tumor", "cleared", "specificity", "specificity_ci_lower", "specificity_ci_upper",
    "roc_auc",
]  # fmt: skip


@dataclass
class ExternalSet:
    name: str  # the folder's or archive's name, made file-safe: metrics/external/<name>.json
    path: str  # as given in evaluate.external
    images: list[np.ndarray]  # the accepted scans, decoded RGB as ingest writes them
    labels: np.ndarray
    sources: list[str]
    ingest: dict  # ingest's report: files seen, accepted, duplicates, rejected by reason
    slices: pd.DataFrame  # per scan: subject, weighting, z and region where the set tells them (else empty)


def set_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem) or "external"


def read_external(path: str, data: DataParams) -> ExternalSet:
    """One external set, read with ingest's rules into a scratch folder that is removed afterwards."""
    from PIL import Image

    EXTERNAL_DIR.mkdir(parents=True, exist_ok=True)
    with scratch_dir(EXTERNAL_DIR.parent, "external") as work:
        if Path(path) == SYNTHETIC_EXTERNAL:  # the built-in set: data.synthetic's generator, another source's look
            syn = data.synthetic
            root, refused = work / "generated", []
            write_other_source(
                root, SYNTHETIC_EXTERNAL_IMAGES, syn.image_size, syn.tumor_fraction, SYNTHETIC_EXTERNAL_SEED
            )
        else:
            max_bytes = data.max_archive_mb * 2**20
            root, refused = open_source(path, EXTERNAL_DIR, work, max_bytes, key="evaluate.external")
        settings = ingest_settings(data)
        report = ingest_folder(
            root,
            work / "dataset",
            **settings,
            pre_rejected=refused,
            source_name=path,
            both_classes=False,
            describing_files=(LABELS_FILE,),
        )
        manifest = DATASET_MANIFEST.read(work / "dataset" / "manifest.csv")
        slices = slice_table(root / LABELS_FILE, manifest["source"].tolist())
        images = []
        for file in manifest["file"]:
            with Image.open(work / "dataset" / file) as img:
                images.append(np.asarray(img.convert("RGB")))
    labels = manifest["label"].astype(int).to_numpy()
    return ExternalSet(set_name(path), path, images, labels, manifest["source"].tolist(), report, slices)


def slice_table(labels_file: Path, sources: list[str]) -> pd.DataFrame:
    """Subject, weighting and slice index of each scan: from the set's labels.csv (matched by file name), else
    parsed from names like `<subject>_<weighting>_z<index>.png`; empty where neither tells. `region`: where
    the slice lies in its (subject, weighting) volume's range of slices: "middle third" or "outer thirds"
    (mask-labelled sets take their no-tumour slices mostly from the top and bottom of the brain)."""
    table = pd.DataFrame({"file": [Path(s).name for s in sources]})
    if labels_file.is_file():
        try:
            given = pd.read_csv(labels_file, dtype=str).rename(columns={"modality": "weighting"})
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise PipelineError(f"{labels_file}: not a readable CSV ({one_line(exc)})") from None
        if "file" in given.columns:
            given = given.drop_duplicates("file")[["file", *(c for c in SLICE_COLUMNS if c in given.columns)]]
            table = table.merge(given, on="file", how="left")
    parsed = table["file"].map(lambda name: SLICE_NAME.match(Path(name).stem))
    for column in SLICE_COLUMNS:
        from_name = parsed.map(lambda m, c=column: m.group(c) if m else None)
        table[column] = table[column].fillna(from_name) if column in table.columns else from_name
    table["weighting"] = table["weighting"].str.lower()
    table["z"] = pd.to_numeric(table["z"], errors="coerce")
    volume = table.groupby(["subject", "weighting"])["z"]
    position = (table["z"] - volume.transform("min")) / (volume.transform("max") - volume.transform("min"))
    table["region"] = np.where(position.between(1 / 3, 2 / 3), "middle third", "outer thirds")
    table.loc[position.isna(), "region"] = None
    return table


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
    groups: pd.DataFrame  # GROUP_COLUMNS: per weighting, subject and region, on the unseen scans


def evaluate_external(
    ext: ExternalSet,
    models: dict[str, tuple],
    thresholds: dict[str, float],
    index: SeenIndex,
    cfg: EvaluateParams,
    novelty: dict[str, tuple],
) -> ExternalResult:
    """Counts, then per model and threshold the metrics on the unseen scans of one external set, and how well
    the model's novelty score tells them from the internal test scans.

    `models`: name -> (the loaded model in eval mode, its image size); `thresholds`: name -> its operating point;
    `novelty`: name -> (its Novelty, the internal test scans' scores).
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
    groups = []
    for name, (model, image_size) in models.items():
        batch = resized(ext.images, image_size)
        score = p_tumor(predict_logits(model, batch, cfg.batch_size))[unseen]
        y = ext.labels[unseen]
        samples, seed = cfg.bootstrap_samples, cfg.seed
        metrics["models"][name] = {
            "0.5": unseen_metrics(y, score, 0.5, samples, seed),
            "operating_point": unseen_metrics(y, score, thresholds[name], samples, seed),
            "novelty": novelty_metrics(*novelty[name], predict_features(model, batch, cfg.batch_size)[unseen]),
        }
        for threshold_name, threshold in (("0.5", 0.5), ("operating_point", thresholds[name])):
            rows = group_rows(ext.slices[unseen].reset_index(drop=True), y, score, threshold)
            groups.append(rows.assign(model=name, threshold_name=threshold_name))
    seen_table = pd.DataFrame(
        {
            "source": np.asarray(ext.sources, dtype=object)[seen],
            "training_similarity": np.round(similarity[seen], 4),
            "nearest_training_scan": np.asarray(nearest, dtype=object)[seen],
        }
    )
    table = pd.concat(groups, ignore_index=True)[GROUP_COLUMNS] if groups else pd.DataFrame(columns=GROUP_COLUMNS)
    return ExternalResult(metrics, seen_table, notes, table)


def group_rows(slices: pd.DataFrame, y: np.ndarray, score: np.ndarray, threshold: float) -> pd.DataFrame:
    """Sensitivity and specificity with 95% Wilson intervals, and ROC AUC, per group of each grouping the set
    tells (slices of one patient are far from independent: read a set's figure beside its subjects')."""
    called = score >= threshold
    rows = []
    for grouping in GROUPINGS:
        known = slices[grouping].notna().to_numpy()
        for group in sorted(slices.loc[known, grouping].unique(), key=str):
            member = known & (slices[grouping] == group).to_numpy()
            tumor, non_tumor = member & (y == 1), member & (y == 0)
            found, cleared = int(called[tumor].sum()), int((~called[non_tumor]).sum())
            (s_low, c_low), (s_high, c_high) = wilson_interval(
                np.array([found, cleared]), np.maximum([tumor.sum(), non_tumor.sum()], 1)
            )
            rows.append(
                {
                    "grouping": grouping,
                    "group": str(group),
                    "tumor": int(tumor.sum()),
                    "found": found,
                    "sensitivity": round(found / tumor.sum(), 4) if tumor.any() else None,
                    "sensitivity_ci_lower": round(s_low, 4) if tumor.any() else None,
                    "sensitivity_ci_upper": round(s_high, 4) if tumor.any() else None,
                    "non_tumor": int(non_tumor.sum()),
                    "cleared": cleared,
                    "specificity": round(cleared / non_tumor.sum(), 4) if non_tumor.any() else None,
                    "specificity_ci_lower": round(c_low, 4) if non_tumor.any() else None,
                    "specificity_ci_upper": round(c_high, 4) if non_tumor.any() else None,
                    "roc_auc": json_number(roc_auc(y[member], score[member])),
                }
            )
    return pd.DataFrame(rows, columns=[c for c in GROUP_COLUMNS if c not in ("model", "threshold_name")])


def resized(images: list[np.ndarray], image_size: int) -> np.ndarray:
    """Decoded RGB scans resized as the training data was, as one uint8 batch."""
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.stack([resize_rgb(rgb, image_size) for rgb in images])


def novelty_metrics(novelty: Novelty, test_scores: np.ndarray, features: np.ndarray) -> dict:
    """How the novelty score sees the set: the share of its scans above the threshold, and the ROC AUC with
    which the score tells them from the internal test scans (1: every one of them scores higher)."""
    internal = {"threshold": novelty.threshold, "internal_test_flagged": json_number(share_above(test_scores, novelty))}
    if not len(features):
        return {"flagged": None, "roc_auc_vs_internal_test": None} | internal
    scores = novelty.scores(features)
    labels = np.r_[np.zeros(len(test_scores)), np.ones(len(scores))]
    return {
        "flagged": json_number(share_above(scores, novelty)),
        "roc_auc_vs_internal_test": json_number(roc_auc(labels, np.r_[test_scores, scores])),
    } | internal


def share_above(scores: np.ndarray, novelty: Novelty) -> float:
    return float((scores > novelty.threshold).mean()) if len(scores) else float("nan")


def external_summary(results: dict[str, ExternalResult]) -> dict[str, dict]:
    """metrics/external/summary.json, one row per model for `dvc exp show`: the lowest ROC AUC over the sets
    with both classes, and the lowest sensitivity and specificity at the operating point over the sets that
    have the class (unseen scans). A recipe is better only where these rise with internal accuracy kept."""
    models = sorted({m for result in results.values() for m in result.metrics["models"]})
    summary: dict[str, dict] = {}
    for model in models:
        rows = [r.metrics["models"][model] for r in results.values() if model in r.metrics["models"]]

        def lowest(metric: str, threshold_name: str, rows: list = rows) -> float | None:
            values = [row[threshold_name][metric] for row in rows if row[threshold_name][metric] is not None]
            return min(values) if values else None

        summary[model] = {
            "lowest_roc_auc": lowest("roc_auc", "operating_point"),
            "lowest_sensitivity": lowest("recall", "operating_point"),
            "lowest_specificity": lowest("specificity", "operating_point"),
            "lowest_novelty_auc": lowest("roc_auc_vs_internal_test", "novelty"),
        }
    return summary

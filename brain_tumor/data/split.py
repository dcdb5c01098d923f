"""Split: a stratified, seeded train/val/test split that keeps every group of similar images in one split.

A group (similarity.py) joins ingest's exact and perceptual-hash duplicates, re-processed copies of one
slice and neighbouring slices of one series. The split then measures what is left: for every held-out image,
its highest similarity to any training image (metrics/split.json, reports/data/).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.contracts import DATASET_MANIFEST
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.labels import CLASSES, SPLITS, require_both_classes
from brain_tumor.core.outputs import atomic_dir, write_json, write_table
from brain_tumor.core.params import Params, SplitParams
from brain_tumor.data.report import write_people_report
from brain_tumor.data.shortcuts import ACQUISITION_KINDS, STATISTICS, shortcut_check, statistics_table, warning_line
from brain_tumor.data.similarity import (
    Grouping,
    Neighbours,
    best_matches,
    file_descriptors,
    group_size_table,
    leakage_levels,
    mutual_group_pairs,
    nearest_neighbours,
    similarity_groups,
    threshold_pairs,
)

NEIGHBOURS = 32  # nearest images listed per image: enough for every pair above the threshold in practice


def assign_splits(labels: list[int], groups: list[str], fractions: dict[str, float], seed: int) -> list[str]:
    """Give each item a split so that each class is divided by `fractions` and no group is divided.

    Per class, groups are shuffled with the seed, then placed largest first into the split that is
    furthest below its target count; with mostly single images this meets the fractions to within one
    image per class and split.
    """
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    result = [""] * len(labels)
    for label in sorted(set(labels)):
        class_groups = sorted(g for g, idx in members.items() if labels[idx[0]] == label)
        order = rng.permutation(len(class_groups))
        shuffled = [class_groups[i] for i in order]
        shuffled.sort(key=lambda g: -len(members[g]))  # stable: ties keep the seeded order
        total = sum(len(members[g]) for g in shuffled)
        target = {s: fractions[s] * total for s in SPLITS}
        count = dict.fromkeys(SPLITS, 0)
        for g in shuffled:
            split = max(SPLITS, key=lambda s: target[s] - count[s])
            count[split] += len(members[g])
            for i in members[g]:
                result[i] = split
    return result


@dataclass
class GroupingSettings:
    """The `split` params that decide which images must share a split (ranges checked by the schema)."""

    enabled: bool  # split.group_duplicates; false: a plain stratified random split (to measure leakage)
    threshold: float  # re-processed copies of one slice: always grouped
    neighbour_threshold: float  # neighbouring slices: grouped when their groups are mutual nearest neighbours
    mutual: int  # how many nearest groups count as "nearest" (0: no neighbour step)
    max_size: int  # no group grows beyond this (the guard against chaining)

    @classmethod
    def from_params(cls, split: SplitParams) -> GroupingSettings:
        return cls(
            split.group_duplicates,
            split.similarity_threshold,
            split.neighbour_threshold,
            split.mutual_neighbours,
            split.max_group_size,
        )


def split_dataset(params: Params, dataset_dir: Path, out_dir: Path, report_path: Path, people_dir: Path) -> dict:
    """The split stage: data/dataset -> out_dir/{train,val,test}/{class}/<id>.png + split_manifest.csv."""
    fractions = {name: getattr(params.split, name) for name in SPLITS}
    settings = GroupingSettings.from_params(params.split)
    manifest = DATASET_MANIFEST.read(dataset_dir / "manifest.csv")
    if manifest.empty:
        raise PipelineError(f"{dataset_dir / 'manifest.csv'}: no images to split")
    descriptors = file_descriptors([dataset_dir / f for f in manifest["file"]])
    neighbours = nearest_neighbours(descriptors, NEIGHBOURS)
    grouping = similarity_groups(
        neighbours,
        manifest["group"].to_numpy(),
        settings.threshold,
        settings.neighbour_threshold,
        settings.mutual,
        settings.max_size,
    )
    manifest["duplicate_group"] = manifest["group"]
    manifest["group"] = pd.Series(grouping.labels).map("s{:06d}".format)
    kept_together = manifest["group"] if settings.enabled else manifest["id"]
    labels = manifest["label"].astype(int).tolist()
    manifest["split"] = assign_splits(labels, kept_together.tolist(), fractions, params.split.seed)
    for split in SPLITS:  # before training: a split without one class cannot validate or test anything
        require_both_classes(manifest.loc[manifest["split"] == split, "label"].astype(int), f"split: the {split} split")
    manifest["train_similarity"], manifest["train_match"] = nearest_training_image(descriptors, manifest["split"])
    stats = statistics_table(
        [dataset_dir / f for f in manifest["file"]], manifest["width"], manifest["height"], manifest["source"]
    )
    shortcuts = shortcut_check(stats, manifest["label"].astype(int).to_numpy(), manifest["split"], params.split.seed)
    manifest["acquisition"] = stats["acquisition"].to_numpy()
    rows = split_rows(manifest)
    write_split_folder(out_dir, dataset_dir, manifest, rows)
    report = split_report(rows, fractions) | {
        "grouping": grouping_report(settings, grouping, manifest),
        "residual_leakage": leakage_report(rows, settings.threshold),
        "shortcut_check": shortcuts,
        "acquisition": acquisition_counts(rows),
    }
    write_json(report_path, report)
    if line := warning_line(shortcuts):
        print(line, file=sys.stderr)
    ingest_report = json.loads((dataset_dir / "report.json").read_text())
    sheets = calibration_sheets(neighbours, grouping, settings, params.split.seed)
    sheets["closest"] = closest_held_out_pairs(manifest)
    images = {"file": (dataset_dir / manifest["file"]).to_numpy(), "name": manifest["source"].to_numpy()}
    figure_stats = stats[list(STATISTICS)].assign(**{"class": manifest["class"].to_numpy()})
    write_people_report(
        ingest_report, report, rows, out_dir, people_dir, params.split.seed, sheets, images, figure_stats
    )
    return report


def split_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """split_manifest.csv: split by split, class by class, with each image's place in the split folder."""
    rows = manifest.assign(split_order=manifest["split"].map(SPLITS.index))
    rows = rows.sort_values(["split_order", "label", "id"], kind="stable", ignore_index=True)
    rows["file"] = rows["split"] + "/" + rows["class"] + "/" + rows["id"] + ".png"
    columns = ["id", "split", "file", "label", "class", "group", "duplicate_group", "train_similarity"]
    return rows[[*columns, "sha256", "source", "subtype", "source_folder", "acquisition"]]


def write_split_folder(out_dir: Path, dataset_dir: Path, manifest: pd.DataFrame, rows: pd.DataFrame) -> None:
    """out_dir/{train,val,test}/{class}/<id>.png and split_manifest.csv, all or nothing."""
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for name in CLASSES:
                (tmp / split / name).mkdir(parents=True)
        sources = dataset_dir / manifest.set_index("id").loc[rows["id"], "file"]
        for source, file in zip(sources, rows["file"], strict=True):
            shutil.copyfile(source, tmp / file)
        write_table(tmp / "split_manifest.csv", rows)


def acquisition_counts(rows: pd.DataFrame) -> dict:
    """Estimated acquisition kind x class: where a class is all one kind, the kind predicts the class."""
    return {
        name: rows.loc[rows["class"] == name, "acquisition"]
        .value_counts()
        .reindex(ACQUISITION_KINDS, fill_value=0)
        .astype(int)
        .to_dict()
        for name in CLASSES
    }


def nearest_training_image(descriptors: np.ndarray, splits: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """For each val and test image, its highest similarity to any training image (4 decimals, rounded down so
    that no value reaches a threshold it is below; NaN for training images) and that image's row (else -1)."""
    train = (splits == "train").to_numpy()
    similarity, match = np.full(len(splits), np.nan), np.full(len(splits), -1)
    best, which = best_matches(descriptors[~train], descriptors[train])
    similarity[~train], match[~train] = np.floor(best.astype(np.float64) * 1e4) / 1e4, np.flatnonzero(train)[which]
    return similarity, match


def split_report(rows: pd.DataFrame, fractions: dict[str, float]) -> dict:
    counts = pd.crosstab(rows["split"], rows["class"]).reindex(index=SPLITS, columns=CLASSES, fill_value=0)
    splits_per_group = rows.groupby("group")["split"].nunique()
    return {
        "images": len(rows),
        **{
            s: {c: int(counts.loc[s, c]) for c in CLASSES}
            | {"fraction": round(float(counts.loc[s].sum()) / len(rows), 4)}
            for s in SPLITS
        },
        "groups_in_several_splits": int((splits_per_group > 1).sum()),
        "target": fractions,
    }


def grouping_report(settings: GroupingSettings, grouping: Grouping, manifest: pd.DataFrame) -> dict:
    """How images were grouped: the settings, group sizes and what the guard against chaining refused."""
    sizes = manifest["group"].value_counts()
    return {
        "enabled": settings.enabled,
        "similarity_threshold": settings.threshold,
        "neighbour_threshold": settings.neighbour_threshold,
        "mutual_neighbours": settings.mutual,
        "max_group_size": settings.max_size,
        "groups": len(sizes),
        "images_in_shared_groups": int(sizes[sizes > 1].sum()),
        "largest_group": int(sizes.iloc[0]),
        "groups_by_size": group_size_table(manifest["group"].to_numpy()),
        "copy_pairs": grouping.same_pairs,
        "neighbour_pairs": grouping.neighbour_pairs,
        "pairs_refused_by_size_cap": grouping.refused,
        "groups_with_both_classes": int((manifest.groupby("group")["label"].nunique() > 1).sum()),
    }


def leakage_report(rows: pd.DataFrame, threshold: float) -> dict:
    """Per held-out split: how many images have a training image at or above each similarity level."""
    report = {}
    for split in ("val", "test"):
        best = rows.loc[rows["split"] == split, "train_similarity"].astype(float)
        report[split] = (
            {"images": len(best)}
            | {key: int((best >= level).sum()) for key, level in leakage_levels(threshold).items()}
            | {"median_similarity": round(float(best.median()), 4) if len(best) else None}
        )
    return report


def calibration_sheets(
    neighbours: Neighbours, grouping: Grouping, settings: GroupingSettings, seed: int, count: int = 8
) -> dict[str, dict[str, pd.DataFrame]]:
    """Image pairs (a, b, similarity) within 0.02 above and below each threshold, one per group, drawn
    with the seed: where "the same slice" and "a neighbouring slice" stop, for a person to judge."""
    candidates = {
        "copies": (threshold_pairs(neighbours, settings.threshold - 0.02), settings.threshold),
        "neighbours": (
            mutual_group_pairs(neighbours, grouping.copies, 0.0, max(settings.mutual, 1)),
            settings.neighbour_threshold,
        ),
    }
    sheets = {}
    for name, (found, level) in candidates.items():
        pairs = found.assign(group=grouping.copies[found["a"]]).sample(frac=1.0, random_state=seed)
        above = pairs[pairs["similarity"].between(level, level + 0.02, inclusive="left")]
        below = pairs[pairs["similarity"].between(level - 0.02, level, inclusive="left")]
        sheets[name] = {
            f"{level:.2f} to {level + 0.02:.2f}: joined": above.drop_duplicates("group").head(count),
            f"{level - 0.02:.2f} to {level:.2f}: not joined by this rule": below.drop_duplicates("group").head(count),
        }
    return sheets


def closest_held_out_pairs(manifest: pd.DataFrame, count: int = 8) -> dict[str, pd.DataFrame]:
    """The test images most similar to a training image, with that image: what leaks, if anything."""
    test = manifest[manifest["split"] == "test"].nlargest(count, "train_similarity")
    pairs = pd.DataFrame({"a": test.index, "b": test["train_match"], "similarity": test["train_similarity"]})
    return {f"the {len(pairs)} test images (left) most similar to a training image (right)": pairs}

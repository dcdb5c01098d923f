"""The data report (reports/data/): markdown and figures for a person to read, from what ingest and split
measured. Its own module, so that rewording the report re-runs the split stage but changes no training data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.labels import CLASSES, SPLITS
from brain_tumor.data.similarity import LOOSER, leakage_levels


def write_people_report(
    ingest: dict,
    split: dict,
    rows: pd.DataFrame,
    split_dir: Path,
    out_dir: Path,
    seed: int,
    sheets: dict[str, dict[str, pd.DataFrame]],
    images: dict[str, np.ndarray],
    statistics: pd.DataFrame,
) -> None:
    """reports/data: data_report.md and its figures (figures/*.png), for a person to read. `statistics`: the
    shortcut check's image statistics, one row per image, with its class."""
    from brain_tumor.data.figures import (
        class_balance_figure,
        leakage_figure,
        pair_sheet,
        samples_figure,
        statistics_figure,
    )

    figures = out_dir / "figures"
    class_balance_figure({s: split[s] for s in SPLITS}, figures / "class_balance.png")
    rng = np.random.default_rng(seed)
    samples = {}
    for name in CLASSES:
        files = [split_dir / f for f in rows.loc[rows["class"] == name, "file"]]
        samples[name] = [files[i] for i in sorted(rng.choice(len(files), min(6, len(files)), replace=False))]
    samples_figure(samples, figures / "samples.png")
    for name, sections in sheets.items():
        pair_sheet(sections, images, SHEET_TITLES[name], figures / f"pairs_{name}.png")
    held_out = {s: rows.loc[rows["split"] == s, "train_similarity"].astype(float).to_numpy() for s in ("val", "test")}
    g = split["grouping"]
    lines = {"similarity threshold": g["similarity_threshold"], "neighbour threshold": g["neighbour_threshold"]}
    leakage_figure(held_out, lines | {"looser": min(LOOSER)}, figures / "residual_leakage.png")
    statistics_figure(statistics, figures / "shortcut_statistics.png")
    (out_dir / "data_report.md").write_text(
        ingest_section(ingest)
        + split_section(split)
        + grouping_section(split)
        + leakage_section(split)
        + shortcut_section(split["shortcut_check"])
        + acquisition_section(split["acquisition"])
    )


SHEET_TITLES = {
    "copies": "pairs at the similarity threshold (the same slice, re-processed)",
    "neighbours": "mutual nearest groups at the neighbour threshold (neighbouring slices)",
    "closest": "residual leakage: the closest test / training pairs",
}


def ingest_section(ingest: dict) -> str:
    reasons = "".join(f"| {k} | {v} |\n" for k, v in ingest["rejected_by_reason"].items()) or "| (none) | 0 |\n"
    rejected = f"{ingest['rejected']} ({ingest['rejected_fraction']:.1%})"
    return f"""# Data report

Source: `{ingest["source"]}`

| files seen | accepted | exact duplicates (copies dropped) | rejected |
|---|---|---|---|
| {ingest["files_seen"]} | {ingest["accepted"]} | {ingest["duplicates"]} | {rejected} |

Every input file is one of: accepted (one canonical RGB image), an exact duplicate of an accepted image
(same decoded pixels; the copy is dropped), or rejected for the reason below. `data/dataset/files.csv`
lists each file with its status and reason.

| rejected because | files |
|---|---|
{reasons}
Ingest's duplicate groups (exact and near duplicates, by perceptual hash): {ingest["duplicate_groups"]} groups
holding {ingest["files_in_duplicate_groups"]} files, the largest {ingest["largest_duplicate_group"]} files.
Groups whose members disagree on the label: {ingest["label_conflict_groups"]} (set aside as `label_conflict`).
"""


def split_section(split: dict) -> str:
    table = "".join(
        f"| {s} | {split[s]['non_tumor']} | {split[s]['tumor']} | {split[s]['fraction']:.1%} |\n" for s in SPLITS
    )
    return f"""
## Split

| split | non_tumor | tumor | share |
|---|---|---|---|
{table}
![class balance](figures/class_balance.png)

![samples](figures/samples.png)
"""


def grouping_section(split: dict) -> str:
    g = split["grouping"]
    sizes = "".join(f"| {size} | {count} |\n" for size, count in g["groups_by_size"].items())
    keys = ("groups", "images_in_shared_groups", "largest_group", "copy_pairs", "neighbour_pairs")
    summary = "| " + " | ".join(str(g[k]) for k in (*keys, "groups_with_both_classes")) + " |"
    if g["enabled"]:
        use = f"Each group is kept in one split: groups found in several splits = {split['groups_in_several_splits']}."
    else:
        use = (
            "**Grouping is off** (`split.group_duplicates: false`): this is a plain stratified random split, "
            f"kept to measure leakage; {split['groups_in_several_splits']} of the groups below are divided."
        )
    return f"""
## Grouping: the same slice and neighbouring slices stay in one split

Ingest's hashes catch exact and lightly changed copies only. Public sets also hold the same slice with
another contrast, gamma, equalisation, sharpening, JPEG quality, size or crop, mirrored left-right or
upside down, and neighbouring slices of one patient's series. The split stage describes each image by its
rank-equalised greyscale (unchanged by any monotone intensity re-mapping), centred and scaled on the head
and band-passed on a 32x32 grid; the similarity of two images is the cosine of their descriptors, the best
of the four flips. On top of ingest's duplicate groups, two rules join images:

- **copies**: every pair with similarity >= **{g["similarity_threshold"]}** (`split.similarity_threshold`);
- **neighbouring slices**: groups that are among each other's {g["mutual_neighbours"]} nearest groups, with
  similarity >= **{g["neighbour_threshold"]}** (`split.neighbour_threshold`, `split.mutual_neighbours`).
  Mutuality keeps a generic-looking image from linking unrelated ones.

Against chaining (small steps joining unrelated images into one giant group), pairs are joined most similar
first and never into a group above **{g["max_group_size"]}** images (`split.max_group_size`); this cap left
{g["pairs_refused_by_size_cap"]} pairs apart. {use}

| groups | images in shared groups | largest group | copy pairs | neighbour pairs | groups with both classes |
|---|---|---|---|---|---|
{summary}

| group size (images) | groups |
|---|---|
{sizes}
Where the thresholds sit: pairs just above (joined) and just below (not joined by that rule) each
threshold, one pair per group, with their similarity and source files.

![pairs at the similarity threshold](figures/pairs_copies.png)

![pairs at the neighbour threshold](figures/pairs_neighbours.png)
"""


def leakage_section(split: dict) -> str:
    leakage, threshold = split["residual_leakage"], split["grouping"]["similarity_threshold"]
    table = "".join(
        f"| >= {level:.2f}{' (threshold)' if key == 'above_threshold' else ''} | "
        + " | ".join(f"{leakage[s][key]} of {leakage[s]['images']}" for s in ("test", "val"))
        + " |\n"
        for key, level in leakage_levels(threshold).items()
    )
    return f"""
## Residual leakage: how close does a held-out image come to a training image?

For every test and validation image, its highest similarity to any training image (all pairs compared, the
best of four flips; column `train_similarity` of `split_manifest.csv`). With grouping on, no held-out image
should reach the similarity threshold. The looser levels count held-out images with a training image of
similar anatomy, which different patients also share.

| most similar training image | test images | val images |
|---|---|---|
{table}
![residual leakage](figures/residual_leakage.png)

![the closest test / training pairs](figures/pairs_closest.png)
"""


def shortcut_section(check: dict) -> str:
    verdict = (
        "**Warning: the label is predictable without anatomy.** The classes differ in how their scans were "
        "acquired or processed, so a model can score well by learning that instead of the tumour; test it on "
        "scans from another source before trusting it."
        if check["warning"]
        else "The statistics predict the label no better than the majority rate allows (within the margin)."
    )
    return f"""
## Shortcut check

Statistics with no anatomy in them ({", ".join(check["statistics"])}), fitted on the training split and
scored on the {check["test_images"]} test images:

| classifier on the statistics | test accuracy |
|---|---|
| majority class (knows nothing) | {check["majority_rate"]:.4f} |
| gradient-boosted trees | {check["gradient_boosting_accuracy"]:.4f} |
| logistic regression | {check["logistic_regression_accuracy"]:.4f} |

{verdict}

![per-class distributions of the statistics](figures/shortcut_statistics.png)
"""


def acquisition_section(counts: dict[str, dict[str, int]]) -> str:
    kinds = list(next(iter(counts.values())))
    rows = "".join(f"| {name} | " + " | ".join(str(counts[name][k]) for k in kinds) + " |\n" for name in counts)
    return f"""
## Acquisition kind (estimated)

Whether cerebrospinal fluid is bright (T2-like) or dark (T1-like: T1 with or without contrast, FLAIR, CT),
estimated from each image (`shortcuts.csf_brightness`; it agreed with an eye reading on 45 of 47 scans of
the shared real set). Where a class is nearly all one kind, the kind predicts the class; evaluate reports
accuracy per kind (`metrics/evaluate/subgroups.csv`, grouping `acquisition`).

| class | {" | ".join(kinds)} |
|---|{"---|" * len(kinds)}
{rows}"""

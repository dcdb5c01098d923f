"""Split: a stratified, seeded train/val/test split that keeps every group of similar images in one split.

A group (similarity.py) joins ingest's exact and perceptual-hash duplicates, re-processed copies of one
slice and neighbouring slices of one series. The split then measures what is left: for every held-out image,
its highest similarity to any training image (metrics/split.json, reports/data/).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .common import CLASSES, PipelineError, atomic_dir, read_table, require_both_classes, write_json, write_table
from .similarity import (
    Grouping,
    Neighbours,
    best_matches,
    file_descriptors,
    group_size_table,
    mutual_group_pairs,
    nearest_neighbours,
    similarity_groups,
    threshold_pairs,
)

SPLITS = ("train", "val", "test")
NEIGHBOURS = 32  # nearest images listed per image: enough for every pair above the threshold in practice
LOOSER = (0.90, 0.85, 0.80)  # residual leakage is also counted at these similarities


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


def check_fractions(split_params: dict) -> dict[str, float]:
    fractions = {s: float(split_params[s]) for s in SPLITS}
    if any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise PipelineError(f"split: train/val/test fractions must be >= 0 and sum to 1, got {fractions}")
    return fractions


@dataclass
class GroupingSettings:
    """The `split` params that decide which images must share a split (defaults where params.yaml is silent)."""

    enabled: bool  # split.group_duplicates; false: a plain stratified random split (to measure leakage)
    threshold: float  # re-processed copies of one slice: always grouped
    neighbour_threshold: float  # neighbouring slices: grouped when their groups are mutual nearest neighbours
    mutual: int  # how many nearest groups count as "nearest" (0: no neighbour step)
    max_size: int  # no group grows beyond this (the guard against chaining)

    @classmethod
    def from_params(cls, split: dict) -> GroupingSettings:
        settings = cls(
            bool(split["group_duplicates"]),
            float(split.get("similarity_threshold", 0.95)),
            float(split.get("neighbour_threshold", 0.85)),
            int(split.get("mutual_neighbours", 2)),
            int(split.get("max_group_size", 100)),
        )
        if not 0 < settings.neighbour_threshold <= settings.threshold <= 1:
            raise PipelineError(
                "split: need 0 < neighbour_threshold <= similarity_threshold <= 1, got "
                f"{settings.neighbour_threshold} and {settings.threshold}"
            )
        if settings.mutual < 0 or settings.max_size < 2:
            raise PipelineError(
                "split: need mutual_neighbours >= 0 and max_group_size >= 2, "
                f"got {settings.mutual} and {settings.max_size}"
            )
        return settings


def split_dataset(params: dict, dataset_dir: Path, out_dir: Path, report_path: Path, people_dir: Path) -> dict:
    """The split stage: data/dataset -> out_dir/{train,val,test}/{class}/<id>.png + split_manifest.csv."""
    fractions = check_fractions(params["split"])
    settings = GroupingSettings.from_params(params["split"])
    manifest = read_table(dataset_dir / "manifest.csv")
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
    manifest["split"] = assign_splits(labels, kept_together.tolist(), fractions, params["seed"])
    for split in SPLITS:  # before training: a split without one class cannot validate or test anything
        require_both_classes(manifest.loc[manifest["split"] == split, "label"].astype(int), f"split: the {split} split")
    manifest["train_similarity"], manifest["train_match"] = nearest_training_image(descriptors, manifest["split"])
    manifest["split_order"] = manifest["split"].map(SPLITS.index)
    rows = manifest.sort_values(["split_order", "label", "id"], kind="stable", ignore_index=True)
    rows["file"] = rows["split"] + "/" + rows["class"] + "/" + rows["id"] + ".png"
    columns = ["id", "split", "file", "label", "class", "group", "duplicate_group", "train_similarity"]
    rows = rows[[*columns, "sha256", "source"]]
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for name in CLASSES:
                (tmp / split / name).mkdir(parents=True)
        for source, file in zip(
            dataset_dir / manifest.set_index("id").loc[rows["id"], "file"], rows["file"], strict=True
        ):
            shutil.copyfile(source, tmp / file)
        write_table(tmp / "split_manifest.csv", rows)

    report = split_report(rows, fractions) | {
        "grouping": grouping_report(settings, grouping, manifest),
        "residual_leakage": leakage_report(rows, settings.threshold),
    }
    write_json(report_path, report)
    ingest_report = json.loads((dataset_dir / "report.json").read_text())
    sheets = calibration_sheets(neighbours, grouping, settings, params["seed"])
    sheets["closest"] = closest_held_out_pairs(manifest)
    images = {"file": (dataset_dir / manifest["file"]).to_numpy(), "name": manifest["source"].to_numpy()}
    write_people_report(ingest_report, report, rows, out_dir, people_dir, params["seed"], sheets, images)
    return report


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


def leakage_levels(threshold: float) -> dict[str, float]:
    """Report key -> similarity: the grouping threshold, then the looser levels below it."""
    return {"above_threshold": threshold} | {f"above_{v:.2f}".replace(".", "_"): v for v in LOOSER if v < threshold}


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


def write_people_report(
    ingest: dict,
    split: dict,
    rows: pd.DataFrame,
    split_dir: Path,
    out_dir: Path,
    seed: int,
    sheets: dict[str, dict[str, pd.DataFrame]],
    images: dict[str, np.ndarray],
) -> None:
    """reports/data: data_report.md and its figures (figures/*.png), for a person to read."""
    from .data_figures import class_balance_figure, leakage_figure, pair_sheet, samples_figure

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
    (out_dir / "data_report.md").write_text(
        ingest_section(ingest) + split_section(split) + grouping_section(split) + leakage_section(split)
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

"""Split: a stratified, seeded train/val/test split that keeps every duplicate group in one split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .common import CLASSES, PipelineError, atomic_dir, read_table, write_json, write_table

SPLITS = ("train", "val", "test")


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


def split_dataset(params: dict, dataset_dir: Path, out_dir: Path, report_path: Path, people_dir: Path) -> dict:
    """The split stage: data/dataset -> out_dir/{train,val,test}/{class}/<id>.png + split_manifest.csv."""
    fractions = check_fractions(params["split"])
    manifest = read_table(dataset_dir / "manifest.csv")
    if manifest.empty:
        raise PipelineError(f"{dataset_dir / 'manifest.csv'}: no images to split")
    labels = manifest["label"].astype(int).tolist()
    groups = (manifest["group"] if params["split"]["group_duplicates"] else manifest["id"]).tolist()
    manifest["split"] = assign_splits(labels, groups, fractions, params["seed"])
    manifest["split_order"] = manifest["split"].map(SPLITS.index)
    rows = manifest.sort_values(["split_order", "label", "id"], kind="stable", ignore_index=True)
    rows["file"] = rows["split"] + "/" + rows["class"] + "/" + rows["id"] + ".png"
    rows = rows[["id", "split", "file", "label", "class", "group", "sha256", "source"]]
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for name in CLASSES:
                (tmp / split / name).mkdir(parents=True)
        for source, file in zip(
            dataset_dir / manifest.set_index("id").loc[rows["id"], "file"], rows["file"], strict=True
        ):
            shutil.copyfile(source, tmp / file)
        write_table(tmp / "split_manifest.csv", rows)

    report = split_report(rows, fractions)
    write_json(report_path, report)
    ingest_report = json.loads((dataset_dir / "report.json").read_text())
    write_people_report(ingest_report, report, rows, out_dir, people_dir, params["seed"])
    return report


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


def write_people_report(
    ingest: dict, split: dict, rows: pd.DataFrame, split_dir: Path, out_dir: Path, seed: int
) -> None:
    """reports/data: data_report.md, class_balance.png and samples.png, for a person to read."""
    from .data_figures import class_balance_figure, samples_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    class_balance_figure({s: split[s] for s in SPLITS}, out_dir / "class_balance.png")
    rng = np.random.default_rng(seed)
    samples = {}
    for name in CLASSES:
        files = [split_dir / f for f in rows.loc[rows["class"] == name, "file"]]
        samples[name] = [files[i] for i in sorted(rng.choice(len(files), min(6, len(files)), replace=False))]
    samples_figure(samples, out_dir / "samples.png")
    reasons = "".join(f"| {k} | {v} |\n" for k, v in ingest["rejected_by_reason"].items()) or "| (none) | 0 |\n"
    table = "".join(
        f"| {s} | {split[s]['non_tumor']} | {split[s]['tumor']} | {split[s]['fraction']:.1%} |\n" for s in SPLITS
    )
    rejected = f"{ingest['rejected']} ({ingest['rejected_fraction']:.1%})"
    (out_dir / "data_report.md").write_text(f"""# Data report

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
Duplicate groups (exact and near duplicates, by perceptual hash): {ingest["duplicate_groups"]} groups holding
{ingest["files_in_duplicate_groups"]} files, the largest {ingest["largest_duplicate_group"]} files.
Groups whose members disagree on the label: {ingest["label_conflict_groups"]} (set aside as `label_conflict`).
Each group stays in one split: groups found in several splits = {split["groups_in_several_splits"]}.

| split | non_tumor | tumor | share |
|---|---|---|---|
{table}
![class balance](class_balance.png)

![samples](samples.png)
""")

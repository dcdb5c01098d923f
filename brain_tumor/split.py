"""Split: a stratified, seeded train/val/test split that keeps every duplicate group in one split."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from .common import CLASSES, PipelineError, atomic_dir, write_json
from .ingest import read_csv, write_csv

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


def run(params: dict, dataset_dir: Path, out_dir: Path, report_path: Path) -> dict:
    """The split stage: data/dataset -> out_dir/{train,val,test}/{class}/<id>.png + split_manifest.csv."""
    fractions = check_fractions(params["split"])
    manifest = read_csv(dataset_dir / "manifest.csv")
    if not manifest:
        raise PipelineError(f"{dataset_dir / 'manifest.csv'}: no images to split")
    labels = [int(m["label"]) for m in manifest]
    groups = [m["group"] if params["split"]["group_duplicates"] else m["id"] for m in manifest]
    splits = assign_splits(labels, groups, fractions, params["seed"])

    rows = []
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for name in CLASSES:
                (tmp / split / name).mkdir(parents=True)
        for m, split in sorted(zip(manifest, splits), key=lambda t: (SPLITS.index(t[1]), t[0]["label"], t[0]["id"])):
            file = f"{split}/{m['class']}/{m['id']}.png"
            shutil.copyfile(dataset_dir / m["file"], tmp / file)
            rows.append({"id": m["id"], "split": split, "file": file, "label": m["label"], "class": m["class"],
                         "group": m["group"], "sha256": m["sha256"], "source": m["source"]})
        write_csv(tmp / "split_manifest.csv", rows)

    report = split_report(rows, fractions)
    write_json(report_path, report)
    return report


def split_report(rows: list[dict], fractions: dict[str, float]) -> dict:
    counts = Counter((r["split"], r["class"]) for r in rows)
    groups_per = Counter()
    for g in {(r["group"], r["split"]) for r in rows}:
        groups_per[g[0]] += 1
    n = len(rows)
    return {
        "images": n,
        **{s: {c: counts[s, c] for c in CLASSES} | {"fraction": round(sum(counts[s, c] for c in CLASSES) / n, 4)} for s in SPLITS},
        "groups_in_several_splits": sum(1 for k in groups_per.values() if k > 1),
        "target": fractions,
    }

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_params, save, scan

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.params import typed
from brain_tumor.data.shortcuts import STATISTICS, shortcut_check, warning_line
from brain_tumor.data.split import SPLITS, GroupingSettings, assign_splits


def test_grouped_split_never_divides_a_group_and_meets_fractions():
    rng = np.random.default_rng(0)
    n = 1500
    labels = list((rng.random(n) < 0.35).astype(int))
    groups = [f"g{i // 3}" if i < 600 else f"s{i}" for i in range(n)]  # 200 groups of 3, then singletons
    for i in range(0, 600, 3):
        labels[i + 1] = labels[i + 2] = labels[i]
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    splits = assign_splits(labels, groups, fractions, seed=42)
    assert splits == assign_splits(labels, groups, fractions, seed=42)
    assert splits != assign_splits(labels, groups, fractions, seed=7)
    split_of_group: dict[str, set[str]] = {}
    for g, s in zip(groups, splits):
        split_of_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in split_of_group.values())
    counts = Counter(splits)
    for s in SPLITS:
        assert abs(counts[s] / n - fractions[s]) <= 0.01
        for c in (0, 1):  # stratified
            in_class = [sp for sp, lab in zip(splits, labels) if lab == c]
            assert abs(in_class.count(s) / len(in_class) - fractions[s]) <= 0.01


def test_grouping_settings_are_the_split_params_and_the_schema_refuses_inconsistent_ones():
    """Ranges and the cross-key rules live in the schema alone: the split reads what it was given."""
    params = make_tiny_params()
    params["split"] |= {"similarity_threshold": 0.9, "neighbour_threshold": 0.8, "mutual_neighbours": 3}
    settings = GroupingSettings.from_params(typed(params).split)
    assert (settings.enabled, settings.threshold, settings.neighbour_threshold, settings.mutual, settings.max_size) == (
        True, 0.9, 0.8, 3, 100,
    )  # fmt: skip
    for change, message in (
        ({"train": 0.7, "val": 0.2, "test": 0.2}, "params.yaml: split: train + val + test = 1.1 (expected a sum of 1)"),
        ({"neighbour_threshold": 0.97}, "params.yaml: split: neighbour_threshold is above similarity_threshold"),
        ({"max_group_size": 1}, "params.yaml: split.max_group_size: 1 is not allowed (expected an integer >= 2)"),
    ):
        bad = make_tiny_params()
        bad["split"] |= change
        with pytest.raises(PipelineError) as err:
            typed(bad)
        assert str(err.value).startswith(message)


# ---------------------------------------------------------------- the shortcut check


def test_shortcut_check_warns_when_a_statistic_predicts_the_label_and_not_when_none_does():
    rng = np.random.default_rng(0)
    n = 600
    labels = (rng.random(n) < 0.3).astype(int)
    splits = pd.Series(rng.choice(["train", "val", "test"], n, p=[0.7, 0.1, 0.2]))
    noise = pd.DataFrame(rng.normal(size=(n, len(STATISTICS))), columns=list(STATISTICS))
    quiet = shortcut_check(noise, labels, splits, seed=0)
    majority = 1 - labels[splits == "test"].mean()
    assert quiet["majority_rate"] == round(max(majority, 1 - majority), 4) and not quiet["warning"]
    assert warning_line(quiet) is None
    leaking = noise.assign(colour=labels + rng.normal(scale=0.3, size=n))  # the tumour scans came in colour
    loud = shortcut_check(leaking, labels, splits, seed=0)
    assert loud["warning"] and loud["gradient_boosting_accuracy"] > 0.9 and loud["logistic_regression_accuracy"] > 0.9
    assert loud == shortcut_check(leaking, labels, splits, seed=0)  # the same bytes on a rerun
    assert "predict the label with test accuracy" in warning_line(loud)


def class_scans(root, per_class: int, leak: bool) -> None:
    """yes/ and no/ scans of the same random textures; with `leak`, tumour scans are brighter colour JPEGs and
    no-tumour scans greyscale PNGs, as when the two classes come from different collections."""
    for i in range(per_class):
        save(root / "no" / f"n{i}.png", scan(2 * i + 1, 48), mode="L" if leak else None)
        rgb = scan(2 * i, 48)
        if leak:
            tinted = np.clip(rgb.astype(int) * [1.0, 0.8, 0.6] + 40, 0, 255).astype(np.uint8)
            save(root / "yes" / f"y{i}.jpg", tinted, fmt="JPEG")
        else:
            save(root / "yes" / f"y{i}.png", rgb)


@pytest.mark.slow
@pytest.mark.parametrize("leak", [True, False], ids=["collections-differ", "same-processing"])
def test_the_split_stage_reports_the_shortcut_check(ws, leak):
    class_scans(ws.source("folders"), 40, leak)
    assert ws.run("ingest").returncode == 0
    result = ws.run("split")
    assert result.returncode == 0, result.stderr[-2000:]
    check = json.loads((ws.root / "metrics" / "split.json").read_text())["shortcut_check"]
    assert check["test_images"] == 16 and check["warning"] is leak
    assert ("warning: image statistics with no anatomy" in result.stderr) is leak
    report = (ws.root / "reports" / "data" / "data_report.md").read_text()
    assert "## Shortcut check" in report and f"| {check['gradient_boosting_accuracy']:.4f} |" in report
    assert (ws.root / "reports" / "data" / "figures" / "shortcut_statistics.png").stat().st_size > 10_000

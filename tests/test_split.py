from collections import Counter

import numpy as np
import pytest

from brain_tumor.errors import PipelineError
from brain_tumor.split import SPLITS, GroupingSettings, assign_splits, check_fractions


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


def test_fractions_must_sum_to_one():
    with pytest.raises(PipelineError, match="sum to 1"):
        check_fractions({"train": 0.7, "val": 0.2, "test": 0.2})


def test_grouping_settings_have_defaults_and_refuse_inconsistent_values():
    settings = GroupingSettings.from_params({"group_duplicates": True})
    assert (settings.threshold, settings.neighbour_threshold, settings.mutual, settings.max_size) == (
        0.95,
        0.85,
        2,
        100,
    )
    with pytest.raises(PipelineError, match="neighbour_threshold <= similarity_threshold"):
        GroupingSettings.from_params({"group_duplicates": True, "neighbour_threshold": 0.97})
    with pytest.raises(PipelineError, match="max_group_size >= 2"):
        GroupingSettings.from_params({"group_duplicates": True, "max_group_size": 1})

import itertools

import numpy as np
import pytest

from brain_tumor.evaluate import binary_metrics, bootstrap_ci, choose_threshold, json_number, roc_auc


def test_metrics_match_hand_counts():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])  # tp 3, fn 1, fp 1, tn 5
    m = binary_metrics(y, pred, pred.astype(float))
    assert m["accuracy"] == 0.8
    assert m["precision"] == 0.75 and m["recall"] == 0.75
    assert np.isclose(m["specificity"], 5 / 6) and np.isclose(m["f1"], 0.75)


def test_auc_equals_pairwise_probability_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.random(60), 1)  # many ties
    pairs = [(p, n) for p, n in itertools.product(score[y == 1], score[y == 0])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert np.isclose(roc_auc(y, score), expected)
    assert roc_auc(y, np.where(y == 1, 1.0, 0.0)) == 1.0


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_data():
    rng = np.random.default_rng(1)

    def width(n):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < 0.8, y, 1 - y)
        ci = bootstrap_ci(y, pred, pred.astype(float), 300, seed=0)
        point = binary_metrics(y, pred, pred.astype(float))["accuracy"]
        assert ci["accuracy"][0] <= point <= ci["accuracy"][1]
        return ci["accuracy"][1] - ci["accuracy"][0]

    assert width(2000) < width(50)


def test_one_class_is_handled_on_purpose():
    """A test split with one class: AUC is undefined (nan, then null in JSON), the rest is still computed."""
    y = np.zeros(8, dtype=int)
    pred = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    m = binary_metrics(y, pred, np.linspace(0, 1, 8))
    assert np.isnan(m["roc_auc"])
    assert m["accuracy"] == 0.75 and m["specificity"] == 0.75 and m["precision"] == 0.0 and m["recall"] == 0.0
    ci = bootstrap_ci(y, pred, np.linspace(0, 1, 8), 20, seed=0)
    assert all(np.isnan(v) for v in ci["roc_auc"]) and ci["accuracy"][0] <= 0.75 <= ci["accuracy"][1]
    assert json_number(m["roc_auc"]) is None


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_operating_point_meets_the_target_sensitivity_with_the_highest_threshold(target):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    point = choose_threshold(y, p, target)
    sensitivity = ((p >= point["threshold"]) & (y == 1)).sum() / (y == 1).sum()
    assert sensitivity >= target and np.isclose(sensitivity, point["validation_sensitivity"], atol=1e-4)
    above = p[p > point["threshold"]].min()  # the next higher threshold misses the target
    assert ((p >= above) & (y == 1)).sum() / (y == 1).sum() < target
    specificity = ((p < point["threshold"]) & (y == 0)).sum() / (y == 0).sum()
    assert np.isclose(specificity, point["validation_specificity"], atol=1e-4)

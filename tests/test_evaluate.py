import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.intervals import wilson_interval
from brain_tumor.core.plotting import save_figure
from brain_tumor.evaluation import evaluate as ev
from brain_tumor.evaluation import figures
from brain_tumor.evaluation.calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    logit,
    nll,
    reliability_table,
)
from brain_tumor.evaluation.evaluate import choose_threshold
from brain_tumor.evaluation.figures import reliability_figure
from brain_tumor.evaluation.metrics import binary_metrics, bootstrap_ci, json_number, resampled_roc_auc, roc_auc


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
def test_operating_point_keeps_a_margin_on_the_target_sensitivity_and_stays_at_or_below_the_cap(target):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    point = choose_threshold(y, p, target)
    tumours = p[y == 1]

    def lower_bound(t: float) -> float:
        return float(wilson_interval((tumours >= t).sum(), len(tumours))[0])

    assert point["threshold"] <= ev.OPERATING_POINT_CAP
    sensitivity = (tumours >= point["threshold"]).mean()
    assert np.isclose(sensitivity, point["validation_sensitivity"], atol=1e-4)
    assert np.isclose(lower_bound(point["threshold"]), point["validation_sensitivity_lower"], atol=1e-4)
    fallback = point["rule"].startswith("too few")  # target 1.0: no lower bound ever reaches it
    reached = (lambda t: (tumours >= t).mean()) if fallback else lower_bound
    if point["threshold"] < ev.OPERATING_POINT_CAP:
        assert reached(point["threshold"]) >= target  # the margin holds ...
        above = p[p > point["threshold"]].min()
        assert reached(above) < target  # ... and the next higher threshold would lose it
    assert fallback == (target == 1.0)
    specificity = ((p < point["threshold"]) & (y == 0)).sum() / (y == 0).sum()
    assert np.isclose(specificity, point["validation_specificity"], atol=1e-4)


def test_too_few_validation_tumours_for_the_margin_fall_back_to_the_point_estimate():
    y = np.array([1] * 14 + [0] * 18)  # 14 of 14 found gives a Wilson lower bound of 0.78 only
    p = np.concatenate([np.linspace(0.3, 0.9, 14), np.linspace(0.0, 0.2, 18)])
    point = choose_threshold(y, p, 0.95)
    assert point["threshold"] == pytest.approx(0.3) and point["validation_specificity"] == 1.0
    assert point["rule"].startswith("too few validation tumours")


def test_a_shift_of_the_scores_costs_less_sensitivity_at_the_robust_point():
    """The point estimate's threshold sits where the sensitivity curve crosses the target; scores shifted down
    by 0.05 (another scanner) drop below it at once, while the margin of the robust point absorbs the shift."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 500)
    p = np.clip(rng.normal(np.where(y == 1, 0.8, 0.25), 0.12), 0, 1)
    robust = choose_threshold(y, p, 0.95)["threshold"]
    naive = float(np.sort(p[y == 1])[::-1][int(np.ceil(0.95 * 500)) - 1])  # the point estimate reaching 0.95
    shifted = p[y == 1] - 0.05
    assert (shifted >= robust).mean() >= 0.95 > (shifted >= naive).mean()


def test_binary_metrics_agree_with_sklearn_including_zero_denominators():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 50)
    for pred in (rng.integers(0, 2, 50), np.zeros(50, dtype=int)):  # all negative: precision and f1 are 0
        m = binary_metrics(y, pred, rng.random(50))
        p, r, f1, _ = precision_recall_fscore_support(y, pred, labels=[1], average=None, zero_division=0.0)
        assert np.allclose([m["precision"], m["recall"], m["f1"]], [p[0], r[0], f1[0]], atol=1e-12)
        assert m["accuracy"] == accuracy_score(y, pred)


def test_resampled_auc_equals_sklearn_on_each_resample():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40)
    score = np.round(rng.random(40), 1)  # ties within and across classes
    idx = rng.integers(0, 40, (6, 40))
    idx[0] = np.flatnonzero(y == 1)[0]  # a resample of one tumour image, repeated: one class, AUC undefined
    auc = resampled_roc_auc(y, score, idx)
    assert np.isnan(auc[0])
    for row, value in zip(idx[1:], auc[1:]):
        assert abs(value - roc_auc_score(y[row], score[row])) < 1e-9
    assert abs(roc_auc(y, score) - roc_auc_score(y, score)) < 1e-9  # the point estimate: the same statistic
    assert np.isnan(roc_auc(np.ones(5, dtype=int), score[:5]))


def test_bootstrap_is_deterministic_and_every_interval_holds_its_estimate():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    score = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    pred = (score >= 0.5).astype(int)
    ci = bootstrap_ci(y, pred, score, 400, seed=3)
    assert ci == bootstrap_ci(y, pred, score, 400, seed=3) != bootstrap_ci(y, pred, score, 400, seed=4)
    for metric, value in binary_metrics(y, pred, score).items():
        assert ci[metric][0] <= value <= ci[metric][1], metric


def test_wilson_interval_matches_hand_values():
    low, high = wilson_interval(np.array([8, 0, 5]), np.array([10, 5, 5]))
    # 8/10: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10), z = 1.96
    assert np.allclose(low, [0.4902, 0.0, 0.5655], atol=1e-4) and np.allclose(high, [0.9433, 0.4345, 1.0], atol=1e-4)


def test_subgroups_match_hand_counts():
    rows = pd.DataFrame(
        {
            "id": [f"i{k}" for k in range(8)],
            "subtype": ["glioma"] * 3 + ["meningioma"] * 2 + ["notumor"] * 3,
            "source_folder": ["Training", "Testing"] * 4,
            "acquisition": ["T1-like"] * 5 + ["T2-like"] * 3,  # all tumours T1-like: the kind predicts the class
        }
    )
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.4, 0.2, 0.6, 0.45, 0.1, 0.35, 0.7])
    outcome = ev.TestPredictions(labels, p, 0.3, np.zeros((8, 1, 1, 3), np.uint8))
    table = ev.subgroup_rows("m", rows, outcome).set_index(["grouping", "threshold_name", "group"])
    groupings = {"subtype", "source_folder", "acquisition", "acquisition_class"}
    assert set(table.index.get_level_values("grouping")) == groupings
    # at 0.5: glioma 1 of 3 right (sensitivity), meningioma 1 of 2, notumor 2 of 3 (specificity)
    # at 0.3: glioma 2 of 3, meningioma 2 of 2, notumor 1 of 3 (0.35 and 0.7 are false alarms)
    expected = {
        ("subtype", "0.5", "glioma"): (3, 2),
        ("subtype", "0.5", "meningioma"): (2, 1),
        ("subtype", "0.5", "notumor"): (3, 1),
        ("subtype", "operating_point", "glioma"): (3, 1),
        ("subtype", "operating_point", "meningioma"): (2, 0),
        ("subtype", "operating_point", "notumor"): (3, 2),
        ("source_folder", "0.5", "Training"): (4, 2),  # rows 0 2 4 6: wrong at 2 (0.2) and 4 (0.45)
        ("source_folder", "0.5", "Testing"): (4, 2),  # rows 1 3 5 7: wrong at 1 (0.4) and 7 (0.7)
        ("acquisition", "0.5", "T1-like"): (5, 3),  # the tumours: sensitivity 2 of 5
        ("acquisition", "0.5", "T2-like"): (3, 1),
        ("acquisition_class", "0.5", "T1-like tumor"): (5, 3),  # the kind's sensitivity
        ("acquisition_class", "0.5", "T2-like non_tumor"): (3, 1),  # the kind's specificity
        ("acquisition_class", "operating_point", "T1-like tumor"): (5, 1),
    }
    for key, (n, errors) in expected.items():
        row = table.loc[key]
        assert (row["n"], row["errors"]) == (n, errors), key
        assert row["accuracy"] == round(1 - errors / n, 4)
        low, high = wilson_interval(n - errors, n)
        assert (row["ci_lower"], row["ci_upper"]) == (round(float(low), 4), round(float(high), 4))


def test_ece_and_nll_by_hand():
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9])  # bin of 0.1: observed 0.5; bin of 0.9: observed 1.0
    assert np.isclose(expected_calibration_error(y, p), 0.5 * 0.4 + 0.5 * 0.1)
    table = reliability_table(y, p)
    assert table["bin"].tolist() == [1, 13] and table["count"].tolist() == [2, 2]
    assert np.isclose(nll(y, logit(p)), -np.mean(np.log([0.9, 0.1, 0.9, 0.9])))
    assert expected_calibration_error(np.array([1]), np.array([1.0])) == 0.0  # 1.0 falls in the last bin


def test_temperature_by_hand():
    """Logits ±2, each right 3 times in 4: the best sigmoid(2 / T) is 0.75, so T = 2 / ln 3."""
    z = np.array([2.0, 2, 2, 2, -2, -2, -2, -2])
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    assert np.isclose(fit_temperature(y, z), 2 / np.log(3), rtol=1e-4)


def test_calibrated_probabilities_keep_t_near_one_and_overconfident_ones_get_t_above_one():
    rng = np.random.default_rng(7)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-z))
    half = slice(0, 10000), slice(10000, None)
    calibrated = calibration_report(y[half[0]], p[half[0]], y[half[1]], p[half[1]])
    assert calibrated["ece"] < 0.02 and abs(calibrated["temperature"] - 1) < 0.05
    over = 1 / (1 + np.exp(-3 * z))  # logits three times too large
    report = calibration_report(y[half[0]], over[half[0]], y[half[1]], over[half[1]])
    assert abs(report["temperature"] - 3) < 0.2
    assert report["nll_temperature_scaled"] < report["nll"] and report["ece_temperature_scaled"] < report["ece"]


def test_reliability_diagram_draws_the_reliability_table(tmp_path, monkeypatch):
    """What is drawn, not only that a file appears: the model's points are the table's bins, each labelled with
    its count, the title gives the ECE; then the PNG is written."""
    drawn = []

    def keep_and_save(fig, path) -> None:
        drawn.append(fig)
        save_figure(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep_and_save)
    rng = np.random.default_rng(8)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    reliability_figure(y, p, "scratch", tmp_path / "reliability_scratch.png")
    (ax,) = drawn[0].axes
    diagonal, points = ax.get_lines()
    table = reliability_table(y, p)
    assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == [0, 1]
    assert np.allclose(points.get_xdata(), table["mean_predicted"]) and np.allclose(
        points.get_ydata(), table["observed"]
    )
    assert [t.get_text() for t in ax.texts] == [str(n) for n in table["count"]] and sum(table["count"]) == 200
    assert ax.get_title().startswith(f"scratch, test: ECE {expected_calibration_error(y, p):.3f} (")
    assert Image.open(tmp_path / "reliability_scratch.png").format == "PNG"


def test_a_manifest_without_subgroup_columns_is_one_line(tmp_path):
    ids = [f"{k:020x}" for k in range(6)]
    rows = pd.DataFrame(
        {
            "id": ids,
            "split": ["train", "train", "val", "val", "test", "test"],
            "label": ["0", "1"] * 3,
            "class": ["non_tumor", "tumor"] * 3,
            "sha256": ["0" * 64] * 6,
        }
    )
    rows.insert(2, "file", rows["split"] + "/" + rows["class"] + "/" + rows["id"] + ".png")
    rows.to_csv(tmp_path / "split_manifest.csv", index=False)
    missing = r"no column subtype, source_folder, acquisition, source, train_similarity, group"
    with pytest.raises(PipelineError, match=missing):
        ev.read_report_manifest(tmp_path)


def test_external_metrics_are_null_where_a_class_is_missing():
    from brain_tumor.evaluation.external import unseen_metrics

    tumours = np.ones(20, dtype=int)
    score = np.linspace(0.05, 0.95, 20)
    row = unseen_metrics(tumours, score, 0.5, 200, seed=0)
    assert row["recall"] == 0.5 and row["accuracy"] == 0.5  # sensitivity: 10 of 20 at or above 0.5
    assert row["recall_ci_lower"] <= 0.5 <= row["recall_ci_upper"]
    assert row["specificity"] is None and row["roc_auc"] is None and row["specificity_ci_lower"] is None
    both = unseen_metrics(np.array([0, 1] * 10), score, 0.5, 200, seed=0)
    assert None not in (both["specificity"], both["roc_auc"])
    assert all(v is None for v in unseen_metrics(np.zeros(0, int), np.zeros(0), 0.5, 200, seed=0).values())

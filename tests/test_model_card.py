"""The model card is written from the evaluate stage's own results: every number it prints is in a metric file."""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import make_tiny_params, model_record

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.params import typed
from brain_tumor.evaluation import evaluate as ev
from brain_tumor.evaluation.model_card import ModelFile, training_params

MODELS = ("scratch", "transfer")
CLASS_NAMES = ("non_tumor", "tumor")
# each held-out image's closest training image: at >= 0.95 / 0.90 / 0.85 / 0.80 (the split's threshold and the
# data report's looser levels), val has 2 / 5 / 9 / 9, test 1 / 3 / 6 / 6
VAL_SIMILARITY = [0.96] * 2 + [0.91] * 3 + [0.86] * 4 + [0.5] * 11
TEST_SIMILARITY = [0.99] + [0.93] * 2 + [0.85] * 3 + [0.2] * 34


def manifest(rng: np.random.Generator) -> pd.DataFrame:
    """A split manifest as read from disk (strings): 40 train, 20 val, 40 test images; two source folders."""
    split = ["train"] * 40 + ["val"] * 20 + ["test"] * 40
    label = rng.integers(0, 2, len(split))
    subtype = np.where(label == 1, rng.choice(["glioma", "pituitary"], len(split)), "notumor")
    similarity = [""] * 40 + [str(s) for s in VAL_SIMILARITY + TEST_SIMILARITY]
    return pd.DataFrame(
        {
            "id": [f"{k:020x}" for k in range(len(split))],
            "split": split,
            "label": label.astype(str),
            "class": np.array(CLASS_NAMES)[label],
            "group": [f"s{k:06d}" for k in range(len(split))],
            "train_similarity": similarity,
            "source": [f"{f}/{t}/{k}.jpg" for k, (f, t) in enumerate(zip(["Training", "Testing"] * 50, subtype))],
            "subtype": subtype,
            "source_folder": ["Training", "Testing"] * 50,
            "acquisition": ["T1-like"] * 80 + ["T2-like"] * 20,
        }
    )


def model_run(tmp_path, name: str, rows: pd.DataFrame, rng: np.random.Generator, noise: float) -> ev.ModelRun:
    path = tmp_path / "models" / f"{name}.pt"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(name.encode() * 100)

    def p_tumor(split: str) -> tuple[np.ndarray, np.ndarray]:
        y = rows.loc[rows["split"] == split, "label"].astype(int).to_numpy()
        return y, np.clip(0.3 + 0.4 * y + rng.normal(0, noise, len(y)), 0.001, 0.999)

    (y_val, p_val), (y_test, p_test) = p_tumor("val"), p_tumor("test")
    point = ev.choose_threshold(y_val, p_val, 0.95)
    meta = model_record(name, 32) | {"epoch": 3, "val_loss": 0.41, "tta_flip": name == "transfer"}
    meta["split_manifest_sha256"] = "ab" * 32
    test = ev.TestPredictions(y_test, p_test, point["threshold"], np.zeros((len(y_test), 1, 1, 3), np.uint8))
    logged = {"seed": 42, "epochs": 5, "lr": 0.0001}
    return ev.ModelRun(ModelFile(path, meta, logged, point), y_val, p_val, test)


@pytest.fixture
def written(tmp_path):
    """write_reports on synthetic predictions of two models: (card text, metrics folder, runs, returned dicts)."""
    rng = np.random.default_rng(0)
    rows = manifest(rng)
    runs = {name: model_run(tmp_path, name, rows, rng, noise) for name, noise in zip(MODELS, (0.3, 0.15))}
    params = make_tiny_params()
    params["evaluate"]["bootstrap_samples"] = 200
    card = tmp_path / "reports" / "model_card.md"
    metrics = ev.write_reports(typed(params), rows, runs, tmp_path / "metrics", tmp_path / "reports" / "evaluate", card)
    return card.read_text(), tmp_path / "metrics", runs, metrics


def table_after(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after `heading` (header row first, separator dropped)."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]


def value(cell: str) -> float | None:
    return None if cell == "n/a" else float(cell)


def interval(cell: str) -> tuple[float | None, float | None]:
    low, high = cell.strip("[]").split(", ")
    return value(low), value(high)


@pytest.mark.parametrize(
    ("folder", "heading"), [("test", "### At threshold 0.5"), ("test_operating_point", "### At the operating point")]
)
def test_card_metrics_equal_the_metric_files(written, folder, heading):
    text, metrics_dir, _, metrics = written
    header, *rows = table_after(text, heading)
    printed = {re.search(r"`(\w+)`", row[0])[1]: row for row in rows}
    assert {"accuracy", "recall", "specificity", "roc_auc"} <= set(printed)
    for metric, row in printed.items():
        on_disk = json.loads((metrics_dir / folder / f"{metric}.json").read_text())
        assert on_disk == metrics[folder][metric]
        for model in MODELS:
            cell = row[header.index(model)]
            assert value(cell) == on_disk[model], (metric, model)
            low, high = interval(row[header.index(f"{model} 95% CI")])
            assert (low, high) == (on_disk[f"{model}_ci_lower"], on_disk[f"{model}_ci_upper"])
            assert low <= value(cell) <= high


def test_card_subgroups_and_calibration_equal_their_files(written):
    text, metrics_dir, _, _ = written
    _, *rows = table_after(text, "## Subgroups")
    csv = pd.read_csv(metrics_dir / "evaluate" / "subgroups.csv", keep_default_na=False)
    assert (
        len(rows) == len(csv) == 2 * 2 * (3 + 2 + 2 + 4)
    )  # models x thresholds x (subtypes, folders, kinds, kinds x classes)
    for row, expected in zip(rows, csv.itertuples()):
        assert row[:4] == [expected.model, expected.grouping, expected.group, expected.threshold_name]
        assert [int(row[4]), int(row[5]), value(row[6])] == [expected.n, expected.errors, expected.accuracy]
        assert interval(row[7]) == (expected.ci_lower, expected.ci_upper)

    _, *rows = table_after(text, "## Calibration")
    calibration = json.loads((metrics_dir / "evaluate" / "calibration.json").read_text())
    keys = ("ece", "ece_temperature_scaled", "nll", "nll_temperature_scaled", "temperature")
    assert {row[0]: dict(zip(keys, map(value, row[1:]))) for row in rows} == calibration
    ece = json.loads((metrics_dir / "test" / "ece.json").read_text())
    assert ece == {model: calibration[model]["ece"] for model in MODELS}


def test_card_provenance_data_and_failure_modes(written):
    text, _, runs, _ = written
    assert "Not a medical device, not for diagnosis" in text and "reported, not applied" in text
    header, *rows = table_after(text, "## Models and provenance")
    facts = {row[0]: row[1:] for row in rows}
    for i, (name, run) in enumerate(runs.items()):
        content = run.file.path.read_bytes()
        assert facts["md5 (as in dvc.lock)"][i] == f"`{hashlib.md5(content).hexdigest()}`"
        assert facts["sha256"][i] == f"`{hashlib.sha256(content).hexdigest()}`"
        assert facts["epochs run / best epoch"][i] == "5 / 3" and header[i + 1] == name
        assert facts["flip averaging (TTA), as validated and served"][i] == ("on" if name == "transfer" else "off")
    _, *counts = table_after(text, "## Data and lineage")
    assert [row[0] for row in counts] == ["train", "val", "test"] and [row[-1] for row in counts] == ["40", "20", "40"]
    header, *leakage = table_after(text, "Residual leakage")
    assert header == ["split", "images", ">= 0.95", ">= 0.90", ">= 0.85", ">= 0.80"]
    assert leakage == [["val", "20", "2", "5", "9", "9"], ["test", "40", "1", "3", "6", "6"]]

    _, *mistakes = table_after(text, "### transfer (threshold")
    o = runs["transfer"].test
    wrong = np.flatnonzero(o.predicted_at_threshold != o.labels)
    assert 0 < len(mistakes) == min(8, len(wrong))
    p = [value(row[3]) for row in mistakes]
    assert sorted(p, key=lambda v: -abs(v - o.threshold)) == p  # most confident first
    assert "(evaluate/gallery_transfer.png)" in text and "(evaluate/reliability_scratch.png)" in text


def test_card_is_the_same_bytes_on_a_rerun(written, tmp_path):
    text, metrics_dir, runs, _ = written
    params = make_tiny_params()
    params["evaluate"]["bootstrap_samples"] = 200
    card = tmp_path / "reports" / "model_card.md"
    rows = manifest(np.random.default_rng(0))
    ev.write_reports(typed(params), rows, runs, metrics_dir, card.parent / "evaluate", card)
    assert card.read_text() == text


def test_a_missing_training_log_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match=r"params.yaml: no such file; run the model's training stage first"):
        training_params(tmp_path / "metrics" / "train_scratch" / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"epochs": 5}))
    assert training_params(tmp_path / "params.yaml") == {"epochs": 5}

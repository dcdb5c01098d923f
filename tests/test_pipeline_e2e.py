"""The real `dvc` CLI on a temporary repository: what a user does, on tiny synthetic data."""

import json
import shutil

import pytest
import yaml
from conftest import sh

pytestmark = pytest.mark.e2e
MODELS = ("scratch", "transfer")
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def test_repro_metrics_plots_noop_and_experiments(project_repo, tmp_path):
    repo = project_repo
    first = sh(["dvc", "repro"], repo)
    for stage in ("ingest", "split", "train-scratch", "train-transfer", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout

    shown = json.loads(sh(["dvc", "metrics", "show", "--json"], repo).stdout)
    test = shown[""]["data"]["metrics/test.json"]["data"]
    for model in MODELS:
        assert set(METRICS) <= set(test[model])
        assert all(0.0 <= test[model][m] <= 1.0 for m in METRICS)
    assert shown[""]["data"]["metrics/ingest.json"]["data"]["files_seen"] == 40

    sh(["dvc", "plots", "show", "-o", "plots_html"], repo)
    html = (repo / "plots_html" / "index.html").read_text()
    assert "Confusion matrix, scratch" in html and "Confusion matrix, transfer" in html and "Loss per epoch" in html
    for png in ("confusion_scratch", "confusion_transfer", "roc", "test_predictions"):
        assert (repo / "reports" / "evaluate" / f"{png}.png").stat().st_size > 1000
    assert (repo / "reports" / "data" / "data_report.md").exists()

    second = sh(["dvc", "repro"], repo)
    assert "Running stage" not in second.stdout

    # the same commit in a fresh clone gives the same metrics
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    shutil.rmtree(clone / "metrics")
    sh(["dvc", "repro"], clone)
    assert json.loads((clone / "metrics" / "test.json").read_text()) == test

    sh(["dvc", "exp", "run", "-S", "train_transfer.lr=0.01"], repo)
    table = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    baseline = next(row for row in table if row["rev"] != "workspace")
    experiments = [rev for exp in baseline["experiments"] for rev in exp["revs"]]

    def lr(rev):
        return rev["data"]["params"]["params.yaml"]["data"]["train_transfer"]["lr"]

    assert lr(baseline) == 0.0001 and [lr(e) for e in experiments] == [0.01]
    assert "transfer" in experiments[0]["data"]["metrics"]["metrics/test.json"]["data"]
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert "metrics/test.json" in diff and any(k.startswith("transfer.") for k in diff["metrics/test.json"])
    assert not any(k.startswith("scratch.") for k in diff["metrics/test.json"])  # scratch was not retrained


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda repo: "data/raw/nope", "does not exist"),
        (lambda repo: (repo / "data" / "raw" / "empty").mkdir() or "data/raw/empty", "no files found"),
        (
            lambda repo: (
                ((repo / "data/raw/t").mkdir(), (repo / "data/raw/t/labels.csv").write_text("Image,Label\nImage1,1\n"))
                and "data/raw/t"
            ),
            "no 'Class' column",
        ),
        (
            lambda repo: (
                ((repo / "data/raw/f/misc").mkdir(parents=True), (repo / "data/raw/f/misc/a.png").write_bytes(b"x"))
                and "data/raw/f"
            ),
            "no folder name is in data.tumor_folders",
        ),
    ],
)
def test_bad_source_fails_in_one_line_without_outputs(project_repo, setup, message):
    repo = project_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = setup(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = sh(["python", "stages/ingest.py"], repo, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (repo / "data" / "dataset").exists() and not (repo / "metrics" / "ingest.json").exists()
    assert sh(["dvc", "repro"], repo, check=False).returncode != 0
    assert not (repo / "data" / "dataset").exists()

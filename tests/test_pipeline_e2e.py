"""The real `dvc` CLI on a temporary repository: what a user does, on tiny synthetic data."""

import json
import os
import subprocess
import time

import pytest
import yaml
from conftest import STAGE_NAMES, executed_stages, sh, venv_env

pytestmark = pytest.mark.e2e
MODELS = ("scratch", "transfer")
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")


def metrics_of(shown: dict, rev: str = "") -> dict:
    """`dvc metrics show --json` flattened to {path: values}."""
    return {path: entry["data"] for path, entry in shown[rev]["data"].items()}


def wide(cmd, repo, columns=160):
    """Run a table command in a `columns`-wide terminal; return (text, widest line)."""
    result = sh(["env", f"COLUMNS={columns}", *cmd], repo)
    return result.stdout, max(len(line.rstrip()) for line in result.stdout.splitlines())


def test_repro_metrics_plots_noop_and_experiments(project_repo, tmp_path):
    repo = project_repo
    first = sh(["dvc", "repro"], repo)
    assert executed_stages(first.stdout) == STAGE_NAMES
    runs = list((repo / ".dvc" / "cache" / "runs").rglob("*"))
    assert len([r for r in runs if r.is_file()]) == len(STAGE_NAMES)  # every stage is in the run-cache

    metrics = metrics_of(json.loads(sh(["dvc", "metrics", "show", "--json"], repo).stdout))
    for metric in METRICS:
        row = metrics[f"metrics/test/{metric}.json"]
        for model in MODELS:
            if metric != "roc_auc" or row[model] is not None:
                assert row[f"{model}_ci_lower"] <= row[model] <= row[f"{model}_ci_upper"]
        assert set(row) == {f"{m}{s}" for m in MODELS for s in ("", "_ci_lower", "_ci_upper")}
    assert {f"metrics/test_operating_point/{m}.json" for m in METRICS} <= set(metrics)
    assert metrics["metrics/validation/best_epoch.json"]["transfer"] >= 1
    table, widest = wide(["dvc", "metrics", "show"], repo)
    assert widest <= 160 and "metrics/test/accuracy.json" in table

    counts = json.loads(sh(["dvc", "metrics", "show", "--json", "metrics/ingest.json"], repo).stdout)
    assert metrics_of(counts)["metrics/ingest.json"]["files_seen"] == 40  # data counts: their own file

    plots = sh(["dvc", "plots", "show", "-o", "plots_html"], repo)
    assert "failed" not in (plots.stdout + plots.stderr).lower()
    html = (repo / "plots_html" / "index.html").read_text()
    titles = ("Confusion matrix, scratch", "ROC, transfer", "Loss per epoch, scratch", "Accuracy per epoch, transfer")
    for title in titles:
        assert title in html
    for png in ("confusion_scratch", "confusion_transfer", "roc_pr", "test_predictions"):
        assert (repo / "reports" / "evaluate" / f"{png}.png").stat().st_size > 1000
    live = json.loads((repo / "metrics" / "train_transfer" / "metrics.json").read_text())
    assert live["best"]["epoch"] >= 1 and "val_accuracy" in live["best"]
    assert (repo / "metrics" / "train_transfer" / "report.md").exists()

    assert executed_stages(sh(["dvc", "repro"], repo).stdout) == set()

    # the same commit in a fresh clone, with nothing cached, gives the same metrics
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert executed_stages(sh(["dvc", "repro"], clone).stdout) == STAGE_NAMES
    assert metrics_of(json.loads(sh(["dvc", "metrics", "show", "--json"], clone).stdout)) == metrics
    # byte for byte: every output, models included, hashes as in the original run
    assert (clone / "dvc.lock").read_text() == (repo / "dvc.lock").read_text()

    sh(["dvc", "exp", "run", "-S", "train_transfer.lr=0.01"], repo)
    exp = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    baseline = next(row for row in exp if row["rev"] != "workspace")
    experiments = [rev for e in baseline["experiments"] for rev in e["revs"]]

    def lr(rev):
        return rev["data"]["params"]["params.yaml"]["data"]["train_transfer"]["lr"]

    assert lr(baseline) == 0.0001 and [lr(e) for e in experiments] == [0.01]
    diff = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout)
    changed = {key for path in diff.values() for key in path}
    assert "transfer" in changed and "scratch" not in changed  # scratch was not retrained


def test_queued_sweep_runs_and_sorts(project_repo):
    repo = project_repo
    sh(["dvc", "repro"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    sh(["dvc", "exp", "run", "--queue", "-S", "train_transfer.lr=0.001,0.0003"], repo)
    sh(["dvc", "queue", "start", "-j", "1"], repo)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    sort = ["--sort-by", "metrics/test/accuracy.json:transfer", "--sort-order", "desc"]
    table = json.loads(sh(["dvc", "exp", "show", "--json", *sort], repo).stdout)
    swept = [rev for row in table for e in row.get("experiments") or [] for rev in e["revs"]]
    lrs = sorted(r["data"]["params"]["params.yaml"]["data"]["train_transfer"]["lr"] for r in swept)
    assert lrs == [0.0003, 0.001]
    sh(["dvc", "queue", "stop"], repo, check=False)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda repo: "data/raw/nope", "does not exist"),
        (lambda repo: (repo / "data" / "raw" / "empty").mkdir() or "data/raw/empty", "no files found"),
        (
            lambda repo: (
                (
                    (repo / "data/raw/t").mkdir(),
                    (repo / "data/raw/t/labels.csv").write_text("Image,Label\nImage1,1\n"),
                )
                and "data/raw/t"
            ),
            "no 'Class' column",
        ),
        (
            lambda repo: (
                (
                    (repo / "data/raw/f/misc").mkdir(parents=True),
                    (repo / "data/raw/f/misc/a.png").write_bytes(b"x"),
                )
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


def test_other_files_under_data_raw_do_not_reach_dvc(project_repo):
    """Ingest depends on `${data.source}` alone: a FIFO or a non-UTF-8 name elsewhere under data/raw
    neither hangs nor breaks DVC (it would if all of data/raw were a dependency)."""
    junk = project_repo / "data" / "raw" / "unrelated"
    junk.mkdir()
    os.mkfifo(junk / "pipe")
    (junk / os.fsdecode(b"caf\xe9.png")).write_bytes(b"x")
    result = subprocess.run(
        ["dvc", "status"],
        cwd=project_repo,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "ingest" in result.stdout  # reported as never run, not as an error

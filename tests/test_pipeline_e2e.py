"""The real `dvc` CLI on a temporary repository: what a user does, on tiny synthetic data.

The pipeline is reproduced once per session (conftest's `baseline_repo`); each test works on a copy of it.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT, STAGE_NAMES, copy_of, executed_stages, sh, venv_env
from PIL import Image

from brain_tumor.core.numerics import threads
from brain_tumor.core.params import read_yaml

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


def set_params(repo, **changes) -> None:
    """Set dotted params (`train_transfer.seed=7`) in the repo's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = params
        for key in path:
            node = node[key]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def changed_stages(repo) -> set[str]:
    return set(json.loads(sh(["dvc", "status", "--json"], repo).stdout))


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_repro_metrics_plots_and_noop(baseline_repo, tmp_path):
    repo = copy_of(baseline_repo, tmp_path / "repo")
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
    live = metrics["metrics/train_transfer/metrics.json"]  # DVCLive's summary is a metric: exp show has it
    assert live["best"]["epoch"] == metrics["metrics/validation/best_epoch.json"]["transfer"]
    table, widest = wide(["dvc", "metrics", "show", "metrics/test", "metrics/test_operating_point"], repo)
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
    epochs = (repo / "metrics" / "train_transfer" / "plots" / "metrics" / "val" / "loss.tsv").read_text().split()
    assert epochs[2] == "1"  # epochs are numbered from 1 in the curves, as in the model file and the logs
    live_dir = repo / "metrics" / "train_transfer"  # DVCLive's report: params, last metrics, the four curves
    report = (live_dir / "report.md").read_text()
    assert report.startswith("# DVC Report") and "params.yaml" in report and "|   best.epoch |" in report
    curves = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(curves) == [f"static/{s}/{m}.png" for s in ("train", "val") for m in ("accuracy", "loss")]
    assert all((live_dir / curve).stat().st_size > 1000 for curve in curves)

    assert executed_stages(sh(["dvc", "repro"], repo).stdout) == set()


def test_fresh_clone_reproduces_the_lock_byte_for_byte(baseline_repo, tmp_path):
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(baseline_repo), str(clone)], tmp_path)
    assert executed_stages(sh(["dvc", "repro"], clone).stdout) == STAGE_NAMES
    assert (clone / "dvc.lock").read_text() == (baseline_repo / "dvc.lock").read_text()  # models included
    assert sh(["git", "status", "--porcelain"], clone).stdout == ""


def test_a_rerun_that_writes_other_bytes_is_named_in_one_line_at_the_end(baseline_repo, tmp_path):
    """What a machine of another CPU type sees after `make repro` (dvc repro, then scripts/lock_check.py):
    another thread count is this machine's way to sum the same floats in another order. Nothing is said
    where the lock was reproduced (or where an input changed on purpose: the next test)."""
    repo = copy_of(baseline_repo, tmp_path / "repo")
    committed = repo / "committed.lock"
    shutil.copy(repo / "dvc.lock", committed)
    check = ["python", "scripts/lock_check.py", "--before", str(committed)]
    assert sh(check, repo).stderr == ""  # reproduced (test_fresh_clone_reproduces_the_lock_byte_for_byte)
    other = 2 if threads() == 1 else 1  # the suite's count is conftest's
    sh(["env", f"BRAIN_TUMOR_THREADS={other}", "dvc", "repro", "--force", "--single-item", "train-scratch"], repo)
    sh(["dvc", "repro"], repo)  # evaluate and export follow the other model
    lines = sh(check, repo).stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: dvc.lock not reproduced byte for byte"), lines
    assert "models/scratch.pt" in lines[0] and "of train-scratch, evaluate, export" in lines[0]
    assert "train-transfer" not in lines[0] and "data/split" not in lines[0]
    # where an input changed on purpose, nothing is said: test_edits_rerun_only_the_stages...


def test_each_seed_puts_only_its_stage_out_of_date_and_a_training_seed_keeps_the_split(baseline_repo, tmp_path):
    """DVC's own verdict on each seed: only its stage is out of date (a training seed keeps the split, so two
    seeds are compared on the same test set); then one workspace experiment, on the cheapest seed."""
    repo = copy_of(baseline_repo, tmp_path / "repo")
    seeds = {
        "data.synthetic.seed": "ingest",
        "split.seed": "split",
        "train_scratch.seed": "train-scratch",
        "train_transfer.seed": "train-transfer",
        "evaluate.seed": "evaluate",
    }
    for param, stage in seeds.items():
        set_params(repo, **{param: 7})
        assert changed_stages(repo) == {stage}, param
        sh(["git", "checkout", "params.yaml"], repo)
    result = sh(["dvc", "exp", "run", "-S", "evaluate.seed=7"], repo)
    assert executed_stages(result.stdout) == {"evaluate"}
    assert read_yaml(repo / "params.yaml")["evaluate"]["seed"] == 7


def test_edits_rerun_only_the_stages_that_run_the_edited_code(baseline_repo, tmp_path):
    """...and where an input changed on purpose, `make repro`'s lock check says nothing."""
    repo = copy_of(baseline_repo, tmp_path / "repo")
    shutil.copy(repo / "dvc.lock", repo / "committed.lock")
    console = repo / "brain_tumor" / "core" / "console.py"
    console.write_text(console.read_text().replace("Progress bars", "Progress bars (restyled)", 1))
    assert changed_stages(repo) == set()  # output-neutral: no stage depends on it
    report = repo / "brain_tumor" / "data" / "report.py"
    report.write_text(report.read_text() + "\n# reworded\n")
    assert executed_stages(sh(["dvc", "repro"], repo).stdout) == {"split"}  # same training data: nothing else
    explain = repo / "brain_tumor" / "evaluation" / "explain.py"
    explain.write_text(explain.read_text() + "\n# reworded\n")
    assert executed_stages(sh(["dvc", "repro"], repo).stdout) == {"evaluate"}
    assert sh(["python", "scripts/lock_check.py", "--before", "committed.lock"], repo).stderr == ""


def test_queued_sweep_finishes_runs_its_own_code_and_prints_a_narrow_table(baseline_repo, tmp_path):
    """One command queues the points, keeps a worker until none is left (dvc#10562) and prints the table; a
    workspace edit made after queueing does not reach the queued experiments, which run their own copy.

    The swept param is evaluate's seed, so that each point runs one stage: the queue is what is tested here,
    and which stages a param re-runs is tested above."""
    repo = copy_of(baseline_repo, tmp_path / "repo")
    points = ["7", "8"]
    sh(["python", "scripts/sweep.py", "--queue-only", "-S", f"evaluate.seed={','.join(points)}"], repo)
    code = repo / "brain_tumor" / "evaluation" / "evaluate.py"
    original = md5(code)
    code.write_text(code.read_text() + '\nprint("EDITED WORKSPACE CODE")\n')
    result = sh(["env", "COLUMNS=160", "python", "scripts/sweep.py", "--run-queued", "-S", "evaluate.seed"], repo)
    assert "2 succeeded, 0 failed" in result.stderr
    rows = [line for line in result.stdout.splitlines() if line.strip()]
    assert max(len(line) for line in rows) <= 160 and rows[0].split()[:2] == ["experiment", "accuracy"]
    branch = sh(["git", "branch", "--show-current"], repo).stdout.strip()  # master, main: git's init.defaultBranch
    baseline_rows = [line for line in rows[1:] if line.split()[0] in ("workspace", branch)]
    assert len(baseline_rows) == 2, rows
    assert sorted(line.split()[-1] for line in rows[1:] if line not in baseline_rows) == sorted(points)
    table = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    runs = [rev for row in table for e in row.get("experiments") or [] for rev in e["revs"]]
    assert len(runs) == 2
    for run in runs:
        assert (
            run["data"]["deps"]["brain_tumor/evaluation/evaluate.py"]["hash"] == original
        )  # the code its lock records ran
    logs = sh(["dvc", "queue", "logs", runs[0]["name"]], repo, check=False)
    assert "EDITED WORKSPACE CODE" not in logs.stdout + logs.stderr


def test_artifacts_get_and_dvc_get_from_a_tagged_clone(baseline_repo, tmp_path):
    origin = copy_of(baseline_repo, tmp_path / "origin")
    storage = tmp_path / "storage"
    sh(["dvc", "remote", "add", "-d", "storage", str(storage)], origin)
    sh(["git", "commit", "-qam", "remote"], origin)
    sh(["bash", "scripts/release.sh", "0.1.0"], origin)
    names = yaml.safe_load((origin / "dvc.yaml").read_text())["artifacts"]
    tags = sh(["git", "tag"], origin).stdout.split()
    assert sorted(tags) == sorted(f"{name}@v0.1.0" for name in names)
    out = tmp_path / "fetched"
    out.mkdir()
    for name, artifact in names.items():
        sh(["dvc", "artifacts", "get", str(origin), name, "-o", name], out)
        assert md5(out / name) == md5(origin / artifact["path"]), name
    sh(["dvc", "get", str(origin), "models/transfer.pt", "-o", "transfer.pt"], out)
    assert md5(out / "transfer.pt") == md5(origin / "models" / "transfer.pt")


def missing_source(repo) -> str:
    return "data/raw/nope"


def table_without_class_column(repo) -> str:
    (repo / "data" / "raw" / "t").mkdir()
    (repo / "data" / "raw" / "t" / "labels.csv").write_text("Image,Label\nImage1,1\n")
    return "data/raw/t"


FAILED_INGEST = "ERROR: failed to reproduce 'ingest'"


@pytest.mark.parametrize(
    "setup,message,dvc_says",
    [
        (  # DVC itself stops at the missing dependency
            missing_source,
            "error: data.source: 'data/raw/nope' does not exist",
            [f"{FAILED_INGEST}: [Errno 2] No such file or directory: '{{repo}}/data/raw/nope'"],
        ),
        (  # DVC runs the stage, which refuses the source
            table_without_class_column,
            "error: data/raw/t/labels.csv: has an 'Image' column but no 'Class' column",
            [
                "error: data/raw/t/labels.csv: has an 'Image' column but no 'Class' column",
                f"{FAILED_INGEST}: failed to run: python -m stages.ingest, exited with 1",
            ],
        ),
    ],
    ids=["missing", "unusable"],
)
def test_bad_source_fails_in_one_line_without_outputs(project_repo, setup, message, dvc_says):
    """The stage script and `dvc repro` on a source that is missing and on one ingest refuses (the cases
    themselves: test_ingest.py)."""
    repo = project_repo
    set_params(repo, **{"data.source": setup(repo)})
    result = sh(["python", "-m", "stages.ingest"], repo, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [message], result.stderr
    assert not (repo / "data" / "dataset").exists() and not (repo / "metrics" / "ingest.json").exists()
    repro = sh(["dvc", "repro"], repo, check=False)
    assert repro.returncode == 255
    assert repro.stderr.strip().splitlines() == [line.format(repo=repo) for line in dvc_says], repro.stderr
    assert not (repo / "data" / "dataset").exists()


def test_other_files_under_data_raw_do_not_reach_dvc(project_repo):
    """Ingest depends on `${data.source}` alone: a FIFO or a non-UTF-8 name elsewhere under data/raw
    neither hangs nor breaks DVC (it would if all of data/raw were a dependency)."""
    junk = project_repo / "data" / "raw" / "unrelated"
    junk.mkdir()
    os.mkfifo(junk / "pipe")
    (junk / os.fsdecode(b"caf\xe9.png")).write_bytes(b"x")
    result = subprocess.run(
        ["dvc", "status", "--json"],
        cwd=project_repo,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=600,  # far above the seconds it takes: only a hang (the FIFO read) reaches it
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == STAGE_NAMES, result.stdout  # every stage reported as never run
    assert "unrelated" not in result.stdout + result.stderr  # and nothing said about the junk


def test_committed_lock_matches_the_committed_code_and_params():
    """The project's own dvc.lock records the code and params now in the repository (no stale lock)."""
    lock = read_yaml(PROJECT / "dvc.lock")["stages"]  # YAML 1.2, as DVC writes it: `- yes` is a string
    params = read_yaml(PROJECT / "params.yaml")
    for name, stage in lock.items():
        for dep in stage["deps"]:
            path = PROJECT / dep["path"]
            if path.suffix == ".py":
                assert md5(path) == dep["md5"], f"{name}: {dep['path']} changed since dvc.lock was written"
        for dotted, values in stage.get("params", {}).get("params.yaml", {}).items():
            current = params
            for key in dotted.split("."):  # a section (`evaluate`) or one param (`data.source`)
                current = current[key]
            assert current == values, f"{name}: params.{dotted} changed since dvc.lock was written"


def test_an_external_set_is_measured_on_the_scans_the_models_have_not_seen(baseline_repo, tmp_path):
    """An external set built from the pipeline's own split: re-processed copies of training scans (a JPEG
    re-save, a gamma change, a mirror image: the same slices, so seen), the test scans through another
    "scanner" (an intensity remap: unseen), and a broken file (rejected)."""
    repo = copy_of(baseline_repo, tmp_path / "repo")
    manifest = pd.read_csv(repo / "data" / "split" / "split_manifest.csv")
    external = repo / "data" / "external" / "other-scanner"
    folder = {1: "yes", 0: "no"}
    for name in folder.values():
        (external / name).mkdir(parents=True)
    copies = {
        "resaved.jpg": lambda x: x,
        "gamma.png": lambda x: 255 * (x / 255) ** 0.6,
        "mirror.png": lambda x: x[:, ::-1],
    }
    train = manifest[manifest["split"] == "train"].head(len(copies))
    for (name, change), row in zip(copies.items(), train.itertuples(), strict=True):
        rgb = np.asarray(Image.open(repo / "data" / "split" / row.file).convert("RGB"))
        path = external / folder[row.label] / f"copy-{name}"
        Image.fromarray(np.ascontiguousarray(change(rgb)).astype(np.uint8)).save(path)
    test = manifest[manifest["split"] == "test"]
    for row in test.itertuples():
        rgb = np.asarray(Image.open(repo / "data" / "split" / row.file).convert("RGB")).astype(float)
        shifted = (255 * np.sqrt(rgb / 255)).astype(np.uint8)  # another scanner's intensity curve
        Image.fromarray(shifted).save(external / folder[row.label] / f"t-{row.id}.png")
    (external / "yes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    params = read_yaml(repo / "params.yaml")
    params["evaluate"]["external"] = ["data/external/other-scanner"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "evaluate" in executed_stages(sh(["dvc", "repro"], repo).stdout)

    counts = json.loads((repo / "metrics" / "external" / "other-scanner.json").read_text())
    assert (counts["files_seen"], counts["accepted"], counts["rejected"]) == (len(test) + 4, len(test) + 3, 1)
    assert (counts["seen"], counts["unseen"]) == (3, len(test))
    for k, name in enumerate(("non_tumor", "tumor")):
        assert counts[f"unseen_{name}"] == int((test["label"] == k).sum())
        assert counts[f"seen_{name}"] == int((train["label"] == k).sum())
    seen = pd.read_csv(repo / "metrics" / "evaluate" / "external" / "other-scanner_seen.csv")
    assert sorted(seen["nearest_training_scan"]) == sorted(train["source"])
    for model in ("scratch", "transfer"):
        row = counts["models"][model]["0.5"]
        assert 0 <= row["accuracy_ci_lower"] <= row["accuracy"] <= row["accuracy_ci_upper"] <= 1
    card = (repo / "reports" / "model_card.md").read_text()
    assert "## External set `other-scanner`" in card and "**3 of" in card
    assert json.loads((repo / "metrics" / "external" / "sets.json").read_text()) == {"external_sets": 1}
    shown = sh(["dvc", "metrics", "show", "metrics/external"], repo).stdout
    assert "other-scanner.json" in shown and "lowest_roc_auc" in shown
    summary = json.loads((repo / "metrics" / "external" / "summary.json").read_text())
    for model in ("scratch", "transfer"):  # one set: its figures are the lowest
        point = counts["models"][model]["operating_point"]
        assert summary[model]["lowest_roc_auc"] == point["roc_auc"]
        assert summary[model]["lowest_sensitivity"] == point["recall"]
        assert summary[model]["lowest_novelty_auc"] == counts["models"][model]["novelty"]["roc_auc_vs_internal_test"]
    assert (repo / "models" / "transfer.novelty.npz").is_file() and "novelty threshold" in card


def test_the_default_pipeline_measures_the_built_in_external_set(baseline_repo):
    """With the default params evaluate generates the built-in other-source set and reports it per subject and
    in the summary that `dvc exp show` compares."""
    name = "synthetic-other-source"
    counts = json.loads((baseline_repo / "metrics" / "external" / f"{name}.json").read_text())
    # 96 slices (the set's labels.csv describes them: not a file seen); at 64 px a stripped slice may be
    # near-blank and rejected: every slice is accounted for
    assert counts["files_seen"] == 96 and counts["accepted"] + counts["duplicates"] + counts["rejected"] == 96
    assert counts["accepted"] >= 80
    assert counts["unseen"] == counts["accepted"] - counts["seen"] and counts["unseen_tumor"] > 0
    groups = pd.read_csv(baseline_repo / "metrics" / "evaluate" / "external" / f"{name}_groups.csv")
    by_subject = groups[(groups["grouping"] == "subject") & (groups["threshold_name"] == "operating_point")]
    assert sorted(by_subject["model"].unique()) == ["scratch", "transfer"]
    assert by_subject.groupby("model")[["tumor", "non_tumor"]].sum().sum(axis=1).eq(counts["unseen"]).all()
    table = sh(["dvc", "exp", "show", "--no-pager", "--md"], baseline_repo).stdout
    assert "lowest_roc_auc" in table and "lowest_novelty_auc" in table

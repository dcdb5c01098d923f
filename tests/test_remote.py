"""CI against a DVC remote, as a team runs it: a fresh clone restores unchanged stages instead of running them.

Two remotes: a local directory, and S3 (dvc-s3) against moto's S3 server on a loopback port. Each clone runs
scripts/ci_pipeline.sh, the script the GitHub workflow runs.
"""

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import STAGE_NAMES, executed_stages, sh, venv_env

pytestmark = pytest.mark.e2e
BASELINE_LR, OTHER_LR, NEW_LR = 0.0001, 0.01, 0.003
REMOTES = ("local", "s3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback, with one bucket; stopped after the module."""
    port = free_port()
    server = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        request = urllib.request.Request(f"{endpoint}/dvc-test", method="PUT")  # create the bucket
        urllib.request.urlopen(request, timeout=5)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def set_lr(repo: Path, lr: float) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_transfer"]["lr"] = lr
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_metrics(repo: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((repo / "metrics" / "test").glob("*.json"))}


test_metrics.__test__ = False  # a helper, not a test


def ci(repo: Path) -> set[str]:
    """Run the CI script in `repo`; return the stages it executed."""
    result = sh(["bash", "scripts/ci_pipeline.sh"], repo)
    assert "## Metrics" in (repo / "metrics_diff.md").read_text()
    return executed_stages(result.stdout)


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3_endpoint, tiny_params_module):
    """A project whose remotes hold the baseline and an lr experiment, pushed with their run-cache."""
    from conftest import init_project_repo

    repo = init_project_repo(tmp_path_factory.mktemp("origin"), tiny_params_module)
    storage = tmp_path_factory.mktemp("storage")
    sh(["dvc", "remote", "add", "local", str(storage)], repo)
    sh(["dvc", "remote", "add", "s3", "s3://dvc-test/store"], repo)
    for option, value in (
        ("endpointurl", s3_endpoint),
        ("access_key_id", "testing"),
        ("secret_access_key", "testing"),
        ("region", "us-east-1"),
    ):
        sh(["dvc", "remote", "modify", "s3", option, value], repo)
    results = {}
    for lr in (OTHER_LR, BASELINE_LR):  # the committed state is the baseline
        set_lr(repo, lr)
        sh(["dvc", "repro"], repo)
        results[lr] = test_metrics(repo)
        for remote in REMOTES:
            sh(["dvc", "push", "--run-cache", "-r", remote], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline with remotes"], repo)
    return repo, results


@pytest.fixture
def clone(origin, tmp_path, request):
    repo, _ = origin
    target = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(target)], tmp_path)
    sh(["dvc", "remote", "default", "--local", request.param], target)
    return target


@pytest.mark.parametrize("clone", REMOTES, indirect=True)
def test_committed_lock_restores_everything(clone, origin):
    assert ci(clone) == set()
    assert test_metrics(clone) == origin[1][BASELINE_LR]


@pytest.mark.parametrize("clone", REMOTES, indirect=True)
def test_without_lock_the_run_cache_restores_everything(clone, origin):
    (clone / "dvc.lock").unlink()
    assert ci(clone) == set()
    assert test_metrics(clone) == origin[1][BASELINE_LR]


@pytest.mark.parametrize("clone", REMOTES, indirect=True)
def test_param_changed_and_back_is_restored(clone, origin):
    set_lr(clone, OTHER_LR)  # run in origin and pushed, not committed
    assert ci(clone) == set()
    assert test_metrics(clone) == origin[1][OTHER_LR]
    set_lr(clone, BASELINE_LR)
    assert ci(clone) == set()
    assert test_metrics(clone) == origin[1][BASELINE_LR]


@pytest.mark.parametrize("clone", REMOTES, indirect=True)
def test_new_param_runs_exactly_the_dependent_stages(clone):
    set_lr(clone, NEW_LR)
    dependent = {"train-transfer", "evaluate", "export"}
    assert ci(clone) == dependent  # ingest, split and train-scratch are restored
    assert STAGE_NAMES - dependent == {"ingest", "split", "train-scratch"}

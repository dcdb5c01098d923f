"""CI as a team runs it: scripts/ci_pipeline.sh (the workflow's script) in its two modes.

- "local" (no remote, a fresh fork): the pipeline reproduces with the local cache alone, the summary says why
  each stage ran and shows the metrics table, and nothing is pushed.
- "remote": a local-directory remote and an S3 remote (dvc-s3 against moto's S3 server on a loopback port).
  A fresh clone restores unchanged stages instead of running them; a lost remote object is reported, and
  fails the job with CI_STRICT_CACHE=1.
"""

import json
import shutil
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import copy_of, executed_stages, make_tiny_params, sh

pytestmark = pytest.mark.e2e  # one xdist worker runs this module (conftest.ONE_WORKER)
# The param the scenarios change: evaluate's seed (the bootstrap intervals), so that a change re-runs one
# stage; restoring and re-running work alike for every stage, and which stages a param re-runs is tested in
# test_pipeline_e2e.py.
BASELINE_SEED = make_tiny_params()["evaluate"]["seed"]  # the committed value
OTHER_SEED, NEW_SEED = 1, 2
REMOTES = ("local", "s3")


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a loopback port the OS chose (no race for a free port), with one bucket; stopped at
    the end of the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        request = urllib.request.Request(f"{endpoint}/dvc-test", method="PUT")  # create the bucket
        urllib.request.urlopen(request, timeout=30)
        yield endpoint
    finally:
        server.stop()


def set_seed(repo: Path, seed: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def split_figures(repo: Path) -> dict:
    """metrics/test/*.json of a repository: the evaluate stage's test-split figures."""
    return {p.name: json.loads(p.read_text()) for p in sorted((repo / "metrics" / "test").glob("*.json"))}


def ci(repo: Path, check: bool = True, **env: str) -> tuple[set[str], str]:
    """Run the CI script in `repo`; return the stages it executed and the job summary it wrote."""
    settings = [f"{k}={v}" for k, v in {"BASE_REV": "HEAD", **env}.items()]
    result = sh(["env", *settings, "bash", "scripts/ci_pipeline.sh"], repo, check=check)
    summary = (repo / "ci_summary.md").read_text()
    assert "## Metrics: HEAD -> this run" in summary
    return executed_stages(result.stdout), summary


@pytest.fixture(scope="session")
def origin(baseline_repo, tmp_path_factory, s3_endpoint):
    """The baseline, with both remotes holding it and an experiment with another evaluate seed, pushed with
    their run-cache."""
    repo = copy_of(baseline_repo, tmp_path_factory.mktemp("origin") / "repo")
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
    results = {BASELINE_SEED: split_figures(repo)}
    for remote in REMOTES:
        sh(["dvc", "push", "--run-cache", "-r", remote], repo)
    set_seed(repo, OTHER_SEED)
    sh(["dvc", "repro"], repo)
    results[OTHER_SEED] = split_figures(repo)
    for remote in REMOTES:
        sh(["dvc", "push", "--run-cache", "-r", remote], repo)
    sh(["git", "checkout", "params.yaml", "dvc.lock"], repo)  # back to the baseline, which is committed
    sh(["dvc", "checkout"], repo)
    sh(["git", "commit", "-qam", "remotes"], repo)
    return repo, results, storage


@pytest.fixture
def clone(origin, tmp_path, request):
    repo = origin[0]
    target = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(target)], tmp_path)
    sh(["dvc", "remote", "default", "--local", request.param], target)
    return target


# Each behaviour on one remote kind; both kinds restore everything (S3 here, the local directory next).
@pytest.mark.parametrize("clone", ["s3"], indirect=True)
def test_committed_lock_restores_everything_and_says_so(clone, origin):
    executed, summary = ci(clone)
    assert executed == set()
    assert split_figures(clone) == origin[1][BASELINE_SEED]
    assert "| train-transfer | restored or unchanged |" in summary
    assert "| metrics/test/accuracy.json | transfer |" in summary  # the table, rows in a stable order


@pytest.mark.parametrize("clone", ["local"], indirect=True)
def test_without_lock_the_run_cache_restores_everything(clone, origin):
    (clone / "dvc.lock").unlink()
    assert ci(clone)[0] == set()
    assert split_figures(clone) == origin[1][BASELINE_SEED]


@pytest.mark.parametrize("clone", ["s3"], indirect=True)
def test_param_changed_and_back_is_restored_and_a_new_one_runs_its_stages(clone, origin):
    set_seed(clone, OTHER_SEED)  # run in origin and pushed, not committed
    executed, summary = ci(clone)
    assert executed == set(), summary
    assert split_figures(clone) == origin[1][OTHER_SEED]
    set_seed(clone, BASELINE_SEED)
    executed, summary = ci(clone)
    assert executed == set(), summary
    assert split_figures(clone) == origin[1][BASELINE_SEED]
    set_seed(clone, NEW_SEED)
    executed, summary = ci(clone)
    assert executed == {"evaluate"}  # every other stage restored
    assert "| evaluate | **executed**: changed: param `evaluate` |" in summary


@pytest.mark.parametrize("clone", ["local"], indirect=True)
def test_a_lost_remote_object_is_reported_and_fails_strict_ci(clone, origin):
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    md5 = next(o["md5"] for o in lock["train-transfer"]["outs"] if o["path"] == "models/transfer.pt")
    storage = origin[2]
    shutil.copytree(storage, storage.with_name("storage-backup"), dirs_exist_ok=True)
    try:
        (storage / "files" / "md5" / md5[:2] / md5[2:]).unlink()  # as `dvc gc -c` elsewhere would
        strict = ["env", "BASE_REV=HEAD", "CI_STRICT_CACHE=1", "CI_PUSH=0", "bash", "scripts/ci_pipeline.sh"]
        result = sh(strict, clone, check=False)
        assert result.returncode == 1 and "train-transfer" in executed_stages(result.stdout)
        summary = (clone / "ci_summary.md").read_text()
        assert "**executed**: inputs unchanged: its outputs were in neither the cache nor the remote" in summary
        assert "Warning:** train-transfer" in summary
        assert sh(strict, clone, check=False).returncode == 0  # restored from the local cache now: nothing ran
    finally:
        shutil.rmtree(storage)
        storage.with_name("storage-backup").rename(storage)


def test_without_a_remote_ci_reproduces_locally_reports_and_pushes_nothing(baseline_repo, tmp_path):
    """A fresh fork: no remote, the DVC cache from actions/cache (here: the baseline's own cache)."""
    repo = copy_of(baseline_repo, tmp_path / "fork")
    set_seed(repo, NEW_SEED)
    result = sh(["env", "BASE_REV=HEAD", "bash", "scripts/ci_pipeline.sh"], repo)
    assert "no default DVC remote" in result.stdout
    summary = (repo / "ci_summary.md").read_text()
    assert "## Pipeline (local cache only: no DVC remote configured)" in summary
    assert executed_stages(result.stdout) == {"evaluate"}
    assert "| metrics/test/accuracy.json | transfer |" in summary
    assert "| ingest | restored or unchanged |" in summary

"""The GitHub workflow is valid (actionlint, with shellcheck on its `run:` scripts) and runs what the tests run."""

import shutil
import subprocess

import pytest
import yaml
from conftest import PROJECT, venv_env

WORKFLOW = PROJECT / ".github" / "workflows" / "pipeline.yml"


def tool(name: str) -> str:
    path = shutil.which(name, path=venv_env()["PATH"])
    if path is None:
        pytest.fail(f"{name} is not installed: `make setup` installs it with the dev extra")
    return path


def test_workflow_passes_actionlint_and_shellcheck():
    tool("shellcheck")  # actionlint runs it on every `run:` script when it is on PATH
    result = subprocess.run([tool("actionlint"), str(WORKFLOW)], capture_output=True, text=True, env=venv_env())
    assert result.returncode == 0, result.stdout + result.stderr
    scripts = [*sorted(str(p) for p in (PROJECT / "scripts").glob("*.sh")), str(PROJECT / ".ci" / "run")]
    result = subprocess.run([tool("shellcheck"), *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_workflow_lints_tests_and_runs_the_tested_ci_script():
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    tests = "\n".join(step.get("run", "") for step in jobs["test"]["steps"])
    assert "make lint" in tests and "make test" in tests
    steps = jobs["reproduce"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "scripts/ci_pipeline.sh" in commands
    assert "GITHUB_STEP_SUMMARY" in commands and "gh pr comment" in commands
    assert "dvc gc --workspace" in commands  # the saved cache stays within what the next run needs
    uses = {step.get("uses", "").split("@")[0] for step in steps}
    assert {"actions/checkout", "actions/setup-python", "actions/cache"} <= uses


def test_fork_pull_requests_neither_push_nor_comment():
    """A fork's pull request has no secrets and a read-only token: it must run read-only, not fail."""
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["reproduce"]
    assert "head.repo.full_name == github.repository" in job["env"]["SAME_REPO"]
    comment = next(s for s in job["steps"] if "gh pr comment" in s.get("run", ""))
    assert "SAME_REPO == 'true'" in comment["if"]
    reproduce = next(s for s in job["steps"] if "ci_pipeline.sh" in s.get("run", ""))
    assert 'CI_PUSH="$push"' in reproduce["run"] and "push=0" in reproduce["run"]

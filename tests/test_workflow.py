"""The GitHub workflow is valid (actionlint) and runs the script the remote tests run."""

import shutil
import subprocess

import pytest
import yaml
from conftest import PROJECT

WORKFLOW = PROJECT / ".github" / "workflows" / "pipeline.yml"


def test_workflow_passes_actionlint():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.fail("actionlint is not installed: `make setup` installs it with the dev extra")
    result = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_the_tested_ci_script_and_publishes_the_diff():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["reproduce"]["steps"]
    commands = "\n".join(step.get("run", "") for step in steps)
    assert "scripts/ci_pipeline.sh" in commands
    assert "GITHUB_STEP_SUMMARY" in commands and "gh pr comment" in commands
    uses = {step.get("uses", "").split("@")[0] for step in steps}
    assert {"actions/checkout", "actions/setup-python", "actions/cache"} <= uses

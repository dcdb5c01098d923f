"""Fixtures that build real image files, datasets and repositories on the fly."""

from __future__ import annotations

import fcntl
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]

# Property-based tests (tests/test_fuzz.py): `make test` runs a small, derandomised budget that writes no example
# database (the same examples on every run, nothing left in the repository); `make fuzz` a large random one.
settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True, database=None)
settings.register_profile("fuzz", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def scan(seed: int, size: int = 32) -> np.ndarray:
    """A distinct random-texture RGB image (random enough that perceptual hashes differ)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.NEAREST))


def save(path: Path, rgb: np.ndarray, fmt: str | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(rgb)
    if mode:
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def truncated_jpeg(path: Path, seed: int) -> Path:
    buf = io.BytesIO()
    Image.fromarray(scan(seed, 64)).save(buf, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def make_tiny_params() -> dict:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"]["synthetic"].update(n_images=40, image_size=64)
    params["data"]["max_reject_fraction"] = 0.5
    for stage in ("train_scratch", "train_transfer"):
        params[stage].update(image_size=32, epochs=2, batch_size=8)
    params["evaluate"].update(bootstrap_samples=50, grid_images=4)
    return params


@pytest.fixture
def tiny_params() -> dict:
    return make_tiny_params()


@pytest.fixture(scope="module")
def tiny_params_module() -> dict:
    return make_tiny_params()


def venv_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("DVC_NO_ANALYTICS", None)
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def sh(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def init_project_repo(parent: Path, params: dict) -> Path:
    """A new git + DVC repository holding this project's pipeline with `params`."""
    repo = parent / "repo"
    repo.mkdir()
    for name in ("stages", "brain_tumor", "scripts"):
        shutil.copytree(PROJECT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(PROJECT / name, repo / name)
    shutil.copytree(PROJECT / "data" / "synthetic", repo / "data" / "synthetic")
    (repo / "data" / "raw").mkdir(parents=True)
    (repo / "data" / "raw" / "README.md").write_text("user data goes here\n")
    shutil.copytree(PROJECT / "data" / "external", repo / "data" / "external")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["git", "config", "user.email", "test@example.com"], repo)
    sh(["git", "config", "user.name", "test"], repo)
    sh(["dvc", "init", "-q"], repo)
    sh(["dvc", "config", "core.analytics", "false"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "pipeline"], repo)
    return repo


@pytest.fixture
def project_repo(tmp_path: Path, tiny_params: dict) -> Path:
    return init_project_repo(tmp_path, tiny_params)


ONE_WORKER = ("tests/test_remote.py",)  # their tests share one S3 server and one origin: one worker runs them


def on_one_worker(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0] in ONE_WORKER


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With `-n N --dist load` (as `make test` runs), each test goes to whichever worker is free, except the
    tests of the ONE_WORKER modules, which go to one worker as one unit. (xdist's own `loadgroup` does this
    with marks, but under pytest 9 it ignores them: it renames `item._nodeid`, which pytest 9 no longer reads.)
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems gives

    class LoadWithModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0] if on_one_worker(nodeid) else nodeid

    return LoadWithModuleUnits(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the run for the workers: one test that needs the reproduced baseline first, so that one worker
    builds it while the others run every test that does not need it; then the ONE_WORKER tests (the longest
    unit, so it starts early); then the other tests that need the baseline."""
    needs = [item for item in items if "baseline_repo" in getattr(item, "fixturenames", ())]
    if not needs:
        return
    others = [item for item in items if item not in needs]
    grouped = [item for item in needs[1:] if on_one_worker(item.nodeid)]
    rest = [item for item in needs[1:] if not on_one_worker(item.nodeid)]
    items[:] = needs[:1] + others + grouped + rest


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills once per test session, shared by every pytest-xdist worker: the first worker
    to ask builds it while the others wait for it (rather than each building its own copy on the same cores).
    Tests must not change it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, built = root / name, root / f"{name}.built"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


def reproduce_baseline(folder: Path) -> None:
    repo = init_project_repo(folder, make_tiny_params())
    result = sh(["dvc", "repro"], repo)
    assert executed_stages(result.stdout) == STAGE_NAMES
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline"], repo)
    (repo / "repro.log").write_text(result.stdout)  # untracked: what the first run printed


@pytest.fixture(scope="session")
def baseline_repo(tmp_path_factory) -> Path:
    """The tiny pipeline reproduced once per test session and committed with its dvc.lock (no remote).

    Tests never change it: they copy it (`copy_of`), which is much cheaper than reproducing it again.
    """
    return built_once(tmp_path_factory, "baseline", reproduce_baseline) / "repo"


def copy_of(repo: Path, target: Path) -> Path:
    """A working copy of `repo` (git history, DVC cache and workspace outputs included)."""
    shutil.copytree(repo, target, symlinks=True)
    return target


def executed_stages(output: str) -> set[str]:
    """Stage names `dvc repro` ran (restored stages print "Stage '...' is cached - skipping run")."""
    return set(re.findall(r"Running stage '([^']+)'", output))


STAGE_NAMES = {"ingest", "split", "train-scratch", "train-transfer", "evaluate", "export"}

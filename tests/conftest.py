"""Fixtures and the helpers the test modules share (they import them from here, never from each other):
real image files, datasets, workspaces and repositories built on the fly, model and threshold files."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]

# One thread per process in the tests (brain_tumor/core/numerics.py): `make test` runs a worker per core, and
# each starts stage processes; two processes of one thread each on two cores finished 22-25% sooner than
# two of two OpenMP threads each (docs/benchmarks.md). Set before the package is imported here, so in-process runs and
# stage processes sum their floats alike; the bytes are not a default run's, and no test compares with one.
os.environ.setdefault("BRAIN_TUMOR_THREADS", "1")

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
    env["DVC_NO_ANALYTICS"] = "1"
    # as in a user's shell: an in-process CLI test points this worker's torch cache elsewhere (core/stage.py)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
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


# ---------------------------------------------------------------- a workspace the real stage scripts run in


class Workspace:
    """A folder laid out as the project (params.yaml, data/raw/) with its own empty $TMPDIR."""

    def __init__(self, root: Path, params: dict, split_dir: Path | None = None):
        """`split_dir`: a split made beforehand, linked as data/split (for the training stages)."""
        self.root, self.params = root, params
        self.tmpdir = root.parent / f"{root.name}-tmpdir"
        for folder in (root / "data" / "raw", self.tmpdir):
            folder.mkdir(parents=True)
        if split_dir is not None:
            (root / "data" / "split").symlink_to(split_dir)
        self.write_params()

    def write_params(self) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))

    def source(self, name: str) -> Path:
        """Point data.source at data/raw/<name> and return that path."""
        self.params["data"]["source"] = f"data/raw/{name}"
        self.write_params()
        return self.root / "data" / "raw" / name

    def start(self, stage: str, **environment: str) -> subprocess.Popen:
        env = venv_env() | {"TMPDIR": str(self.tmpdir)} | environment
        cmd = [sys.executable, str(PROJECT / "stages" / f"{stage}.py")]
        return subprocess.Popen(
            cmd,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, stage: str, timeout: float = 600, **environment: str) -> subprocess.CompletedProcess:
        """The stage script to its end; `timeout` is far above what it takes: a hang fails, a slow machine not."""
        proc = self.start(stage, **environment)
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def leftovers(self) -> list[str]:
        temporaries = [str(p.relative_to(self.root)) for p in self.root.rglob(".tmp-*")]
        return temporaries + [f"$TMPDIR/{p.name}" for p in self.tmpdir.iterdir()]

    def report(self) -> dict:
        return yaml.safe_load((self.root / "metrics" / "ingest.json").read_text())

    def rejected(self) -> dict[str, str]:
        from brain_tumor.core.outputs import read_table

        files = read_table(self.root / "data" / "dataset" / "files.csv")
        return dict(files.loc[files["status"] == "rejected", ["source", "reason"]].itertuples(index=False))


@pytest.fixture
def ws(tmp_path, tiny_params) -> Workspace:
    return Workspace(tmp_path / "repo", tiny_params)


def assert_one_error(result: subprocess.CompletedProcess, *needles: str, status: int = 1) -> str:
    """Exit `status` (1: a stage's or the CLI's error), exactly one `error: ` line holding every needle, no
    traceback; returns the line."""
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert all(n in errors[0] for n in needles), errors[0]
    return errors[0]


def assert_accounted(report: dict, files_seen: int) -> None:
    assert report["accepted"] + report["duplicates"] + report["rejected"] == report["files_seen"] == files_seen


# ---------------------------------------------------------------- data sources


def class_folders(root: Path, per_class: int = 6, seed: int = 0) -> int:
    """yes/ and no/ with `per_class` distinct scans each; returns the number of files written."""
    for i in range(per_class):
        save(root / "yes" / f"y{i}.png", scan(seed + 2 * i))
        save(root / "no" / f"n{i}.png", scan(seed + 2 * i + 1))
    return 2 * per_class


def kaggle(root: Path, n: int = 12, encoding: str = "utf-8", delimiter: str = ",", rows: list | None = None) -> int:
    """Images Image1..n (alternate classes) and `Brain Tumor.csv`; returns the number of image files."""
    for i in range(1, n + 1):
        save(root / "images" / f"Image{i}.png", scan(i))
    rows = rows if rows is not None else [(f"Image{i}", i % 2) for i in range(1, n + 1)]
    with open(root / "Brain Tumor.csv", "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["Image", "Class", "Note"])
        writer.writerows([(name, label, "é") for name, label in rows])
    return n


def zip_of(folder: Path, archive: Path, method: int = zipfile.ZIP_STORED) -> Path:
    """Every file below `folder` in `archive`, by its relative path."""
    with zipfile.ZipFile(archive, "w", method) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return archive


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def alias_bomb() -> str:
    """Nine levels of ten aliases (lines 1 to 10): 10**9 values once expanded, a few hundred bytes as text."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]" for a, b in zip("abcdefghi", "bcdefghij")]
    return "\n".join(levels) + "\n"


# ---------------------------------------------------------------- model, threshold and ONNX files

SOURCE_SHA256 = "ab" * 32  # the trained .pt file the tiny ONNX files and threshold points say they belong to


def model_record(kind: str, image_size: int) -> dict:
    """A complete model record, as a training stage writes it."""
    return {
        "kind": kind, "image_size": image_size, "classes": ["non_tumor", "tumor"], "mean": [0.5] * 3,
        "std": [0.5] * 3, "head": "linear", "unfreeze_last": 0, "tta_flip": False, "head_standardisation": "none",
        "precision": "fp32",
        "epoch": 1, "val_loss": 0.5, "val_accuracy": 0.5, "split_manifest_sha256": "0" * 64,
    }  # fmt: skip


def threshold_point(**change) -> dict:
    """A threshold file's content, as the evaluate stage writes it (`change` overrides a key; None removes it)."""
    point = {"threshold": 0.3, "target_sensitivity": 0.95, "validation_sensitivity": 1.0}
    point |= {"validation_specificity": 0.5, "model_sha256": SOURCE_SHA256}
    return {k: v for k, v in (point | change).items() if v is not None}


def tiny_onnx(path: Path, shape: tuple = ("batch", 3, 32, 32), output: str = "p_tumor", **meta) -> Path:
    """An ONNX file with the metadata export writes (`meta` overrides a key; None removes it), whose graph is
    P(tumor) = sigmoid(mean of the input): no torch needed."""
    import onnx
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))
    p_tumor = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch"])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=list(range(1, len(shape))), keepdims=0),
        helper.make_node("Sigmoid", ["mean"], [output]),
    ]
    graph = helper.make_graph(nodes, "tiny", [image], [p_tumor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    props = {"image_size": "32", "mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "threshold": "0.4"}
    props |= {"threshold_source": "transfer.threshold.json", "source_model_sha256": SOURCE_SHA256}
    helper.set_model_props(model, {k: v for k, v in (props | meta).items() if v is not None})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


THRESHOLDS = {"scratch": 0.5, "transfer": 0.3}  # what the evaluate stage would have chosen for the tiny models
TRANSFER_THRESHOLD = THRESHOLDS["transfer"]


def build_tiny_models(base: Path, params: dict) -> None:
    """A tiny synthetic split in `base`, both models trained on it, their threshold and novelty files (as the
    evaluate stage writes them) and their ONNX exports.

    The transfer model sees 64 px (MobileNetV2's last block is then 2x2, so Grad-CAM has a map to show) and
    histogram-standardises each scan (`head_standardisation`).
    """
    from brain_tumor.core.arrays import load_split
    from brain_tumor.core.outputs import file_sha256
    from brain_tumor.core.params import typed
    from brain_tumor.data import ingest, split
    from brain_tumor.evaluation.evaluate import fit_novelty
    from brain_tumor.serving.export import export_models
    from brain_tumor.serving.inference import write_threshold
    from brain_tumor.training import train
    from brain_tumor.training.checkpoint import load_trained

    # the served model standardises each head's histogram: its ONNX graph and predict paths are tested with it
    served = {"image_size": 64, "head_standardisation": "histogram"}
    params = params | {"train_transfer": params["train_transfer"] | served}
    reads: dict[str, set[str]] = {}  # per stage, the params its entry point read (tests/test_dvc_yaml.py)

    def params_of(stage: str):
        return recording(typed(params), reads.setdefault(stage, set()))

    ingest.build_dataset(params_of("ingest"), base / "raw", base / "dataset", base / "ingest.json")
    split.split_dataset(params_of("split"), base / "dataset", base / "split", base / "split.json", base / "people")
    for kind, threshold in THRESHOLDS.items():
        model = base / "models" / f"{kind}.pt"
        train.train_model(kind, params_of(f"train-{kind}"), base / "split", model, base / "live" / kind)
        point = threshold_point(threshold=threshold, model_sha256=None)
        write_threshold(model, point, file_sha256(model))
        network, meta = load_trained(model, expect_kind=kind)
        val = load_split(base / "split", "val", meta["image_size"])
        fit_novelty(network, model, base / "split", None, val.images, typed(params).evaluate)
    export_models({kind: base / "models" / f"{kind}.pt" for kind in THRESHOLDS})
    (base / "params_read.json").write_text(json.dumps({stage: sorted(keys) for stage, keys in reads.items()}))


def recording(section, read: set[str], prefix: str = ""):
    """Typed params (or one section) that note in `read` each key the code reads ("split.seed"): the same
    frozen dataclasses, subclassed, so the code under test cannot tell."""
    import dataclasses

    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    values = {k: recording(v, read, f"{prefix}{k}.") if dataclasses.is_dataclass(v) else v for k, v in values.items()}
    leaves = {k for k, v in values.items() if not dataclasses.is_dataclass(v)}

    class Recorded(type(section)):
        def __getattribute__(self, name: str):
            if name in leaves:
                read.add(prefix + name)
            return super().__getattribute__(name)

    return Recorded(**values)


@pytest.fixture
def tiny(tmp_path_factory, tiny_params, monkeypatch) -> Path:
    """The tiny models, built once per session (shared by test_predict.py, test_export.py and every xdist
    worker)."""
    monkeypatch.setenv("BRAIN_TUMOR_CACHE", str(tmp_path_factory.mktemp("cache")))
    return built_once(tmp_path_factory, "tiny-models", lambda base: build_tiny_models(base, tiny_params))


# ---------------------------------------------------------------- as an unprivileged user

NOBODY = 65534


@contextlib.contextmanager
def public_folder() -> Iterator[Path]:
    """A folder that every user can enter (pytest's tmp_path is private to its owner), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="brain-tumor-test-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def python_as_nobody(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    """This Python with `args`, as user nobody when we are root (root reads any file), else as ourselves;
    the test is skipped where that is impossible."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root, and no setpriv to drop to an unprivileged user")
        prefix = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import brain_tumor.serving.cli"], cwd=cwd, capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"user {NOBODY} cannot run this project's Python: {probe.stderr.decode()[-300:]}")
    return subprocess.run([*prefix, sys.executable, *args], cwd=cwd, capture_output=True, text=True, **kw)

"""Trust nothing between stages: one test per kind of fault, through the real stage scripts and `brain-tumor`.

A bad input ends in exactly one `error: ` line naming the file or parameter (non-zero exit, no traceback) and
leaves the folder it ran in as it was (outputs unchanged, no temporaries) and its $TMPDIR empty; a bad file
among good ones is a reject with its reason, and the run goes on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PROJECT,
    Workspace,
    alias_bomb,
    assert_one_error,
    class_folders,
    kaggle,
    model_record,
    public_folder,
    python_as_nobody,
    save,
    scan,
    threshold_point,
    tiny_onnx,
    venv_env,
)

from brain_tumor.serving.predict import Limits, limits_from_params
from brain_tumor.training.checkpoint import save_checkpoint
from brain_tumor.training.models import ScratchCNN

BRAIN_TUMOR = str(Path(sys.executable).parent / "brain-tumor")  # the console script, as a user runs it


def tree(root: Path) -> dict[str, str]:
    """Every file (with its sha256) and folder below `root`: what a failed run must leave as it found it."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(root.rglob("*"))
    }


def assert_failed_cleanly(
    ws: Workspace, result: subprocess.CompletedProcess, before: dict, *needles: str, status: int = 1
) -> str:
    line = assert_one_error(result, *needles, status=status)
    assert tree(ws.root) == before and not list(ws.tmpdir.iterdir())
    return line


def predict(ws: Workspace, *args: str, model: str = "models/transfer.onnx") -> subprocess.CompletedProcess:
    """`brain-tumor predict ARGS --model MODEL` in the workspace, with its own $TMPDIR."""
    env = venv_env() | {"TMPDIR": str(ws.tmpdir)}
    cmd = [BRAIN_TUMOR, "predict", *args, "--model", model]
    return subprocess.run(cmd, cwd=ws.root, env=env, capture_output=True, text=True, timeout=600)


def tiny_pt(path: Path, kind: str = "scratch") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"state_dict": ScratchCNN(32).state_dict(), "meta": model_record(kind, 32)}, path)
    return path


@pytest.fixture
def scans(ws: Workspace) -> Workspace:
    """The workspace with models/transfer.onnx, three scans and a predictions.csv from an earlier run."""
    tiny_onnx(ws.root / "models" / "transfer.onnx")
    for i in range(3):
        save(ws.root / "scans" / f"s{i}.png", scan(i))
    (ws.root / "predictions.csv").write_text("path,p_tumor\nearlier,0.5\n")
    return ws


# ---------------------------------------------------------------- params.yaml


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda text: text, []),  # the control: the same file, readable
        (
            lambda text: text.replace("  epochs: 2\n", "  epochs: 2\n  epochs: 3\n", 1),
            ["params.yaml: line ", ": duplicate key 'epochs' (first on line "],
        ),
        (lambda text: alias_bomb() + text, ["params.yaml: line 5: aliases expand to more than 100000 values"]),
    ],
    ids=["readable", "duplicate-key", "alias-bomb"],
)
def test_params_yaml_a_stage_cannot_trust_is_one_line(ws, edit, needles):
    """The stage's path: it reads params.yaml with the checking loader (the loader's own cases: test_params.py)."""
    class_folders(ws.source("src"))
    params = ws.root / "params.yaml"
    params.write_text(edit(params.read_text()))
    before = tree(ws.root)
    result = ws.run("ingest")
    if not needles:
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert_failed_cleanly(ws, result, before, *needles)


# ---------------------------------------------------------------- files predict may not read or write


@pytest.fixture
def public_scans() -> Iterator[Path]:
    """A model, scans/s0.png and s1.png (s1 readable by its owner only) and writable out/ and tmp/, in a
    folder that all users may enter but only its owner may write."""
    with public_folder() as root:
        tiny_onnx(root / "model.onnx")
        for i in range(2):
            save(root / "scans" / f"s{i}.png", scan(i))
        (root / "scans" / "s1.png").chmod(0o600)
        for folder in ("out", "tmp"):
            (root / folder).mkdir()
            (root / folder).chmod(0o777)
        yield root


def predict_as_nobody(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = venv_env() | {"TMPDIR": str(folder / "tmp")}
    return python_as_nobody([BRAIN_TUMOR, "predict", "scans", "--model", "model.onnx", *args], folder, env=env)


def test_a_scan_predict_may_not_read_is_unreadable_not_corrupt(public_scans):
    """The predict CLI's path, as user nobody (root reads anything): `unreadable`, not damaged (load_rgb's own
    case: test_images.py)."""
    result = predict_as_nobody(public_scans, "--out", "out/p.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(public_scans / "out" / "p.csv") as f:
        reasons = {row["path"]: row["reason"] for row in csv.DictReader(f)}
    assert reasons == {"scans/s0.png": "", "scans/s1.png": "unreadable"}
    assert not list((public_scans / "tmp").iterdir())


def test_an_out_file_we_may_not_write_is_one_line(public_scans):
    before = tree(public_scans)
    result = predict_as_nobody(public_scans, "--out", "p.csv")
    assert assert_one_error(result) == "error: --out p.csv: permission denied"
    assert tree(public_scans) == before


# ---------------------------------------------------------------- label tables


def test_label_tables_that_disagree_stop_ingest_naming_both_and_the_image(ws):
    """The stage's path: nothing changed, nothing left behind (list_items' own case: test_ingest.py)."""
    root = ws.source("src")
    kaggle(root)  # Brain Tumor.csv: Image3 is class 1
    (root / "extra.csv").write_text("Image,Class\nImage4,0\nImage3,0\n")
    before = tree(ws.root)
    assert_failed_cleanly(
        ws,
        ws.run("ingest"),
        before,
        "data/raw/src/Brain Tumor.csv and data/raw/src/extra.csv give different classes for 'Image3' "
        "('1' on row 4, '0' on row 3)",
    )


# ---------------------------------------------------------------- brain-tumor predict


@pytest.mark.parametrize(
    "text",
    [
        "model:\n  layers: 3\n",
        "data: {max_image_pixels: lots, max_archive_mb: -1}\n",
        "data: [1, 2]\n",
        "data: {max_image_pixels: 1}\ndata: {max_image_pixels: 1}\n",
        "train: [\n",
    ],
    ids=["other-schema", "bad-values", "data-not-a-mapping", "duplicate-key", "not-yaml"],
)
def test_predict_runs_where_params_yaml_belongs_to_another_project(scans, text):
    (scans.root / "params.yaml").write_text(text)
    assert limits_from_params(scans.root / "params.yaml") == Limits()
    result = predict(scans, "scans")
    assert result.returncode == 0 and "error" not in result.stderr, result.stderr[-3000:]
    assert "predicted 3 of 3 files" in result.stderr and not list(scans.tmpdir.iterdir())


def test_predict_uses_a_valid_limit_from_a_foreign_params_yaml(scans):
    (scans.root / "params.yaml").write_text("data:\n  max_image_pixels: 100\n  source: elsewhere\n")
    before = tree(scans.root)
    result = predict(scans, "scans", "--out", "predictions.csv")
    assert_failed_cleanly(scans, result, before, "no file could be predicted (decompression_bomb 3)")


HOLD = """import sys, time
import brain_tumor.serving.predict

def held(path, max_pixels):  # stands still at the first image, once the archive is extracted
    print("decoding", flush=True)
    time.sleep(600)

brain_tumor.serving.predict.decode_scan = held
from brain_tumor.serving.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "sig,status,name", [(signal.SIGINT, 130, "interrupt"), (signal.SIGTERM, 143, "SIGTERM")], ids=["SIGINT", "SIGTERM"]
)
def test_a_stopped_predict_leaves_no_extracted_archive(scans, sig, status, name):
    with zipfile.ZipFile(scans.root / "scans.zip", "w") as zf:
        for f in sorted((scans.root / "scans").iterdir()):
            zf.write(f, f"batch/{f.name}")
    before = tree(scans.root)
    env = venv_env() | {"TMPDIR": str(scans.tmpdir)}
    cmd = [sys.executable, "-c", HOLD, "predict", "scans.zip", "--model", "models/transfer.onnx", "--out", "p.csv"]
    proc = subprocess.Popen(cmd, cwd=scans.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "decoding\n"
        assert len(list(scans.tmpdir.glob("predict-*/batch/*.png"))) == 3  # mid-run: the archive is extracted
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    line = assert_failed_cleanly(scans, result, before, status=status)
    assert line == f"error: stopped by {name}; partial outputs removed"
    assert len(stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "results.csv"], "error: --out results.csv: is a folder"),
        (["--out", "predictions.csv/p.csv"], "error: --out predictions.csv/p.csv: predictions.csv is not a folder"),
        (["--out", "predictions.csv/a/p.json"], "error: --out predictions.csv/a/p.json: predictions.csv is not a"),
    ],
    ids=["out-is-a-folder", "out-below-a-file", "out-two-below-a-file"],
)
def test_an_output_path_that_cannot_be_written_is_one_line(scans, args, message):
    (scans.root / "results.csv").mkdir()
    before = tree(scans.root)
    result = predict(scans, "scans", *args)
    assert assert_failed_cleanly(scans, result, before).startswith(message)


@pytest.mark.slow  # imports torch in the subprocess
def test_an_explain_path_that_is_a_file_is_one_line_and_overlays_appear_whole(scans):
    tiny_pt(scans.root / "models" / "scratch.pt")
    before = tree(scans.root)
    result = predict(scans, "scans", "--explain", "predictions.csv", model="scratch")
    assert assert_failed_cleanly(scans, result, before) == "error: --explain predictions.csv: not a folder"
    assert predict(scans, "scans", "--explain", "overlays", model="scratch").returncode == 0
    assert set(tree(scans.root)) - set(before) == {"overlays"} | {f"overlays/scans__s{i}.png.png" for i in range(3)}


def expect_outcome(scans: Workspace, problem: str, path: str, used: str) -> str:
    """`predict scans --out predictions.csv`: without a `problem`, a run at the threshold `used`; with one,
    the error line `error: PATH: PROBLEM...` (returned) and nothing changed."""
    before = tree(scans.root)
    result = predict(scans, "scans", "--out", "predictions.csv")
    if problem:
        return assert_failed_cleanly(scans, result, before, f"error: {path}: {problem}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at threshold {used}" in result.stderr
    return ""


@pytest.mark.parametrize(
    "content,problem",
    [
        (json.dumps(threshold_point()), ""),  # the control: used, with its source named
        (json.dumps(threshold_point(model_sha256="cd" * 32)), "chosen for another model file (sha256 cdcdcd"),
    ],
    ids=["valid", "other-model"],
)
def test_a_threshold_file_predict_cannot_trust_is_one_line(scans, content, problem):
    """The predict CLI's path, bound to the model it serves (every kind of bad threshold file: test_inference.py)."""
    (scans.root / "models" / "transfer.threshold.json").write_text(content)
    expect_outcome(scans, problem, "models/transfer.threshold.json", used="0.3 (models/transfer.threshold.json)")


@pytest.mark.slow  # imports torch in the subprocess
def test_a_named_model_file_holding_the_other_kind_is_one_line(scans):
    tiny_pt(scans.root / "models" / "transfer.pt", kind="scratch")
    before = tree(scans.root)
    result = predict(scans, "scans", "--out", "predictions.csv", model="transfer")
    assert_failed_cleanly(scans, result, before, "models/transfer.pt: holds the scratch model, expected the transfer")


@pytest.mark.slow  # imports torch in the subprocess
def test_a_forged_model_record_with_an_absurd_image_size_is_one_line_before_anything_is_allocated(scans):
    """Issue 24, through the predict CLI: such a record made predict die with a MemoryError traceback (the
    record check itself: test_hardening.py)."""
    path = scans.root / "models" / "forged.pt"
    save_checkpoint({"state_dict": {}, "meta": model_record("transfer", 32) | {"image_size": 10**9}}, path)
    before = tree(scans.root)
    result = predict(scans, "scans", "--out", "predictions.csv", model="models/forged.pt")
    assert_failed_cleanly(scans, result, before, "models/forged.pt: model record's 'image_size' is out of range")


# ---------------------------------------------------------------- ONNX metadata against its graph


INPUT = "the graph's input (image tensor(float)"
ONNX_FAULTS = {  # id: (tiny_onnx's changes, the problem named)
    "valid": ({}, ""),
    "bad-json": ({"mean": "[0.5, 0.5"}, "ONNX metadata mean '[0.5, 0.5' is not a JSON list of 3 numbers"),
    "not-numbers": ({"mean": '[0.5, 0.5, "x"]'}, "ONNX metadata mean '[0.5, 0.5, \"x\"]' is not a JSON list of 3"),
    "zero-std": ({"std": "[0.5, 0, 0.5]"}, "ONNX metadata std '[0.5, 0, 0.5]' is not a JSON list of 3 positive"),
    "missing": ({"std": None, "image_size": None}, "ONNX metadata lacks image_size, std"),
    "threshold-text": ({"threshold": "high"}, "ONNX metadata threshold 'high' is not a number between 0 and 1"),
    "threshold-nan": ({"threshold": "nan"}, "ONNX metadata threshold 'nan' is not a number between 0 and 1"),
    "threshold-range": ({"threshold": "1.5"}, "ONNX metadata threshold '1.5' is not a number between 0 and 1"),
    "size-vs-graph": ({"image_size": "64"}, f"{INPUT} ['batch', 3, 32, 32]) is not float32 [batch, 3, 64, 64]"),
    "one-channel": ({"shape": ("batch", 1, 32, 32)}, f"{INPUT} ['batch', 1, 32, 32]) is not float32"),
    "rank-3": ({"shape": ("batch", 3, 32)}, f"{INPUT} ['batch', 3, 32]) is not float32"),
    "output-name": ({"output": "prob"}, "the graph has no output p_tumor of shape [batch] (outputs: prob ['batch'])"),
}


@pytest.mark.parametrize("make,problem", list(ONNX_FAULTS.values()), ids=list(ONNX_FAULTS))
def test_an_onnx_file_whose_metadata_cannot_be_trusted_is_one_line(scans, make, problem):
    tiny_onnx(scans.root / "models" / "transfer.onnx", **make)
    line = expect_outcome(scans, problem, "models/transfer.onnx", used="0.4 (transfer.onnx metadata)")
    assert not problem or line.endswith("re-export it (python -m stages.export)")


# ---------------------------------------------------------------- file-system faults at the stage boundary


def stage_as_nobody(folder: Path, stage: str) -> subprocess.CompletedProcess:
    env = venv_env() | {"TMPDIR": str(folder / "tmp")}
    return python_as_nobody([str(PROJECT / "stages" / f"{stage}.py")], folder, env=env)


def test_a_read_only_output_folder_is_one_line_and_changes_nothing(tiny_params):
    """As an unprivileged user (root writes anywhere): ingest cannot replace data/dataset in a data/ folder it
    may not write; one line names the folder and the cause, and the previous output is untouched."""
    with public_folder() as folder:
        work = Workspace(folder / "repo", tiny_params)
        for path in (work.root, work.root / "data", work.tmpdir):
            path.chmod(0o755)
        (work.root / "tmp").mkdir(mode=0o777)
        (work.root / "tmp").chmod(0o777)
        (work.root / "data" / "dataset").mkdir()
        (work.root / "data" / "dataset" / "manifest.csv").write_text("earlier output\n")
        before = tree(work.root)
        result = stage_as_nobody(work.root, "ingest")
        line = assert_one_error(result)
        assert re.fullmatch(r"error: data/\.tmp-\d+-ingest-\w+: permission denied", line), line
        assert tree(work.root) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_disk_during_ingest_is_one_line_and_leaves_nothing(ws, tmp_path):
    """ingest's output on a 1 MiB tmpfs: the disk fills while images are written; one line, no debris."""
    params = ws.params
    params["data"]["synthetic"].update(n_images=200, image_size=240)
    ws.write_params()
    data = ws.root / "data"
    shutil.rmtree(data)
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (data / "raw").mkdir()
        shutil.copytree(PROJECT / "data" / "synthetic", data / "synthetic")
        result = ws.run("ingest")
        line = assert_one_error(result, "no space left on device")
        assert sorted(p.name for p in data.iterdir()) == ["raw", "synthetic"], line  # nothing half-written
        assert not list(ws.tmpdir.iterdir())
    finally:
        subprocess.run(["umount", str(data)], check=False)


@pytest.mark.parametrize(
    "target,message",
    [
        ("data/dataset", "error: data/dataset: a file stands where a folder is needed"),
        ("data", "error: data: already exists"),  # ingest's scratch folder goes beside its output, in data/
    ],
    ids=["data-dataset", "data"],
)
def test_an_output_folder_that_is_a_file_is_one_line(ws, target, message):
    path = ws.root / target
    if path.exists():
        shutil.rmtree(path)
    path.write_text("a file where a folder should be")
    before = tree(ws.root)
    assert assert_one_error(ws.run("ingest")) == message
    assert tree(ws.root) == before

"""Bad inputs and faults, one test per kind, on tiny data built here.

Each ends in exactly one `error: ` line naming the file or param (exit status 1, no traceback), or in
an accounted reject (accepted + duplicates + rejected = files seen); and nothing is left behind: no
`.tmp-*` folders beside the outputs, nothing in $TMPDIR. A representative subset drives the real stage
scripts; the rest calls the code directly (the readers' own cases: test_ingest.py, test_images.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    Workspace,
    assert_accounted,
    assert_one_error,
    class_folders,
    kaggle,
    model_record,
    save,
    scan,
    zip_of,
)
from PIL import Image

from brain_tumor.core.arrays import cached_array, code_fingerprint
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.labels import require_both_classes
from brain_tumor.core.outputs import atomic_write, read_table, sweep_temporaries
from brain_tumor.training.checkpoint import load_trained
from brain_tumor.training.models import ScratchCNN


def patch_zip(archive: Path, flags: int | None = None, method: int | None = None) -> None:
    """Set the flag bits and/or compression method in every local and central header (what zipfile can't write)."""
    data = bytearray(archive.read_bytes())
    for signature, flags_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(signature)
        while at != -1:
            if flags is not None:
                data[at + flags_at : at + flags_at + 2] = struct.pack("<H", flags)
            if method is not None:
                data[at + method_at : at + method_at + 2] = struct.pack("<H", method)
            at = data.find(signature, at + 4)
    archive.write_bytes(data)


# ---------------------------------------------------------------- params: every stage checks them first


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ingest", "split", "train_scratch", "train_transfer", "evaluate"])
def test_every_stage_refuses_bad_params_before_any_work(ws, stage):
    ws.params["train_scratch"]["epochs"] = 0
    ws.write_params()
    result = ws.run(stage)
    assert_one_error(result, "params.yaml: train_scratch.epochs: 0 is not allowed (expected an integer >= 1 and <=")
    assert sorted(p.name for p in ws.root.iterdir()) == ["data", "params.yaml"] and not ws.leftovers()


# ---------------------------------------------------------------- the ingest stage on bad sources


def test_latin1_semicolon_csv_is_read(ws):
    n = kaggle(ws.source("kaggle"), encoding="latin-1", delimiter=";")
    result = ws.run("ingest")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_accounted(ws.report(), n)
    assert ws.report()["accepted"] == n and not ws.leftovers()


def readable_zip(root: Path) -> None:
    zip_of(root, root.with_suffix(".zip"))


def encrypted_zip(root: Path) -> None:
    patch_zip(zip_of(root, root.with_suffix(".zip")), flags=0x1)


def deflate64_zip(root: Path) -> None:
    patch_zip(zip_of(root, root.with_suffix(".zip")), method=9)


def nested_zip(root: Path) -> None:
    """kaggle.zip holding inner.zip, which holds the dataset."""
    (root.parent / "outer").mkdir()
    zip_of(root, root.parent / "outer" / "inner.zip")
    zip_of(root.parent / "outer", root.with_suffix(".zip"))


def empty_zip(root: Path) -> None:
    zipfile.ZipFile(root.with_suffix(".zip"), "w").close()


def garbage_zip(root: Path) -> None:
    root.with_suffix(".zip").write_bytes(b"PK\x03\x04junk")


@pytest.mark.parametrize(
    "make,needles",
    [
        (readable_zip, []),  # the control: the same zip, readable
        (encrypted_zip, ["data/raw/kaggle.zip: entry 'Brain Tumor.csv' is encrypted"]),
        (deflate64_zip, ["data/raw/kaggle.zip: entry 'Brain Tumor.csv' uses compression method 9"]),
        (nested_zip, ["data/raw/kaggle.zip: entry 'inner.zip' is itself a zip archive"]),
        (empty_zip, ["data/raw/kaggle.zip: empty zip"]),
        (garbage_zip, ["data/raw/kaggle.zip: not a readable"]),
    ],
    ids=["readable", "encrypted", "deflate64", "nested", "empty", "garbage"],
)
def test_zip_failures_name_the_archive_and_entry(ws, make, needles):
    folder = ws.root / "data" / "raw" / "kaggle"
    n = kaggle(folder)
    make(folder)
    ws.source("kaggle.zip")
    result = ws.run("ingest")
    if not needles:
        assert result.returncode == 0, result.stderr[-3000:]
        assert_accounted(ws.report(), n)
    else:
        line = assert_one_error(result, *needles)
        assert ".tmp" not in line and "/tmp" not in line
        assert not (ws.root / "data" / "dataset").exists()
    assert not ws.leftovers()


def test_symlinks_fifos_and_bad_names_are_refused_and_counted(ws, tmp_path):
    """Nothing is followed outside the source, a FIFO is never opened (no hang), a non-UTF-8 name no crash."""
    root = ws.source("folders")
    n = class_folders(root)
    outside = save(tmp_path / "outside" / "secret.png", scan(99))
    (root / "yes" / "link.png").symlink_to(outside)
    (root / "no" / "extra").symlink_to(outside.parent, target_is_directory=True)
    os.mkfifo(root / "yes" / "pipe.png")
    with open(os.fsencode(root / "no") + b"/bad\xff.png", "wb") as f:
        Image.fromarray(scan(98)).save(f, format="PNG")
    result = ws.run("ingest", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_accounted(ws.report(), n + 4)
    assert ws.rejected() == {
        "yes/link.png": "symlink",
        "no/extra": "symlink",
        "yes/pipe.png": "special_file",
        "no/bad\\xff.png": "bad_file_name",
    }
    manifest = read_table(ws.root / "data" / "dataset" / "manifest.csv")
    assert "secret" not in " ".join(manifest["source"]) and not ws.leftovers()


def symlinked_class(root: Path, outside: Path) -> None:
    """yes/ holds 3 scans; no/ is a link to a folder outside the source."""
    class_folders(outside)
    for i in range(3):
        save(root / "yes" / f"y{i}.png", scan(100 + i))
    (root / "no").symlink_to(outside / "no", target_is_directory=True)


def one_class(root: Path, outside: Path) -> None:
    """yes/ holds 4 scans, and there is no no/."""
    for i in range(4):
        save(root / "yes" / f"y{i}.png", scan(i))


def colon_separated_table(root: Path, outside: Path) -> None:
    kaggle(root, delimiter=":")


@pytest.mark.parametrize(
    "make,needles",
    [
        (symlinked_class, ["data/raw/src: accepted images", "no non_tumor images (3 tumor)", "symlink 1"]),
        (one_class, ["data/raw/src: accepted images", "no non_tumor images (4 tumor)"]),
        (colon_separated_table, ["data/raw/src/Brain Tumor.csv: cannot tell how the columns are separated"]),
    ],
    ids=["class-folder-symlink", "one-class", "unknown-delimiter"],
)
def test_unusable_sources_are_one_line_errors(ws, tmp_path, make, needles):
    make(ws.source("src"), tmp_path / "outside")
    assert_one_error(ws.run("ingest"), *needles)
    assert not (ws.root / "data" / "dataset").exists() and not ws.leftovers()


@pytest.mark.slow
def test_evaluate_without_its_inputs_is_one_line(ws):
    (ws.root / "models").mkdir()
    (ws.root / "models" / "scratch.pt").write_bytes(b"PK\x03\x04" + os.urandom(5000))
    result = ws.run("evaluate")
    line = assert_one_error(result)
    assert line == "error: data/split/split_manifest.csv: no such file; run `dvc repro split` first"
    assert not ws.leftovers()


# ---------------------------------------------------------------- a real kill, then a re-run


def snapshot(root: Path) -> dict[str, str]:
    files = sorted(p for p in (root / "data" / "dataset").rglob("*") if p.is_file()) + [
        root / "metrics" / "ingest.json"
    ]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def started_decoding(ws: Workspace, proc: subprocess.Popen, images: int = 20) -> None:
    """Wait, by reading its stderr, until ingest says it has decoded `images` images into its temporary output
    and waits there (BRAIN_TUMOR_PAUSE_AFTER): mid-run, whatever the machine's speed."""
    for line in proc.stderr:
        if line.strip() == f"paused: ingest after {images} items":
            assert len(list((ws.root / "data").glob(".tmp-*-dataset-*/images/*.png"))) >= images
            return
    raise AssertionError(f"ingest ended (status {proc.wait()}) before it was interrupted")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_ingest_leaves_nothing_and_reruns_byte_identical(ws, sig):
    ws.params["data"]["synthetic"].update(n_images=120, image_size=96)  # paused at 20: mid-run
    ws.write_params()
    assert ws.run("ingest").returncode == 0
    reference = snapshot(ws.root)

    proc = ws.start("ingest", BRAIN_TUMOR_PAUSE_AFTER="ingest:20")
    started_decoding(ws, proc)
    if sig == signal.SIGKILL:  # the whole process group, Pool workers included, as the OOM killer or a power cut
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=600)
    assert snapshot(ws.root) == reference  # the previous complete output is untouched
    if sig == signal.SIGTERM:  # cleaned up at once
        assert proc.returncode == 143 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == "error: stopped by SIGTERM; partial outputs removed"
        assert not ws.leftovers()
    else:  # debris, which the next run finds and removes
        assert {p.name.split("-")[2] for p in (ws.root / "data").glob(".tmp-*")} == {"ingest", "dataset"}

    rerun = ws.run("ingest")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert snapshot(ws.root) == reference and not ws.leftovers()


# ---------------------------------------------------------------- the class check, called directly


def test_one_class_is_an_error():
    require_both_classes([0, 1, 1], "split val")
    with pytest.raises(PipelineError, match="split test: no tumor images \\(3 non_tumor\\); both classes"):
        require_both_classes([0, 0, 0], "split test")


# ---------------------------------------------------------------- caches that cannot lie


def corrupt(entry: Path) -> None:
    data = bytearray((entry / "array.npy").read_bytes())
    data[-1] ^= 0xFF
    (entry / "array.npy").write_bytes(data)


def truncate(entry: Path) -> None:
    with open(entry / "array.npy", "r+b") as f:
        f.truncate(200)


def no_meta(entry: Path) -> None:
    (entry / "meta.json").unlink()


def bad_meta(entry: Path) -> None:
    (entry / "meta.json").write_text("{")


@pytest.mark.parametrize(
    "damage,problem",
    [
        (corrupt, "array.npy does not match its sha256 (corrupt)"),
        (truncate, "array.npy is 200 bytes, expected 328 (truncated?)"),
        (no_meta, "unreadable ([Errno 2] No such file or directory: '{entry}/meta.json')"),
        (bad_meta, "unreadable (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ],
    ids=["flipped-byte", "truncated", "no-meta", "bad-meta"],
)
def test_damaged_cache_entry_is_rebuilt_with_one_warning(tmp_path, capfd, damage, problem):
    calls = []

    def fill(array: np.ndarray) -> None:
        calls.append(1)
        array[:] = np.arange(array.size, dtype=array.dtype).reshape(array.shape)

    entry = tmp_path / "cache" / "train-32px-key"
    first = np.array(cached_array(entry, (10, 5), np.float32, fill))
    assert np.array_equal(cached_array(entry, (10, 5), np.float32, fill), first) and len(calls) == 1
    assert capfd.readouterr().err == ""
    damage(entry)
    again = cached_array(entry, (10, 5), np.float32, fill)
    assert np.array_equal(again, first) and len(calls) == 2  # rebuilt, not used
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [f"warning: cache {entry}: {problem.format(entry=entry)}; rebuilding it"]
    assert [p.name for p in entry.parent.iterdir()] == ["train-32px-key"]  # no temporaries left


def test_cache_entry_of_another_shape_is_rebuilt(tmp_path, capfd):
    entry = tmp_path / "features-key"
    cached_array(entry, (4, 3), np.float32, lambda a: a.fill(1))
    assert cached_array(entry, (5, 3), np.float32, lambda a: a.fill(2)).shape == (5, 3)
    assert "holds <f4 [4, 3], expected <f4 [5, 3]" in capfd.readouterr().err


def test_swapped_cache_entries_of_the_same_shape_are_rebuilt_not_used(tmp_path, capfd):
    """Each entry knows which images it holds (its key), not only its shape and bytes: two entries swapped
    (say the val and test splits' decoded images) are both rebuilt, never served for each other."""
    val, test = tmp_path / "val-32px-aaaa", tmp_path / "test-32px-bbbb"
    cached_array(val, (4, 3), np.float32, lambda a: a.fill(1))
    cached_array(test, (4, 3), np.float32, lambda a: a.fill(2))
    val.rename(tmp_path / "swap")
    test.rename(val)
    (tmp_path / "swap").rename(test)
    assert np.all(cached_array(val, (4, 3), np.float32, lambda a: a.fill(1)) == 1)
    assert np.all(cached_array(test, (4, 3), np.float32, lambda a: a.fill(2)) == 2)
    assert capfd.readouterr().err.count("(renamed or swapped); rebuilding it") == 2


def test_cache_key_covers_the_producing_code():
    def produce(x):
        return x + 1

    first = code_fingerprint(produce)

    def produce(x):
        return x + 2

    assert code_fingerprint(produce) != first


# ---------------------------------------------------------------- model files and temporaries


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_damaged_model_file_is_one_line_error(tmp_path, damage):
    path = tmp_path / "scratch.pt"
    torch.save({"state_dict": ScratchCNN(32).state_dict(), "meta": model_record("scratch", 32)}, path)
    load_trained(path)  # the intact file loads
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(1000))
    else:
        torch.save({"weights": [1, 2]}, path)
    with pytest.raises(PipelineError) as err:
        load_trained(path)
    assert str(err.value).startswith(f"{path}: not a model file written by a training stage (")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "change,key",
    [
        ({"image_size": 10**9}, "image_size"),  # a forged size must not allocate a 10^18-pixel layer
        ({"image_size": 30}, "image_size"),  # not a multiple of 4 (the scratch CNN's schema)
        ({"kind": "transfer", "unfreeze_last": 40}, "unfreeze_last"),
        ({"kind": "transfer", "head": "resnet"}, "head"),
        ({"std": [0.5, 0.0, 0.5]}, "std"),
        ({"mean": [0.5, float("nan"), 0.5]}, "mean"),
        ({"classes": ["tumor", "non_tumor"]}, "classes"),
        ({"val_loss": float("inf")}, "val_loss"),
        ({"val_accuracy": 1.5}, "val_accuracy"),
        ({"precision": "fp8"}, "precision"),
        ({"tta_flip": 1}, "tta_flip"),
        ({"head_standardisation": "zscore"}, "head_standardisation"),
    ],
)
def test_a_model_record_out_of_range_is_one_line_before_anything_is_built(tmp_path, change, key):
    path = tmp_path / "scratch.pt"
    torch.save({"state_dict": {}, "meta": model_record("scratch", 32) | change}, path)
    with pytest.raises(PipelineError) as err:
        load_trained(path)
    assert str(err.value).startswith(f"{path}: model record") and repr(key) in str(err.value), err.value


def test_a_model_file_from_before_head_standardisation_loads_as_without_it(tmp_path):
    path = tmp_path / "scratch.pt"
    record = {k: v for k, v in model_record("scratch", 32).items() if k != "head_standardisation"}
    torch.save({"state_dict": ScratchCNN(32).state_dict(), "meta": record}, path)
    model, meta = load_trained(path)
    assert meta["head_standardisation"] == "none" and isinstance(model.standardise, torch.nn.Identity)


def test_temporaries_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it (a reused pid could)
    (tmp_path / f".tmp-{dead_pid}-dataset-abc" / "images").mkdir(parents=True)
    (tmp_path / f".tmp-{dead_pid}-ingest.json").write_text("half")
    (tmp_path / f".tmp-{os.getpid()}-split-xyz").mkdir()  # a live process's (ours): kept
    (tmp_path / "dataset").mkdir()
    sweep_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".tmp-{os.getpid()}-split-xyz", "dataset"]
    atomic_write(tmp_path / "out.json", lambda p: p.write_text("{}"))
    assert (tmp_path / "out.json").read_text() == "{}"

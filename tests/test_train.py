import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT, venv_env

from brain_tumor import ingest, split, train
from brain_tumor.data import load_split


@pytest.fixture
def split_dir(tmp_path, tiny_params, monkeypatch):
    """A real (tiny, synthetic) split made by the ingest and split stages' code."""
    monkeypatch.setenv("BRAIN_TUMOR_CACHE", str(tmp_path / "cache"))
    ingest.build_dataset(tiny_params, tmp_path / "raw", tmp_path / "dataset", tmp_path / "ingest.json")
    split.split_dataset(
        tiny_params, tmp_path / "dataset", tmp_path / "split", tmp_path / "split.json", tmp_path / "people"
    )
    return tmp_path / "split"


def test_images_are_decoded_once_into_a_keyed_cache(split_dir, tmp_path):
    first = load_split(split_dir, "train", 32)
    cached = sorted((tmp_path / "cache").glob("train-32px-*.npy"))
    assert len(cached) == 1 and first.images.shape[1:] == (32, 32, 3)
    mtime = cached[0].stat().st_mtime_ns
    again = load_split(split_dir, "train", 32)
    assert cached[0].stat().st_mtime_ns == mtime and again.key == first.key
    assert load_split(split_dir, "train", 48).key != first.key  # another size, another entry


def trained_state(kind, params, split_dir, out: Path, **kw) -> dict:
    train.train_model(kind, params, split_dir, out / "model.pt", out / "live", **kw)
    return torch.load(out / "model.pt", weights_only=True)


def test_head_on_cached_features_matches_full_forward(split_dir, tiny_params, tmp_path):
    fast = trained_state("transfer", tiny_params, split_dir, tmp_path / "fast")
    slow = trained_state("transfer", tiny_params, split_dir, tmp_path / "slow", feature_cache=False)
    assert list((tmp_path / "cache").glob("features-*.npy"))  # the fast path really ran
    for name in ("head.1.weight", "head.1.bias"):
        torch.testing.assert_close(fast["state_dict"][name], slow["state_dict"][name], rtol=1e-4, atol=1e-5)
    assert fast["meta"]["epoch"] == slow["meta"]["epoch"]


def test_same_seed_same_model_other_seed_other_model(split_dir, tiny_params, tmp_path):
    a = trained_state("scratch", tiny_params, split_dir, tmp_path / "a")["state_dict"]
    b = trained_state("scratch", tiny_params, split_dir, tmp_path / "b")["state_dict"]
    c = trained_state("scratch", tiny_params | {"seed": 7}, split_dir, tmp_path / "c")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.7.weight"], c["classifier.7.weight"])


def test_dvclive_curves_have_one_row_per_epoch(split_dir, tiny_params, tmp_path):
    trained_state("scratch", tiny_params, split_dir, tmp_path / "run")
    for name in ("train/loss", "val/loss", "train/accuracy", "val/accuracy"):
        rows = (tmp_path / "run" / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert len(rows) == 1 + tiny_params["train_scratch"]["epochs"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(split_dir, tiny_params, tmp_path):
    """torchrun with 2 CPU processes (DDP, gloo) and the same global batch gives the single-process model."""
    params = tiny_params | {"train_scratch": tiny_params["train_scratch"] | {"batch_size": 7}}  # uneven shards
    results = {}
    for procs in (1, 2):
        work = tmp_path / f"ddp{procs}"
        (work / "data").mkdir(parents=True)
        (work / "data" / "split").symlink_to(split_dir)
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
        result = subprocess.run(
            launcher + [str(PROJECT / "stages" / "train_scratch.py")],
            cwd=work,
            env=venv_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        results[procs] = torch.load(work / "models" / "scratch.pt", weights_only=True)["state_dict"]
    for name, value in results[1].items():
        torch.testing.assert_close(results[2][name], value, rtol=1e-3, atol=1e-5)

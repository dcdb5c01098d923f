import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import PROJECT, Workspace, built_once, make_tiny_params, venv_env
from torch import nn

from brain_tumor.core.arrays import load_split
from brain_tumor.core.params import typed
from brain_tumor.data import ingest, split
from brain_tumor.training import prefix, resume, train
from brain_tumor.training.looks import Looks
from brain_tumor.training.models import GlobalDropout, seed_dropout, sync_batchnorm


def build_tiny_split(base: Path) -> None:
    """A real (tiny, synthetic) split made by the ingest and split stages' code."""
    params = typed(make_tiny_params())
    ingest.build_dataset(params, base / "raw", base / "dataset", base / "ingest.json")
    split.split_dataset(params, base / "dataset", base / "split", base / "split.json", base / "people")


@pytest.fixture
def split_dir(tmp_path_factory, tmp_path, monkeypatch):
    """This test's copy of the tiny split (made once per session), and its own empty cache."""
    monkeypatch.setenv("BRAIN_TUMOR_CACHE", str(tmp_path / "split-cache"))  # the builder's, if this test builds
    built = built_once(tmp_path_factory, "tiny-split", build_tiny_split) / "split"
    monkeypatch.setenv("BRAIN_TUMOR_CACHE", str(tmp_path / "cache"))
    return Path(shutil.copytree(built, tmp_path / "split"))


@pytest.mark.slow
def test_images_are_decoded_once_into_a_keyed_cache(split_dir, tmp_path):
    first = load_split(split_dir, "train", 32)
    cached = sorted((tmp_path / "cache").glob("train-32px-*"))
    assert len(cached) == 1 and first.images.shape[1:] == (32, 32, 3)
    mtime = (cached[0] / "array.npy").stat().st_mtime_ns
    again = load_split(split_dir, "train", 32)
    assert (cached[0] / "array.npy").stat().st_mtime_ns == mtime and again.key == first.key
    assert load_split(split_dir, "train", 48).key != first.key  # another size, another entry


def forge(entry: Path, change) -> None:
    """Replace a cache entry's array and its checksum together, as a forger (or a careless tool) would."""
    import hashlib
    import json

    array = np.load(entry / "array.npy")
    change(array)
    np.save(entry / "array.npy", array)
    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256((entry / "array.npy").read_bytes()).hexdigest()
    (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decoded", "prefix"])
def test_a_cache_entry_replaced_with_its_checksum_is_caught_by_recomputed_rows(
    split_dir, tiny_params, tmp_path, kind, capsys
):
    """Every row replaced (a wholesale swap) is caught on the next load: the sampled rows are recomputed from
    their sources; the entry is rebuilt with one warning, and what the reader gets is the true content."""
    cfg = tiny_params["train_transfer"] | {"unfreeze_last": 2}
    images = load_split(split_dir, "train", cfg["image_size"])
    if kind == "decoded":
        load = lambda: load_split(split_dir, "train", cfg["image_size"]).images  # noqa: E731
    else:
        model = train.build_model("transfer", typed(tiny_params | {"train_transfer": cfg}).train_transfer)
        load = lambda: prefix.prefix_views(model, images, 1, prefix.PREFIX_BATCH, torch.device("cpu"), None)  # noqa: E731
    truth = np.array(load())
    entry = next((tmp_path / "cache").glob("train-*" if kind == "decoded" else "prefix-*"))
    capsys.readouterr()
    forge(entry, lambda a: a.__setitem__(..., a[::-1].copy()))  # the rows in reverse order: same bytes, wrong rows
    assert np.array_equal(np.array(load()), truth)
    warning = capsys.readouterr().err
    assert f"cache {entry}: row" in warning and "rebuilding it" in warning
    assert np.array_equal(np.array(load()), truth) and capsys.readouterr().err == ""  # rebuilt: trusted again


@pytest.mark.slow
def test_the_prefix_cache_is_keyed_by_batch_size(split_dir, tiny_params, tmp_path):
    """Kernels may round differently for another batch size, so another size is another entry, never a
    stale one from the old size."""
    cfg = tiny_params["train_transfer"] | {"unfreeze_last": 2}
    model = train.build_model("transfer", typed(tiny_params | {"train_transfer": cfg}).train_transfer)
    images = load_split(split_dir, "train", cfg["image_size"])
    for batch in (prefix.PREFIX_BATCH, 3, prefix.PREFIX_BATCH):
        prefix.prefix_views(model, images, 1, batch, torch.device("cpu"), None)
    assert len(list((tmp_path / "cache").glob("prefix-*"))) == 2


@pytest.mark.slow
def test_the_prefix_cache_is_keyed_by_the_head_standardisation(split_dir, tiny_params, tmp_path, capsys):
    """A model with another first layer gets its own entry: never the other's, never a rebuild back and forth."""
    images = load_split(split_dir, "train", tiny_params["train_transfer"]["image_size"])
    views = {}
    for kind in ("none", "histogram", "none"):
        cfg = tiny_params["train_transfer"] | {"unfreeze_last": 2, "head_standardisation": kind}
        model = train.build_model("transfer", typed(tiny_params | {"train_transfer": cfg}).train_transfer)
        views.setdefault(kind, prefix.prefix_views(model, images, 1, prefix.PREFIX_BATCH, torch.device("cpu"), None))
    assert len(list((tmp_path / "cache").glob("prefix-*"))) == 2 and "rebuilding" not in capsys.readouterr().err
    assert not np.allclose(views["none"], views["histogram"])


def trained_state(kind, params, split_dir, out: Path, **kw) -> dict:
    train.train_model(kind, typed(params), split_dir, out / "model.pt", out / "live", **kw)
    return torch.load(out / "model.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes",
    [
        {"unfreeze_last": 0, "augment": False, "tta_flip": False},
        # lr 1e-7: Adam moves every weight by about lr per step whatever its gradient, so at larger lr float
        # noise in near-zero gradients (the folded BatchNorm of the cached prefix) shows; at 1e-7 the check
        # rests on the BatchNorm running statistics, which depend on every activation of both paths
        {"unfreeze_last": 2, "augment": True, "tta_flip": True, "label_smoothing": 0.1, "lr_schedule": "cosine"}
        | {"lr": 1e-7},
        {"unfreeze_last": 0, "augment": True, "tta_flip": True, "intensity_looks": 1, "domain_looks": 2}
        | {"balance_acquisition": True, "lesion_copies": 1, "head_standardisation": "histogram"},
    ],
    ids=["frozen-backbone", "last-blocks-flips-tta", "looks-balanced-standardised"],
)
def test_frozen_prefix_computed_once_matches_full_forward(split_dir, tiny_params, tmp_path, changes):
    params = tiny_params | {"train_transfer": tiny_params["train_transfer"] | changes}
    fast = trained_state("transfer", params, split_dir, tmp_path / "fast")
    slow = trained_state("transfer", params, split_dir, tmp_path / "slow", feature_cache=False)
    assert list((tmp_path / "cache").glob("prefix-*/array.npy"))  # the fast path really ran
    trained = [
        k
        for k in slow["state_dict"]
        if k.startswith("head.") or (changes["unfreeze_last"] and k.startswith("backbone.18."))
    ]
    assert trained
    for name in trained:
        torch.testing.assert_close(fast["state_dict"][name], slow["state_dict"][name], rtol=1e-3, atol=1e-5, msg=name)
    assert fast["meta"]["epoch"] == slow["meta"]["epoch"]


@pytest.mark.slow
def test_looks_change_what_training_sees(split_dir, tiny_params, tmp_path):
    """The looks (an intensity remapping, a domain-randomised view) reach the model: with them the head learns
    something else; the cache holds every look and mirror (view look * 2 + mirror), look 0 being the plain
    scan's entry."""
    cfg = tiny_params["train_transfer"] | {"unfreeze_last": 0}
    plain = trained_state("transfer", tiny_params | {"train_transfer": cfg}, split_dir, tmp_path / "plain")
    looks = cfg | {"intensity_looks": 1, "domain_looks": 1}
    remapped = trained_state("transfer", tiny_params | {"train_transfer": looks}, split_dir, tmp_path / "looks")
    assert not torch.equal(plain["state_dict"]["head.1.weight"], remapped["state_dict"]["head.1.weight"])
    model = train.build_model("transfer", typed(tiny_params | {"train_transfer": looks}).train_transfer)
    images = load_split(split_dir, "train", cfg["image_size"])
    both = Looks(looks["seed"] + 3, len(images.labels), intensity=1, domain=1)
    views = prefix.prefix_views(model, images, 2, prefix.PREFIX_BATCH, torch.device("cpu"), None, looks=both)
    assert views.shape[1] == 6
    np.testing.assert_array_equal(
        views[:, :2], prefix.prefix_views(model, images, 2, prefix.PREFIX_BATCH, torch.device("cpu"), None)
    )
    assert not np.allclose(views[:, 0], views[:, 2]) and not np.allclose(views[:, 2], views[:, 4])


@pytest.mark.slow
def test_same_seed_same_model_other_seed_other_model(split_dir, tiny_params, tmp_path):
    a = trained_state("scratch", tiny_params, split_dir, tmp_path / "a")["state_dict"]
    b = trained_state("scratch", tiny_params, split_dir, tmp_path / "b")["state_dict"]
    other = tiny_params | {"train_scratch": tiny_params["train_scratch"] | {"seed": 7}}
    c = trained_state("scratch", other, split_dir, tmp_path / "c")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.7.weight"], c["classifier.7.weight"])


@pytest.mark.slow
def test_dvclive_curves_have_one_row_per_epoch(split_dir, tiny_params, tmp_path):
    trained_state("scratch", tiny_params, split_dir, tmp_path / "run")
    for name in ("train/loss", "val/loss", "train/accuracy", "val/accuracy"):
        rows = (tmp_path / "run" / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert len(rows) == 1 + tiny_params["train_scratch"]["epochs"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,changes",
    [
        # one stage run for the whole DDP path (flips, dropout, unfrozen BatchNorm, the global batch); the
        # dropout masks and BatchNorm statistics across ranks are checked exactly in float64 below
        # Adam moves every weight by about lr per step whatever its gradient, so float noise in near-zero
        # gradients shows at lr 1e-4; at 1e-7 the check rests on BatchNorm's running statistics, which a
        # rank-local BatchNorm (or rank-dependent flips) gets wrong by about 1e-2
        ("transfer", {"augment": True, "unfreeze_last": 2, "lr": 1e-7}),
    ],
    ids=["transfer-augment-unfrozen"],
)
def test_two_gloo_processes_match_one_process(split_dir, tiny_params, tmp_path, kind, changes):
    """torchrun with 2 CPU processes (DDP, gloo) and the same global batch gives the single-process model.

    Batches of 7 split 4 + 3 between the ranks: the flips must not depend on the rank, dropout must drop
    what one process drops, and BatchNorm layers that train must normalise over the global batch.
    """
    stage = f"train_{kind}"
    params = tiny_params | {stage: tiny_params[stage] | {"batch_size": 7} | changes}
    one = trained_state(kind, params, split_dir, tmp_path / "one")["state_dict"]
    work = Workspace(tmp_path / "ddp", params, split_dir)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        launcher + [str(PROJECT / "stages" / f"{stage}.py")],
        cwd=work.root,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=600,  # far above the seconds this takes: a hang fails, a slow machine does not
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = torch.load(work.root / "models" / f"{kind}.pt", weights_only=True)["state_dict"]
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-3, atol=1e-5, msg=name)


def _sync_batchnorm_rank(rank: int, out: Path) -> None:
    rendezvous = f"file://{out.parent / 'rendezvous'}"  # a file, not a port: nothing to race for
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2)
    torch.manual_seed(0)
    x, y = torch.randn(7, 3, 6, 6, dtype=torch.float64), torch.randint(0, 2, (7,))

    def model() -> nn.Module:
        torch.manual_seed(1)
        layers = [nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        net = nn.Sequential(*layers, GlobalDropout(0.5), nn.Linear(4, 2)).double()
        seed_dropout(net, 3)
        return net

    def step(net: nn.Module, rows: torch.Tensor, ranks: int) -> dict:
        net.train()
        run = nn.parallel.DistributedDataParallel(net) if ranks > 1 else net
        loss = nn.functional.cross_entropy(run(x[rows]), y[rows], reduction="sum") * ranks / len(x)
        loss.backward()
        return {n: p.grad for n, p in net.named_parameters()} | dict(net.named_buffers())

    ddp = model()
    sync_batchnorm(ddp)
    shared = step(ddp, torch.tensor_split(torch.arange(7), 2)[rank], 2)
    if rank == 0:
        dist.destroy_process_group()  # the reference runs as one process
        torch.save({"ddp": shared, "one": step(model(), torch.arange(7), 1)}, out)
    else:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_batchnorm_and_dropout_give_the_single_process_gradients(tmp_path):
    """In float64, 2 DDP ranks (batch split 4 + 3) compute exactly the single-process gradients and statistics."""
    out = tmp_path / "grads.pt"
    torch.multiprocessing.spawn(_sync_batchnorm_rank, args=(out,), nprocs=2)
    saved = torch.load(out, weights_only=True)
    assert saved["one"].keys() == saved["ddp"].keys()
    for name, value in saved["one"].items():
        torch.testing.assert_close(saved["ddp"][name].double(), value.double(), rtol=1e-10, atol=1e-12, msg=name)


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file's bytes under a folder (or the one file), by relative path."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_result(split_dir, tiny_params, tmp_path):
    """Killed by SIGTERM right after epoch 1 of 3 (the state is always saved after the first epoch), then by
    SIGKILL after epoch 2 of the resumed run, the stage run a third time resumes from its saved state and
    ends byte-identical to an uninterrupted run: the model and every DVCLive file."""
    changes = {"epochs": 3, "unfreeze_last": 1, "augment": True, "lr_schedule": "cosine", "label_smoothing": 0.1}
    params = tiny_params | {"train_transfer": tiny_params["train_transfer"] | changes}
    whole = Workspace(tmp_path / "whole", params, split_dir)
    assert whole.run("train_transfer").returncode == 0
    killed = Workspace(tmp_path / "killed", params, split_dir)
    first = killed.run("train_transfer", BRAIN_TUMOR_KILL_AFTER_EPOCH="1:TERM")
    assert first.returncode == 143 and "Traceback" not in first.stderr, first.stderr
    assert not (killed.root / "models" / "transfer.pt").exists()  # nothing that looks finished
    assert not (killed.root / "metrics" / "train_transfer").exists()
    assert (killed.root / "models" / "transfer.resume.pt").is_file()  # the state to resume from
    second = killed.run("train_transfer", BRAIN_TUMOR_KILL_AFTER_EPOCH="2")
    assert second.returncode == -9 and "resuming after epoch 1/3" in second.stdout, second.stderr
    again = killed.run("train_transfer")
    assert again.returncode == 0, again.stderr
    resumed = re.search(r"resuming after epoch (\d)/3", again.stdout)  # 2 if epoch 2's state was written
    assert resumed and again.stdout.count("logged again") == int(resumed[1])
    assert "transfer epoch  3/3" in again.stdout
    for output in ("models/transfer.pt", "metrics/train_transfer"):
        assert tree_bytes(killed.root / output) == tree_bytes(whole.root / output), output
    assert not (killed.root / "models" / "transfer.resume.pt").exists()  # a finished run removes its state
    leftovers = [p.name for p in (killed.root / "metrics").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_resume_state_of_another_run_is_not_used(tmp_path, tiny_params, capsys):
    """The state is used only by a run with the same fingerprint, which changes with any training param."""
    cfg = typed(tiny_params).train_transfer
    fingerprint = train.run_fingerprint(cfg, "0" * 64, True, torch.device("cpu"))
    other_lr = train.run_fingerprint(replace(cfg, lr=cfg.lr * 2), "0" * 64, True, torch.device("cpu"))
    other_split = train.run_fingerprint(cfg, "1" * 64, True, torch.device("cpu"))
    assert len({fingerprint, other_lr, other_split}) == 3
    path = tmp_path / "transfer.resume.pt"
    resume.ResumeFile(path, fingerprint).save({"epoch": 1})
    assert resume.ResumeFile(path, fingerprint).load() == {"epoch": 1, "fingerprint": fingerprint}
    capsys.readouterr()
    assert resume.ResumeFile(path, other_lr).load() is None
    assert "from another run (other params, data or code); starting afresh" in capsys.readouterr().out


def test_resume_state_is_written_after_epoch_one_then_when_training_outweighs_writing_tenfold(tmp_path):
    """The write policy on a clock of the test's own: no dependence on how fast this machine is."""
    readings = iter([0.0, 5.0, 5.0, 7.0, 12.0, 27.0])  # start; epoch 1 ends; a 2 s write; epochs 2 and 3 end
    resume_file = resume.ResumeFile(tmp_path / "model.resume.pt", "fingerprint", clock=lambda: next(readings))
    assert resume_file.due(1)  # always after the first epoch
    resume_file.save({"epoch": 1})
    assert resume_file.last_write_s == 2.0 and resume_file.load() == {"epoch": 1, "fingerprint": "fingerprint"}
    assert not resume_file.due(2)  # 5 s of training since a 2 s write: not yet
    assert resume_file.due(3)  # 20 s = SPEND x 2 s


@pytest.mark.slow
def test_a_stop_signal_while_outputs_are_put_in_place_ends_as_a_success_and_one_before_leaves_nothing(
    split_dir, tiny_params, tmp_path
):
    """SIGTERM between the model file and the DVCLive folder (the moment the outputs are put in place) is held
    and dropped: exit 0 with every output, consistent with each other. SIGTERM after the last epoch, before
    that moment, ends the run with 143 and no output at all."""
    import json

    from brain_tumor.training.checkpoint import load_trained

    work = Workspace(tmp_path / "late", tiny_params, split_dir)
    late = work.run("train_scratch", BRAIN_TUMOR_SIGTERM_AT="publishing")
    assert late.returncode == 0 and "SIGTERM arrived while the finished outputs" in late.stderr, late.stderr
    _, meta = load_trained(work.root / "models" / "scratch.pt")
    summary = json.loads((work.root / "metrics" / "train_scratch" / "metrics.json").read_text())
    assert summary["best"]["epoch"] == meta["epoch"] and summary["best"]["val_loss"] == meta["val_loss"]
    models = work.root / "models"
    assert (models / "scratch.seen.npz").is_file() and not (models / "scratch.resume.pt").exists()
    assert not list(work.root.rglob(".tmp-*"))

    work = Workspace(tmp_path / "early", tiny_params, split_dir)
    epochs = tiny_params["train_scratch"]["epochs"]
    early = work.run("train_scratch", BRAIN_TUMOR_KILL_AFTER_EPOCH=f"{epochs}:TERM")
    assert early.returncode == 143 and early.stderr.strip().endswith("stopped by SIGTERM; partial outputs removed")
    outputs = sorted(p.name for p in (work.root / "models").iterdir() if not p.name.startswith("."))
    assert outputs == ["scratch.resume.pt"]  # no output, only the state a re-run resumes from
    assert not (work.root / "metrics" / "train_scratch").exists() and not list(work.root.rglob(".tmp-*"))


@pytest.mark.slow
def test_the_training_stage_rebuilds_a_forged_cache_and_writes_the_same_model(split_dir, tiny_params, tmp_path):
    """Through the stage script: the decoded images of the train split inverted, checksum and all; the next
    run says so in one warning line, rebuilds the entry and writes the model byte for byte as before."""
    work = Workspace(tmp_path / "work", tiny_params, split_dir)
    assert work.run("train_scratch").returncode == 0
    first = (work.root / "models" / "scratch.pt").read_bytes()
    entry = next((tmp_path / "cache").glob("train-*"))
    forge(entry, lambda a: a.__setitem__(..., 255 - a))
    again = work.run("train_scratch")
    assert again.returncode == 0, again.stderr
    assert f"warning: cache {entry}: row" in again.stderr and "rebuilding it" in again.stderr
    assert (work.root / "models" / "scratch.pt").read_bytes() == first

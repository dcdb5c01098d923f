"""Trust nothing between stages: each artifact a stage reads is checked against its contract, through the real
stage scripts on a copy of the reproduced tiny pipeline. A violation is exit 1 with exactly one `error:` line
naming the file, no traceback, nothing left behind, and no output changed."""

import json
import shutil

import pandas as pd
import pytest
from conftest import assert_one_error, copy_of, sh

from brain_tumor.core.outputs import file_sha256

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline(baseline_repo, tmp_path_factory):
    return copy_of(baseline_repo, tmp_path_factory.mktemp("contracts") / "repo")


def outputs(repo) -> dict[str, bytes]:
    folders = ("models", "metrics", "reports", "data/split")
    return {str(p): p.read_bytes() for f in folders for p in sorted((repo / f).rglob("*")) if p.is_file()}


def refused(repo, stage: str, *needles: str) -> str:
    """Run `stage`; assert one error line holding `needles`, no traceback, no debris; return the line."""
    result = sh(["python", "-m", f"stages.{stage}"], repo, check=False)
    line = assert_one_error(result, *needles)
    assert result.stderr.strip().splitlines() == [line]  # and nothing else on stderr
    assert not list(repo.rglob(".tmp-*"))
    return line


def edit_manifest(repo, change) -> None:
    path = repo / "data" / "split" / "split_manifest.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(table)
    table.to_csv(path, index=False)


def unchanged(table: pd.DataFrame) -> None:
    """The control: the file rewritten as it was."""


def label_contradicting_folder(table: pd.DataFrame) -> None:
    table.loc[0, "label"] = "1" if table.loc[0, "label"] == "0" else "0"


def path_outside(table: pd.DataFrame) -> None:
    table.loc[0, "file"] = "../../params.yaml"


def non_integer_label(table: pd.DataFrame) -> None:
    table.loc[0, "label"] = "tumour"


def no_sha256_column(table: pd.DataFrame) -> None:
    table.drop(columns=["sha256"], inplace=True)


def val_with_one_class(table: pd.DataFrame) -> None:
    table.drop(index=table.index[(table["split"] == "val") & (table["label"] == "0")], inplace=True)


@pytest.mark.parametrize(
    "change,needles",
    [
        (unchanged, ()),
        (label_contradicting_folder, ("row 2", "class")),
        (path_outside, ("row 2", "file")),
        (non_integer_label, ("row 2: label 'tumour' is not allowed",)),
        (no_sha256_column, ("no column sha256",)),
        (val_with_one_class, ("val split",)),
    ],
    ids=["control", "label-contradicts-folder", "path-outside", "non-integer-label", "missing-column", "val-one-class"],
)
def test_a_split_manifest_that_cannot_be_trusted_stops_training_and_evaluate(
    pipeline, tmp_path, change, needles, monkeypatch
):
    repo = copy_of(pipeline, tmp_path / "repo")
    edit_manifest(repo, change)
    if not needles:  # the control: the same file rewritten passes every check the stages make on it
        from brain_tumor.core.arrays import load_split
        from brain_tumor.evaluation.evaluate import read_report_manifest

        monkeypatch.setenv("BRAIN_TUMOR_CACHE", str(tmp_path / "cache"))
        manifest = read_report_manifest(repo / "data" / "split")
        assert all(len(load_split(repo / "data" / "split", s, 32, manifest).labels) for s in ("train", "val", "test"))
        return
    before = outputs(repo)
    stages = ("train_transfer", "evaluate") if "class" in needles else ("evaluate",)  # training: one case
    for stage in stages:
        refused(repo, stage, "data/split/split_manifest.csv", *needles)
    assert outputs(repo) == before


def test_garbage_manifest_is_one_line(pipeline, tmp_path):
    repo = copy_of(pipeline, tmp_path / "repo")
    (repo / "data" / "split" / "split_manifest.csv").write_bytes(b"\x00\xff garbage \x00" * 50)
    assert refused(repo, "evaluate") == (
        "error: data/split/split_manifest.csv: not a readable split manifest ('utf-8' codec can't decode byte 0xff "
        "in position 1: invalid start byte); run `dvc repro split`"
    )


def test_swapped_models_and_a_model_of_another_split_are_refused(pipeline, tmp_path):
    repo = copy_of(pipeline, tmp_path / "repo")
    models = repo / "models"
    before = outputs(repo)
    shutil.move(models / "scratch.pt", models / "tmp.pt")
    shutil.move(models / "transfer.pt", models / "scratch.pt")
    shutil.move(models / "tmp.pt", models / "transfer.pt")
    refused(repo, "evaluate", "models/scratch.pt: holds the transfer model, expected the scratch model")
    refused(repo, "export", "holds the transfer model")
    shutil.move(models / "scratch.pt", models / "tmp.pt")
    shutil.move(models / "transfer.pt", models / "scratch.pt")
    shutil.move(models / "tmp.pt", models / "transfer.pt")
    assert outputs(repo) == before
    edit_manifest(repo, lambda t: t.sort_values("id", inplace=True))  # the same rows, another file: another split
    refused(repo, "evaluate", "trained on another split")


def test_a_threshold_file_export_cannot_trust_is_one_line(pipeline, tmp_path):
    """The export stage's path, bound to the model it exports (every kind of bad threshold file:
    test_inference.py)."""
    repo = copy_of(pipeline, tmp_path / "repo")
    path = repo / "models" / "transfer.threshold.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"model_sha256": "0" * 64}))
    before = outputs(repo)
    model = file_sha256(repo / "models" / "transfer.pt")
    assert refused(repo, "export") == (
        "error: models/transfer.threshold.json: chosen for another model file (sha256 000000000000..., the model is "
        f"{model[:12]}...); run `dvc repro evaluate`"
    )
    assert outputs(repo) == before


def test_a_missing_input_names_the_stage_that_makes_it(pipeline, tmp_path):
    repo = copy_of(pipeline, tmp_path / "repo")
    (repo / "models" / "transfer.threshold.json").unlink()
    assert refused(repo, "export") == (
        "error: models/transfer.threshold.json: no such file; run `dvc repro evaluate` first"
    )


@pytest.mark.parametrize(
    "target,message",
    [
        ("models", "error: models: already exists"),
        # torch's compile cache, made inside the project's cache folder as torch loads (core/stage.py)
        ("data/cache", "error: {repo}/data/cache/torchinductor: a file stands where a folder is needed"),
    ],
    ids=["models", "data-cache"],
)
def test_an_output_folder_that_is_a_file_is_one_line(pipeline, tmp_path, target, message):
    """The training stage's outputs (ingest's: test_faults.py)."""
    repo = copy_of(pipeline, tmp_path / "repo")
    shutil.rmtree(repo / target)
    (repo / target).write_text("not a folder")
    assert refused(repo, "train_transfer") == message.format(repo=repo)


def rewrite_record(path, **changes) -> None:
    import torch

    from brain_tumor.training.checkpoint import save_checkpoint

    saved = torch.load(path, weights_only=True)
    save_checkpoint({"state_dict": saved["state_dict"], "meta": saved["meta"] | changes}, path)


def test_a_model_that_is_not_the_validated_one_is_refused_by_evaluate(pipeline, tmp_path):
    """The transfer model was validated with flip averaging; loaded without it (a record that lost the flag,
    as the old second model factory did), it computes other validation figures than its record holds."""
    repo = copy_of(pipeline, tmp_path / "repo")
    before = outputs(repo)
    rewrite_record(repo / "models" / "transfer.pt", tta_flip=False)
    line = refused(repo, "evaluate", "models/transfer.pt", "not the model that was validated", "tta_flip False")
    assert "validation loss" in line
    rewrite_record(repo / "models" / "transfer.pt", tta_flip=True, val_loss=0.25)  # a record that lies about it
    refused(repo, "evaluate", "models/transfer.pt", "its record says 0.250000")
    assert {k: v for k, v in outputs(repo).items() if not k.endswith("transfer.pt")} == {
        k: v for k, v in before.items() if not k.endswith("transfer.pt")
    }

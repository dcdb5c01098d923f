"""`brain-tumor predict` and Grad-CAM on tiny models trained once per session (conftest's `tiny`, shared with
test_export.py)."""

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TRANSFER_THRESHOLD, save, scan, truncated_jpeg
from PIL import Image

from brain_tumor.core.arrays import load_split
from brain_tumor.core.outputs import file_sha256
from brain_tumor.evaluation import explain
from brain_tumor.evaluation.metrics import p_tumor
from brain_tumor.evaluation.predictions import predict_logits
from brain_tumor.serving.cli import main
from brain_tumor.serving.inference import model_input
from brain_tumor.serving.predict import COLUMNS, load_model

pytestmark = pytest.mark.slow  # trains tiny models (about 20 s, conftest's `tiny`); `make test-fast` skips it


def split_test_images(tiny: Path) -> list[Path]:
    return sorted((tiny / "split" / "test").rglob("*.png"))


@pytest.fixture
def scans(tiny: Path, tmp_path: Path) -> Path:
    """Five test scans (one in a subfolder, one not square) and five files that ingest would refuse."""
    folder = tmp_path / "scans"
    (folder / "more").mkdir(parents=True)
    images = split_test_images(tiny)[:4]
    for i, path in enumerate(images):
        shutil.copy(path, folder / ("more" if i == 0 else ".") / f"scan{i}.png")
    save(folder / "wide.jpg", np.asarray(Image.open(images[0]).convert("RGB").resize((70, 50))))
    truncated_jpeg(folder / "broken.jpg", seed=3)
    (folder / "notes.txt").write_text("not a scan\n")
    (folder / "empty.png").touch()
    save(folder / "blank.png", np.full((40, 40, 3), 17, dtype=np.uint8))
    (folder / "link.png").symlink_to(images[1])
    return folder


BAD = {
    "broken.jpg": "truncated_or_corrupt",
    "notes.txt": "not_an_image",
    "empty.png": "empty_file",
    "blank.png": "blank_image",
    "link.png": "symlink",
}


def test_a_folder_with_bad_files_gives_a_row_per_file_and_exit_zero(tiny, scans, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(scans), "--model", str(tiny / "models" / "transfer.pt"), "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == COLUMNS and len(table) == 10
    names = table["path"].map(lambda p: Path(p).name)
    bad = names.isin(list(BAD))
    assert dict(zip(names[bad], table.loc[bad, "reason"])) == BAD
    assert (table.loc[bad, "p_tumor"] == "").all() and (table.loc[bad, "predicted_class"] == "").all()
    good = table[~bad]
    p = good["p_tumor"].astype(float)
    assert ((p >= 0) & (p <= 1)).all() and (good["reason"] == "").all()
    assert (good["predicted_class"] == np.where(p >= TRANSFER_THRESHOLD, "tumor", "non_tumor")).all()
    assert (table["threshold"] == TRANSFER_THRESHOLD).all() and (table["model"] == "transfer.pt").all()
    assert (table["model_sha256"] == file_sha256(tiny / "models" / "transfer.pt")).all()
    err = capsys.readouterr().err
    assert "predicted 5 of 10" in err and "transfer.threshold.json" in err


def test_table_on_stdout_json_file_and_default_threshold(tiny, scans, tmp_path, capsys, monkeypatch):
    (tmp_path / "models").mkdir()
    shutil.copy(tiny / "models" / "scratch.pt", tmp_path / "models")  # without its threshold file
    monkeypatch.chdir(tmp_path)  # `--model scratch` is models/scratch.pt here
    assert main(["predict", str(scans / "scan1.png"), str(scans / "notes.txt"), "--model", "scratch"]) == 0
    shown = capsys.readouterr()
    assert "threshold 0.5 (default: no models/scratch.threshold.json)" in shown.out
    assert "scan1.png" in shown.out and "not_an_image" in shown.out
    out = tmp_path / "p.json"
    assert main(["predict", str(scans), "--model", "scratch", "--out", str(out), "--batch-size", "2"]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 10 and set(rows[0]) == set(COLUMNS)
    assert all((r["p_tumor"] is None) == bool(r["reason"]) for r in rows)
    assert {r["threshold"] for r in rows} == {0.5} and {r["model"] for r in rows} == {"scratch.pt"}


def test_zip_members_are_predicted_and_unsafe_entries_refused(tiny, tmp_path):
    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, path in enumerate(split_test_images(tiny)[:3]):
            zf.write(path, f"batch/s{i}.png")
        zf.writestr("../escape.png", b"x")
        zf.writestr("__MACOSX/._s0.png", b"x")
    out = tmp_path / "p.csv"
    assert main(["predict", str(archive), "--model", str(tiny / "models" / "scratch.pt"), "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert table.loc[f"{archive}:../escape.png", "reason"] == "unsafe_zip_entry"
    assert table.loc[[f"{archive}:batch/s{i}.png" for i in range(3)], "p_tumor"].astype(float).between(0, 1).all()
    assert len(table) == 4  # the macOS resource fork is skipped, as ingest skips it


def test_nothing_predictable_exits_non_zero_with_one_error_line(tiny, tmp_path, capsys):
    truncated_jpeg(tmp_path / "only" / "broken.jpg", seed=1)
    (tmp_path / "only" / "notes.txt").write_text("x")
    model = str(tiny / "models" / "scratch.pt")
    assert main(["predict", str(tmp_path / "only"), str(tmp_path / "missing.png"), "--model", model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no file could be predicted")
    assert "no_such_file 1" in err[0] and "truncated_or_corrupt 1" in err[0]


def test_a_missing_model_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "a.png", scan(0))
    assert main(["predict", "a.png"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: models/transfer.pt: no such model file; run `dvc repro` to build it or `dvc pull` to fetch it"
    ]


def test_predict_gives_the_evaluate_stage_probabilities(tiny):
    """Same decoding, resize and normalisation as training and evaluation: the same p_tumor."""
    model = load_model(str(tiny / "models" / "transfer.pt"))
    test = load_split(tiny / "split", "test", model.image_size)
    files = [
        tiny / "split" / f for f in pd.read_csv(tiny / "split" / "split_manifest.csv").query("split == 'test'")["file"]
    ]
    ours = model.p_tumor(
        model_input([np.asarray(Image.open(f).convert("RGB")) for f in files], 64, model.mean, model.std)
    )
    np.testing.assert_allclose(ours, p_tumor(predict_logits(model.network, test.images, 16)), atol=1e-6)


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_overlay_has_the_image_size_and_a_heat_map_that_is_not_constant(tiny, kind):
    model = load_model(str(tiny / "models" / f"{kind}.pt"))
    images = [np.asarray(Image.open(f).convert("RGB")) for f in split_test_images(tiny)[:8]]
    x = model_input(images, model.image_size, model.mean, model.std)
    # a barely trained model has evidence (a positive map) for some images and classes, not all
    spread = [np.ptp(explain.heatmaps(model.network, x, [c] * len(x)), axis=(1, 2)) for c in (0, 1)]
    assert np.max(spread) > 0.5
    assert all(p.grad is None for p in model.network.parameters())  # nothing left behind in the model
    wide = np.asarray(Image.fromarray(images[0]).resize((70, 50)))
    heat = explain.heatmaps(model.network, model_input([wide], model.image_size, model.mean, model.std), [1])
    picture = explain.blend(wide, heat[0])
    assert picture.shape == (50, 70, 3) and picture.dtype == np.uint8
    assert np.abs(picture.astype(int) - wide).mean() > 5  # the heat map's colours are really laid over the scan


def test_explain_writes_one_overlay_per_image_at_its_size(tiny, scans, tmp_path):
    out, figures = tmp_path / "p.csv", tmp_path / "explain"
    model = str(tiny / "models" / "transfer.pt")
    assert main(["predict", str(scans), "--model", model, "--out", str(out), "--explain", str(figures)]) == 0
    pngs = {p.name: Image.open(p).size for p in figures.glob("*.png")}
    assert len(pngs) == 5 and all(not name.startswith("_") for name in pngs)
    assert next(size for name, size in pngs.items() if name.endswith("wide.jpg.png")) == (70, 50)


def test_gallery_is_one_png(tiny, tmp_path):
    model = load_model(str(tiny / "models" / "scratch.pt"))
    test = load_split(tiny / "split", "test", model.image_size)
    p = p_tumor(predict_logits(model.network, test.images, 16))
    explain.gallery(model.network, np.asarray(test.images), test.labels, p, 0.5, tmp_path / "g.png", 3, 2)
    assert Image.open(tmp_path / "g.png").size[0] > 400


def test_grad_cam_of_a_flip_averaging_model_explains_the_scan_as_it_is():
    """With tta the model runs the scan and its mirror; Grad-CAM must show the scan's own map (the one the
    model without tta gives), and leave the model's tta setting as it was."""
    import torch

    from brain_tumor.training.models import ScratchCNN

    torch.manual_seed(0)
    model = ScratchCNN(32)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    plain = explain.heatmaps(model, x, [1, 0])
    model.tta = True
    assert np.allclose(explain.heatmaps(model, x, [1, 0]), plain) and model.tta  # and the flag is restored
    assert not np.allclose(plain, plain[:, :, ::-1])  # the map is not mirror-symmetric to begin with


def test_predict_flags_copies_of_training_scans_as_seen(tiny, tmp_path, capsys):
    """A re-saved (JPEG), re-contrasted (gamma), mirrored or shifted copy of a training scan is the same slice;
    the held-out test scans are not (the split is leak-free). The .pt and the .onnx path both read the
    seen-index beside the model; without one, predict says so and leaves the columns empty."""
    manifest = pd.read_csv(tiny / "split" / "split_manifest.csv")
    train = manifest[manifest["split"] == "train"].iloc[0]
    rgb = np.asarray(Image.open(tiny / "split" / train["file"]).convert("RGB"))
    scans = tmp_path / "scans"
    copies = {
        "resaved.jpg": rgb,
        "gamma.png": (255 * (rgb / 255.0) ** 0.6).astype(np.uint8),
        "mirrored.png": np.ascontiguousarray(rgb[:, ::-1]),
        "shifted.png": np.roll(rgb, 2, axis=1),
    }
    for name, pixels in copies.items():
        save(scans / name, pixels, fmt="JPEG" if name.endswith(".jpg") else None)
    for path in split_test_images(tiny)[:4]:
        shutil.copy(path, scans / f"test-{path.name}")
    for suffix in (".pt", ".onnx"):
        out = tmp_path / f"p{suffix}.csv"
        assert (
            main(["predict", str(scans), "--model", str(tiny / "models" / f"transfer{suffix}"), "--out", str(out)]) == 0
        )
        table = pd.read_csv(out, keep_default_na=False, dtype={"seen_in_training": str}).assign(
            name=lambda t: t["path"].map(lambda p: Path(p).name)
        )
        rows = table.set_index("name")
        for name in copies:
            assert rows.loc[name, "seen_in_training"] == "true", (name, rows.loc[name, "training_similarity"])
            assert rows.loc[name, "nearest_training_scan"] == train["source"]
        held_out = rows[rows.index.str.startswith("test-")]
        assert (held_out["seen_in_training"] == "false").all() and (held_out["training_similarity"] < 0.95).all()
        assert f"{len(copies)} of {len(rows)} scans are the same slice" in capsys.readouterr().err

    alone = tmp_path / "alone.onnx"
    shutil.copy(tiny / "models" / "transfer.onnx", alone)
    out = tmp_path / "alone.csv"
    assert main(["predict", str(scans), "--model", str(alone), "--out", str(out)]) == 0
    assert (pd.read_csv(out, keep_default_na=False, dtype=str)["seen_in_training"] == "").all()
    assert f"note: no {tmp_path / 'alone.seen.npz'} beside the model" in capsys.readouterr().err


def test_a_seen_index_of_another_split_or_damaged_is_one_error_line(tiny, tmp_path, capsys):
    model = tmp_path / "transfer.pt"
    shutil.copy(tiny / "models" / "transfer.pt", model)
    save(tmp_path / "a.png", scan(0))
    for content, needle in ((b"PK\x03\x04 not a zip", "not a seen-index"), (None, "made from another split")):
        if content is None:  # the scratch model's index: the same split, so re-bind it to another one
            with (
                zipfile.ZipFile(tiny / "models" / "scratch.seen.npz") as src,
                zipfile.ZipFile(model.with_suffix(".seen.npz"), "w") as dst,
            ):
                for info in src.infolist():
                    data = src.read(info)
                    if info.filename == "meta.npy":
                        meta = json.loads(str(np.load(io.BytesIO(data))))
                        buf = io.BytesIO()
                        np.save(buf, np.asarray(json.dumps(meta | {"split_manifest_sha256": "0" * 64})))
                        data = buf.getvalue()
                    dst.writestr(info, data)
        else:
            model.with_suffix(".seen.npz").write_bytes(content)
        assert main(["predict", str(tmp_path / "a.png"), "--model", str(model)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {model.with_suffix('.seen.npz')}: {needle}"), err


def test_predict_scores_novelty_and_warns_when_scans_are_unlike_the_training_collection(tiny, tmp_path, capsys):
    """Noise and a checkerboard are far from every training scan in the model's feature space; held-out test
    scans are not. Both the .pt and the .onnx path read the novelty file beside the model; without one (or with
    an ONNX file that gives no feature vectors) predict says so and leaves the columns empty."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for path in split_test_images(tiny)[:4]:
        shutil.copy(path, scans / f"test-{path.name}")
    rng = np.random.default_rng(0)
    save(scans / "odd-noise.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    board = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    save(scans / "odd-board.png", np.repeat(board[..., None], 3, axis=-1))
    for suffix in (".pt", ".onnx"):
        out = tmp_path / f"n{suffix}.csv"
        assert (
            main(["predict", str(scans), "--model", str(tiny / "models" / f"transfer{suffix}"), "--out", str(out)]) == 0
        )
        table = pd.read_csv(out, keep_default_na=False, dtype={"unlike_training": str})
        rows = table.assign(name=table["path"].map(lambda p: Path(p).name)).set_index("name")
        odd, held_out = rows[rows.index.str.startswith("odd-")], rows[rows.index.str.startswith("test-")]
        assert odd["novelty"].min() > held_out["novelty"].max(), rows["novelty"]
        assert (odd["unlike_training"] == "true").all()
        assert set(rows["unlike_training"]) <= {"true", "false"}
        n_unlike = int((rows["unlike_training"] == "true").sum())
        assert f"warning: {n_unlike} of {len(rows)} scans are unlike the training collection" in capsys.readouterr().err

    alone = tmp_path / "alone.pt"
    shutil.copy(tiny / "models" / "transfer.pt", alone)
    out = tmp_path / "alone.csv"
    assert main(["predict", str(scans), "--model", str(alone), "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert (table["unlike_training"] == "").all() and (table["novelty"] == "").all()
    assert (
        f"note: no {tmp_path / 'alone.novelty.npz'} beside the model: novelty not computed" in capsys.readouterr().err
    )

"""ONNX export: the file agrees with PyTorch, documents its preprocessing, and runs without torch."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import TRANSFER_THRESHOLD, truncated_jpeg, venv_env
from PIL import Image

from brain_tumor.core.arrays import load_split
from brain_tumor.core.outputs import file_sha256
from brain_tumor.evaluation.metrics import p_tumor
from brain_tumor.evaluation.predictions import predict_logits
from brain_tumor.serving.cli import main
from brain_tumor.serving.export import PARITY_TOLERANCE
from brain_tumor.serving.inference import normalise
from brain_tumor.serving.predict import load_model

pytestmark = pytest.mark.slow  # builds and trains tiny models (about 20 s); `make test-fast` skips it

KINDS = ("scratch", "transfer")


@pytest.fixture
def exported(tiny: Path) -> Path:
    """The tiny models (conftest's `tiny`, shared with test_predict.py), with their ONNX exports."""
    return tiny


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_matches_pytorch_on_the_test_images(exported, kind):
    torch_model, onnx_model = (load_model(str(exported / "models" / f"{kind}{s}")) for s in (".pt", ".onnx"))
    test = load_split(exported / "split", "test", torch_model.image_size)
    expected = p_tumor(predict_logits(torch_model.network, test.images, 16))
    x = normalise(np.asarray(test.images), onnx_model.mean, onnx_model.std)
    assert np.abs(onnx_model.p_tumor(x) - expected).max() < PARITY_TOLERANCE
    assert np.abs(onnx_model.p_tumor(x[:1]) - expected[:1]).max() < PARITY_TOLERANCE  # the batch axis is dynamic


def test_metadata_documents_preprocessing_classes_threshold_and_source(exported):
    model = onnx.load(str(exported / "models" / "transfer.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["image_size"] == "64" and json.loads(props["mean"]) == [0.5, 0.5, 0.5] and props["color"] == "RGB"
    assert "bilinear" in props["preprocessing"] and "NCHW" in props["preprocessing"]
    assert json.loads(props["classes"]) == ["non_tumor", "tumor"] and "p_tumor" in props["output"]
    assert float(props["threshold"]) == TRANSFER_THRESHOLD and props["tta_flip"] == "true"
    assert props["source_model_sha256"] == file_sha256(exported / "models" / "transfer.pt")
    scratch = {p.key: p.value for p in onnx.load(str(exported / "models" / "scratch.onnx")).metadata_props}
    point = json.loads((exported / "models" / "scratch.threshold.json").read_text())
    assert float(scratch["threshold"]) == point["threshold"] and scratch["threshold_source"] == "scratch.threshold.json"
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


@pytest.mark.parametrize("kind", KINDS)
def test_predict_with_the_onnx_file_equals_predict_with_the_pt_file(exported, tmp_path, kind):
    folder = exported / "split" / "test"
    tables = {}
    for suffix in (".pt", ".onnx"):
        out = tmp_path / f"p{suffix}.csv"
        assert (
            main(["predict", str(folder), "--model", str(exported / "models" / f"{kind}{suffix}"), "--out", str(out)])
            == 0
        )
        tables[suffix] = pd.read_csv(out)
    pt, ox = tables[".pt"], tables[".onnx"]
    assert (pt["path"] == ox["path"]).all() and (pt["threshold"] == ox["threshold"]).all()
    assert np.abs(pt["p_tumor"] - ox["p_tumor"]).max() < PARITY_TOLERANCE


@pytest.mark.parametrize("suffix", [".pt", ".onnx"])
def test_the_served_transfer_model_averages_a_scan_and_its_mirror_as_it_was_validated(exported, tmp_path, suffix):
    """tta_flip is on in the transfer model's record: `brain-tumor predict` (PyTorch and ONNX) gives a scan and
    its mirror image the same P(tumor); the scratch model, trained without it, does not."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, path in enumerate(sorted((exported / "split" / "test").rglob("*.png"))[:4]):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(rgb).save(scans / f"{i}.png")
        Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(scans / f"{i}-mirror.png")
    gaps = {}
    for kind in KINDS:
        out = tmp_path / f"{kind}.csv"
        model = str(exported / "models" / f"{kind}{suffix}")
        assert main(["predict", str(scans), "--model", model, "--out", str(out)]) == 0
        p = pd.read_csv(out).assign(name=lambda t: t["path"].map(lambda s: Path(s).stem)).set_index("name")["p_tumor"]
        gaps[kind] = max(abs(p[str(i)] - p[f"{i}-mirror"]) for i in range(4))
    assert gaps["transfer"] < 1e-5 < gaps["scratch"], gaps


def test_the_onnx_path_never_imports_torch(exported, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for path in sorted((exported / "split" / "test").rglob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    truncated_jpeg(folder / "broken.jpg", seed=2)
    onnx_alone = tmp_path / "transfer.onnx"  # no threshold file beside it: the threshold comes from its metadata
    onnx_alone.write_bytes((exported / "models" / "transfer.onnx").read_bytes())
    out = tmp_path / "p.json"
    script = (
        "import sys\n"
        "from brain_tumor.serving.cli import main\n"
        f"status = main(['predict', {str(folder)!r}, '--model', {str(onnx_alone)!r},"
        f" '--out', {str(out)!r}])\n"
        "assert status == 0, status\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 4 and sum(r["p_tumor"] is not None for r in rows) == 3
    assert {r["threshold"] for r in rows} == {TRANSFER_THRESHOLD}
    assert "transfer.onnx metadata" in result.stderr


def test_explain_refuses_an_onnx_model(exported, tmp_path, capsys):
    model = str(exported / "models" / "scratch.onnx")
    assert main(["predict", str(exported / "split" / "test"), "--model", model, "--explain", str(tmp_path)]) == 1
    assert "--explain needs the PyTorch model" in capsys.readouterr().err

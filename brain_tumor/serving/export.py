"""The export stage: a trained model file becomes an ONNX file that outputs P(tumor) and documents its own
preprocessing and operating point in its metadata, so whoever runs it needs neither this package nor torch.
The contract it writes is read back by `inference.py`."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.outputs import atomic_write, file_sha256
from brain_tumor.evaluation.metrics import p_tumor_tensor
from brain_tumor.serving.inference import (
    PREPROCESSING,
    normalise,
    onnx_p_tumor,
    onnx_session,
    read_threshold,
    threshold_file,
)

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |p_tumor difference| between ONNX Runtime and PyTorch


def metadata(model_path: Path, meta: dict, point: dict) -> dict[str, str]:
    """The ONNX metadata_props: preprocessing, output meaning, classes, operating point and provenance."""
    sidecar = threshold_file(model_path)
    return {
        "preprocessing": PREPROCESSING,
        "color": "RGB",
        "image_size": str(meta["image_size"]),
        "resize": "bilinear, antialiased (PIL), to image_size x image_size",
        "scale": "1/255",
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "input": f"image: float32 [batch, 3, {meta['image_size']}, {meta['image_size']}], NCHW, normalised",
        "output": "p_tumor: float32 [batch], softmax probability of class 'tumor' (index 1 of classes); "
        "features: float32 [batch, n], the vectors of the novelty score (models/<model>.novelty.npz)",
        "classes": json.dumps(meta["classes"]),
        "threshold": str(point["threshold"]),
        "threshold_source": sidecar.name,
        "operating_point": json.dumps(point),
        "decision": "tumor when p_tumor >= threshold",
        "kind": meta["kind"],
        "head": str(meta.get("head", "")),
        "tta_flip": json.dumps(meta["tta_flip"]),  # the graph averages the scan's and its mirror's logits
        "head_standardisation": meta["head_standardisation"],  # in the graph: the input contract is unchanged
        "epoch": str(meta.get("epoch", "")),
        "val_loss": str(meta.get("val_loss", "")),
        "source_model": model_path.name,
        "source_model_sha256": file_sha256(model_path),
        "split_manifest_sha256": meta["split_manifest_sha256"],  # binds the seen-index beside the file
    }


def with_softmax(model):
    """The classifier as exported: normalised NCHW image -> P(tumor), shape (batch,), and the feature vectors
    the novelty score reads (batch x features)."""
    import torch

    class PTumor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return p_tumor_tensor(self.model(image)), self.model.embed(image)

    return PTumor().eval()


def export_onnx(model_path: Path, onnx_path: Path) -> dict:
    """Write `onnx_path` from a trained model file; it replaces the old file only if ONNX Runtime agrees
    with PyTorch (within PARITY_TOLERANCE) on a probe batch."""
    import onnx
    import torch

    from brain_tumor.training.checkpoint import load_trained

    model, meta = load_trained(model_path, expect_kind=model_path.stem)
    point = read_threshold(threshold_file(model_path), file_sha256(model_path))
    wrapped = with_softmax(model)
    size = meta["image_size"]
    noise = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    probe = normalise(noise, meta["mean"], meta["std"])
    exported = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice (it needs no onnxscript)
        torch.onnx.export(
            wrapped,
            (torch.from_numpy(probe[:1]),),
            exported,
            dynamo=False,
            input_names=["image"],
            output_names=["p_tumor", "features"],
            dynamic_axes={"image": {0: "batch"}, "p_tumor": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET,
        )
    graph = onnx.load_from_string(exported.getvalue())
    graph.doc_string = f"brain-tumor {meta['kind']} classifier: P(tumor) for a normalised RGB scan"
    onnx.helper.set_model_props(graph, metadata(model_path, meta, point))
    onnx.checker.check_model(graph)
    with torch.inference_mode():
        expected = wrapped(torch.from_numpy(probe))[0].numpy()
    checked: dict = {}

    def write_checked(tmp: Path) -> None:
        onnx.save(graph, str(tmp))
        checked["difference"] = float(np.abs(onnx_p_tumor(onnx_session(tmp)[0])(probe) - expected).max())
        if checked["difference"] > PARITY_TOLERANCE:
            raise PipelineError(f"{onnx_path}: ONNX Runtime differs from PyTorch by {checked['difference']:.1e}")

    atomic_write(onnx_path, write_checked)
    return {"onnx": str(onnx_path), "bytes": onnx_path.stat().st_size, "max_abs_difference": checked["difference"]}


def export_models(model_paths: dict[str, Path]) -> dict[str, dict]:
    """The export stage: models/<name>.pt -> models/<name>.onnx for each model."""
    return {name: export_onnx(path, path.with_suffix(".onnx")) for name, path in model_paths.items()}

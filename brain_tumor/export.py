"""The ONNX file: how a trained model becomes one, and the input contract it carries in its metadata.

The file outputs P(tumor) and documents its own preprocessing, so whoever runs it needs neither this
package nor torch. The contract's code (normalising, reading a file) lives here without importing torch,
for `predict` to share with the PyTorch path: the two paths cannot drift apart.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .common import PipelineError, atomic_write, file_sha256
from .images import resize_rgb

OPSET = 17
PARITY_TOLERANCE = 1e-4  # max |p_tumor difference| between ONNX Runtime and PyTorch
PREPROCESSING = (
    "decode to 8-bit RGB as brain_tumor.images.load_rgb does (EXIF orientation applied; high-bit-depth "
    "greyscale scaled to 8 bits; alpha composited on black), resize to image_size x image_size with "
    "bilinear antialiased resampling (PIL Image.resize BILINEAR, aspect ratio not kept), scale to [0, 1] "
    "by /255, subtract mean and divide by std per channel, lay out as NCHW float32"
)

# ---------------------------------------------------------------- the input contract (no torch)


def normalise(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW: /255, then (x - mean) / std per channel, as `data.to_input` does in torch."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32).reshape(1, 3, 1, 1)) / np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(x)


def model_input(images: list[np.ndarray], image_size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """Decoded RGB images of any size -> the model's input batch (resized as the training data was)."""
    return normalise(np.stack([resize_rgb(rgb, image_size) for rgb in images]), mean, std)


def threshold_file(model_path: Path) -> Path:
    """models/transfer.pt (or .onnx) -> models/transfer.threshold.json, written by the evaluate stage."""
    return model_path.with_suffix(".threshold.json")


def onnx_session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session on `path` and the file's metadata; `threads` 0 lets ONNX Runtime choose."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for an unreadable file
        raise PipelineError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]})") from None
    return session, session.get_modelmeta().custom_metadata_map


def onnx_p_tumor(session) -> Callable[[np.ndarray], np.ndarray]:
    """The session as a function: normalised NCHW batch -> P(tumor) per image."""
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(["p_tumor"], {input_name: x})[0]


# ---------------------------------------------------------------- writing the file (torch)


def metadata(model_path: Path, meta: dict) -> dict[str, str]:
    """The ONNX metadata_props: preprocessing, output meaning, classes, operating point and provenance."""
    sidecar = threshold_file(model_path)
    point = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    return {
        "preprocessing": PREPROCESSING,
        "color": "RGB",
        "image_size": str(meta["image_size"]),
        "resize": "bilinear, antialiased (PIL), to image_size x image_size",
        "scale": "1/255",
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "input": f"image: float32 [batch, 3, {meta['image_size']}, {meta['image_size']}], NCHW, normalised",
        "output": "p_tumor: float32 [batch], softmax probability of class 'tumor' (index 1 of classes)",
        "classes": json.dumps(meta["classes"]),
        "threshold": str(point["threshold"] if point else 0.5),
        "threshold_source": sidecar.name if point else "default",
        "operating_point": json.dumps(point),
        "decision": "tumor when p_tumor >= threshold",
        "kind": meta["kind"],
        "head": str(meta.get("head", "")),
        "epoch": str(meta.get("epoch", "")),
        "val_loss": str(meta.get("val_loss", "")),
        "source_model": model_path.name,
        "source_model_sha256": file_sha256(model_path),
    }


def with_softmax(model):
    """The classifier as exported: normalised NCHW image -> P(tumor), shape (batch,)."""
    import torch

    class PTumor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(image), 1)[:, 1]

    return PTumor().eval()


def export_onnx(model_path: Path, onnx_path: Path) -> dict:
    """Write `onnx_path` from a trained model file; it replaces the old file only if ONNX Runtime agrees
    with PyTorch (within PARITY_TOLERANCE) on a probe batch."""
    import onnx
    import torch

    from .train import load_trained

    model, meta = load_trained(model_path)
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
            output_names=["p_tumor"],
            dynamic_axes={"image": {0: "batch"}, "p_tumor": {0: "batch"}},
            opset_version=OPSET,
        )
    graph = onnx.load_from_string(exported.getvalue())
    graph.doc_string = f"brain-tumor {meta['kind']} classifier: P(tumor) for a normalised RGB scan"
    onnx.helper.set_model_props(graph, metadata(model_path, meta))
    onnx.checker.check_model(graph)
    with torch.inference_mode():
        expected = wrapped(torch.from_numpy(probe)).numpy()
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

"""What a model file promises its user, without torch: the input contract (decode, resize, normalise), the
operating point file beside each model, and the ONNX file's metadata. `predict`, `evaluate` and `export`
all read models through here, so the PyTorch and ONNX paths cannot drift apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import PipelineError, one_line
from .images import resize_rgb
from .outputs import write_json

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


# ---------------------------------------------------------------- the operating point beside each model

THRESHOLD_KEYS = ("threshold", "target_sensitivity", "validation_sensitivity", "validation_specificity", "model_sha256")


def threshold_file(model_path: Path) -> Path:
    """models/transfer.pt (or .onnx) -> models/transfer.threshold.json, written by the evaluate stage."""
    return model_path.with_suffix(".threshold.json")


def valid_threshold(value: object, where: str) -> float:
    """A P(tumor) threshold: a finite number in [0, 1], else a one-line error naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= 1:
        raise PipelineError(f"{where}: threshold {value!r} is not a number between 0 and 1")
    return float(value)


def write_threshold(model_path: Path, point: dict, model_sha256: str) -> None:
    write_json(threshold_file(model_path), point | {"model_sha256": model_sha256})


def read_threshold(path: Path, model_sha256: str | None = None) -> dict:
    """A threshold file, checked: its keys, a threshold in [0, 1], and (given `model_sha256`) that it was
    chosen for that very model file, not for an older or a swapped one."""
    try:
        point = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file; run `dvc repro evaluate` first") from None
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: not a threshold file ({one_line(err)}); run `dvc repro evaluate`") from None
    if not isinstance(point, dict) or (missing := [k for k in THRESHOLD_KEYS if k not in point]):
        what = f"missing {', '.join(missing)}" if isinstance(point, dict) else "not a JSON object"
        raise PipelineError(f"{path}: not a threshold file ({what}); run `dvc repro evaluate`")
    valid_threshold(point["threshold"], str(path))
    if model_sha256 is not None and point["model_sha256"] != model_sha256:
        raise PipelineError(
            f"{path}: chosen for another model file (sha256 {str(point['model_sha256'])[:12]}..., the model is "
            f"{model_sha256[:12]}...); run `dvc repro evaluate`"
        )
    return point

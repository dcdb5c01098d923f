"""What a model file promises its user, without torch: the input contract (decode, resize, normalise), the
operating point file beside each model, and the ONNX file's metadata. `predict`, `evaluate` and `export`
all read models through here, so the PyTorch and ONNX paths cannot drift apart.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brain_tumor.core.errors import PipelineError, one_line
from brain_tumor.core.outputs import write_json
from brain_tumor.core.resize import resize_rgb, standardise

PREPROCESSING = (
    "decode to 8-bit RGB as brain_tumor.data.images.load_rgb does (EXIF orientation applied; high-bit-depth "
    "greyscale scaled to 8 bits; alpha composited on black), resize to image_size x image_size with "
    "bilinear antialiased resampling (PIL Image.resize BILINEAR, aspect ratio not kept), scale to [0, 1] "
    "by /255, subtract mean and divide by std per channel, lay out as NCHW float32"
)

# ---------------------------------------------------------------- the input contract (no torch)


def normalise(batch: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, normalised as in training (`core.resize.standardise`)."""
    return np.ascontiguousarray(standardise(batch.astype(np.float32).transpose(0, 3, 1, 2), mean, std))


def model_input(images: list[np.ndarray], image_size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """Decoded RGB images of any size -> the model's input batch (resized as the training data was)."""
    return normalise(np.stack([resize_rgb(rgb, image_size) for rgb in images]), mean, std)


def onnx_session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session on `path` and the file's metadata; `threads` 0 lets ONNX Runtime choose.

    ONNX Runtime's telemetry is turned off unless ORT_DISABLE_TELEMETRY is set: its Linux wheels upload
    usage events and leave a device id in ~/.cache and a `.ses` file in $TMPDIR, which a tool that reads
    scans has no business doing.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read once, when onnxruntime is first imported
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for an unreadable file
        raise PipelineError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0]})") from None
    return session, session.get_modelmeta().custom_metadata_map


@dataclass(frozen=True)
class OnnxContract:
    """What an exported file's metadata promises, checked against its graph by `check_onnx_contract`."""

    image_size: int
    mean: list[float]
    std: list[float]
    threshold: float | None  # the operating point stored in the file; None where export had only the default
    source_model_sha256: str  # the trained .pt file it was exported from: what a threshold file was chosen for


ONNX_METADATA = ("image_size", "mean", "std", "threshold", "threshold_source", "source_model_sha256")
REEXPORT = "re-export it (python -m stages.export)"


def _size(text: str) -> int | None:
    return int(text) if int(text) >= 1 else None


def _channels(text: str) -> list[float] | None:
    values = json.loads(text)
    numbers = isinstance(values, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    return [float(v) for v in values] if numbers and len(values) == 3 and all(map(math.isfinite, values)) else None


def _positive_channels(text: str) -> list[float] | None:
    values = _channels(text)
    return values if values and min(values) > 0 else None


def _threshold(text: str) -> float | None:
    return float(text) if is_threshold(float(text)) else None


def _metadata(meta: dict[str, str], key: str, parse: Callable[[str], Any], expected: str, path: Path) -> Any:
    """meta[key] parsed, or a one-line error: `parse` returns None (or raises ValueError) for a bad value."""
    try:
        value = parse(meta[key])
    except (ValueError, TypeError):
        value = None
    if value is None:
        raise PipelineError(f"{path}: ONNX metadata {key} {meta[key][:40]!r} is not {expected}; {REEXPORT}")
    return value


def check_onnx_contract(session, meta: dict[str, str], path: Path) -> OnnxContract:
    """The file's metadata, checked (keys, types, ranges) and held against its graph (one float32 input
    [batch, 3, image_size, image_size], an output `p_tumor` [batch]) before ONNX Runtime is asked to run it."""
    if missing := [key for key in ONNX_METADATA if key not in meta]:
        raise PipelineError(f"{path}: ONNX metadata lacks {', '.join(missing)}; {REEXPORT}")
    size = _metadata(meta, "image_size", _size, "a positive integer", path)
    mean = _metadata(meta, "mean", _channels, "a JSON list of 3 numbers", path)
    std = _metadata(meta, "std", _positive_channels, "a JSON list of 3 positive numbers", path)
    threshold = _metadata(meta, "threshold", _threshold, "a number between 0 and 1", path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    spatial = all(not isinstance(d, int) or d == size for d in shape[2:])  # a named (free) size takes any
    if len(shape) != 4 or shape[1] != 3 or not spatial or inputs[0].type != "tensor(float)":
        found = "; ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise PipelineError(
            f"{path}: the graph's input ({found}) is not float32 [batch, 3, {size}, {size}] as its metadata says; "
            f"{REEXPORT}"
        )
    if not any(o.name == "p_tumor" and len(o.shape) == 1 for o in outputs):
        found = "; ".join(f"{o.name} {o.shape}" for o in outputs)
        raise PipelineError(f"{path}: the graph has no output p_tumor of shape [batch] (outputs: {found}); {REEXPORT}")
    stored = None if meta["threshold_source"] == "default" else threshold
    return OnnxContract(size, mean, std, stored, meta["source_model_sha256"])


def onnx_p_tumor(session) -> Callable[[np.ndarray], np.ndarray]:
    """The session as a function: normalised NCHW batch -> P(tumor) per image."""
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(["p_tumor"], {input_name: x})[0]


def onnx_features(session) -> Callable[[np.ndarray], np.ndarray] | None:
    """The session's `features` output (the novelty score's vectors) as a function, or None for a file without."""
    if not any(o.name == "features" for o in session.get_outputs()):
        return None
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(["features"], {input_name: x})[0]


# ---------------------------------------------------------------- the operating point beside each model

THRESHOLD_KEYS = ("threshold", "target_sensitivity", "validation_sensitivity", "validation_specificity", "model_sha256")


def threshold_file(model_path: Path) -> Path:
    """models/transfer.pt (or .onnx) -> models/transfer.threshold.json, written by the evaluate stage."""
    return model_path.with_suffix(".threshold.json")


def is_threshold(value: object) -> bool:
    """A P(tumor) threshold: a finite number in [0, 1] (not a bool)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and 0 <= value <= 1


def valid_threshold(value: object, where: str) -> float:
    """A P(tumor) threshold, else a one-line error naming `where`."""
    if not is_threshold(value):
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

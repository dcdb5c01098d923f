"""`brain-tumor predict`: P(tumor) for new scans, with a trained model (.pt) or its ONNX export (.onnx).

Files are decoded by the ingest rules (`data.images.load_rgb`) and a file that cannot be used becomes a row
with its reason, never a crash. A model file, its threshold file or an output path that cannot be used is
one `error:` line naming it. This module imports no torch: the ONNX path runs on onnxruntime alone,
and decoding, resizing and normalising are numpy and PIL code (`inference.model_input`) that the PyTorch
path shares, so the two paths cannot drift apart.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brain_tumor.core.console import progress
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.labels import CLASSES
from brain_tumor.core.outputs import file_sha256, scratch_dir, write_json, write_table
from brain_tumor.core.params import SCHEMA, Invalid, read_yaml
from brain_tumor.core.stage import CAUSES
from brain_tumor.data.images import RejectedFile, decode_scan, save_png
from brain_tumor.data.ingest import reasons_text
from brain_tumor.data.sources import is_system_file, safe_extract, scan_files
from brain_tumor.evaluation.metrics import p_tumor as p_tumor_of
from brain_tumor.serving.inference import (
    check_onnx_contract,
    model_input,
    onnx_features,
    onnx_p_tumor,
    onnx_session,
    read_threshold,
    threshold_file,
)
from brain_tumor.serving.novelty import Novelty, novelty_path, read_novelty
from brain_tumor.training.seen import SeenIndex, index_path, nearest_seen, read_index

SEEN_COLUMNS = ["seen_in_training", "training_similarity", "nearest_training_scan"]
NOVELTY_COLUMNS = ["novelty", "unlike_training"]  # novelty.py: the score and whether it exceeds the threshold
COLUMNS = [
    "path", "p_tumor", "predicted_class", "threshold", "model", "model_sha256", *SEEN_COLUMNS, *NOVELTY_COLUMNS,
    "reason",
]  # fmt: skip
DEFAULT_THRESHOLD = 0.5
NAMED_MODELS = ("scratch", "transfer")  # models/<name>.pt, the train stages' outputs
DEFAULT_MAX_PIXELS = SCHEMA["data"]["max_image_pixels"].default  # where there is no params.yaml
DEFAULT_MAX_ARCHIVE_MB = SCHEMA["data"]["max_archive_mb"].default

# ---------------------------------------------------------------- models


@dataclass
class Model:
    """A loaded model: `p_tumor` maps a `model_input` batch to P(tumor) per image."""

    path: Path
    sha256: str
    image_size: int
    mean: list[float]
    std: list[float]
    p_tumor: Callable[[np.ndarray], np.ndarray]
    trained_sha256: str  # the trained .pt file (an ONNX file's source): what its threshold file was chosen for
    threshold: float | None = None  # the operating point stored inside an ONNX file
    network: Any = None  # the torch module (.pt only): Grad-CAM needs it
    split_manifest_sha256: str | None = None  # the split it was trained on: binds its seen-index
    features: Callable[[np.ndarray], np.ndarray] | None = None  # the vectors the novelty score reads

    @property
    def name(self) -> str:
        return self.path.name


def model_path(spec: str) -> Path:
    """`transfer` / `scratch` -> models/<name>.pt (relative to the current folder); anything else is a file."""
    path = Path("models") / f"{spec}.pt" if spec in NAMED_MODELS else Path(spec)
    if path.suffix not in (".pt", ".onnx"):
        raise PipelineError(f"--model {spec}: expected scratch, transfer, a .pt or a .onnx file")
    if not path.is_file():
        raise PipelineError(f"{path}: no such model file; run `dvc repro` to build it or `dvc pull` to fetch it")
    return path


def load_model(spec: str) -> Model:
    """`transfer` / `scratch` must hold that kind of model (swapped files are refused); a named file either."""
    path = model_path(spec)
    return load_onnx(path) if path.suffix == ".onnx" else load_torch(path, spec if spec in NAMED_MODELS else None)


def load_torch(path: Path, expect_kind: str | None = None) -> Model:
    import torch

    from brain_tumor.training.checkpoint import load_trained

    network, meta = load_trained(path, expect_kind=expect_kind)
    network = network.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def p_tumor(x: np.ndarray) -> np.ndarray:
        return p_tumor_of(network(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)))

    @torch.inference_mode()
    def features(x: np.ndarray) -> np.ndarray:
        return network.embed(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).float().numpy()

    sha256 = file_sha256(path)
    return Model(
        path,
        sha256,
        meta["image_size"],
        meta["mean"],
        meta["std"],
        p_tumor,
        sha256,
        network=network,
        split_manifest_sha256=meta["split_manifest_sha256"],
        features=features,
    )


def load_onnx(path: Path, threads: int = 0) -> Model:
    """An ONNX file written by `export`: its preprocessing and operating point are in its metadata, checked
    against its graph before it runs. `threads` 0 lets ONNX Runtime choose (one per physical core).
    """
    session, meta = onnx_session(path, threads)
    contract = check_onnx_contract(session, meta, path)
    return Model(
        path,
        file_sha256(path),
        contract.image_size,
        contract.mean,
        contract.std,
        onnx_p_tumor(session),
        contract.source_model_sha256,
        threshold=contract.threshold,
        split_manifest_sha256=meta.get("split_manifest_sha256"),  # absent from files exported before it was written
        features=onnx_features(session),  # None for files exported before the novelty score
    )


def seen_index(model: Model) -> SeenIndex | None:
    """The seen-index beside the model file, checked against it; None (predict says so) where there is none."""
    path = index_path(model.path)
    if not path.is_file():
        return None
    if model.split_manifest_sha256 is None:
        raise PipelineError(
            f"{model.path}: says nothing of the split it was trained on, so {path} cannot be checked "
            "against it; re-export it (python -m stages.export)"
        )
    return read_index(path, model.split_manifest_sha256)


def novelty_of(model: Model) -> Novelty | None:
    """The novelty file beside the model, checked against it; None (predict says so) where there is none or
    the model gives no feature vectors (an ONNX file exported before the novelty score)."""
    path = novelty_path(model.path)
    if not path.is_file() or model.features is None:
        return None
    return read_novelty(path, model.trained_sha256)


def operating_point(model: Model, override: float | None) -> tuple[float, str]:
    """The threshold to use and where it came from: --threshold, the evaluate stage's file, the ONNX file, 0.5.

    The evaluate stage's file is checked (`read_threshold`): damaged, or chosen for another model file, it
    is an error, never silently used nor silently skipped.
    """
    if override is not None:
        return override, "--threshold"
    sidecar = threshold_file(model.path)
    if os.path.lexists(sidecar):
        return float(read_threshold(sidecar, model.trained_sha256)["threshold"]), str(sidecar)
    if model.threshold is not None:
        return model.threshold, f"{model.name} metadata"
    return DEFAULT_THRESHOLD, f"default: no {sidecar}"


# ---------------------------------------------------------------- inputs


@dataclass
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_MB * 2**20


def limits_from_params(path: Path = Path("params.yaml")) -> Limits:
    """Ingest's decompression-bomb and archive limits from params.yaml when there is one here, read leniently:
    the folder may be another project's, so a file that does not parse, or a value that is absent or not
    what the schema allows, leaves the default."""
    try:
        raw = read_yaml(path) if path.is_file() else None
    except PipelineError:
        raw = None
    data = raw.get("data") if isinstance(raw, dict) else None
    data = data if isinstance(data, dict) else {}

    def setting(key: str, default: int) -> int:
        try:
            return SCHEMA["data"][key].parse(data[key])
        except (KeyError, Invalid):
            return default

    return Limits(
        setting("max_image_pixels", DEFAULT_MAX_PIXELS), setting("max_archive_mb", DEFAULT_MAX_ARCHIVE_MB) * 2**20
    )


@dataclass
class Input:
    path: str  # as shown in the output: the argument, a file below it, or archive.zip:member
    file: Path | None  # where to read it; None when it was refused before decoding
    reason: str = ""


def list_inputs(args: list[str], limits: Limits, stack: ExitStack) -> list[Input]:
    """Every file named or found below the arguments (folders recursively, .zip archives extracted)."""
    inputs: list[Input] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            inputs += folder_inputs(path, str(path))
        elif path.is_file() and path.suffix.lower() == ".zip":
            inputs += archive_inputs(arg, limits, stack)
        elif path.is_file():
            inputs.append(Input(arg, path))
        elif path.exists():
            inputs.append(Input(arg, None, "special_file"))  # a FIFO, socket or device: reading one can hang
        else:
            inputs.append(Input(arg, None, "no_such_file"))
    return inputs


def archive_inputs(arg: str, limits: Limits, stack: ExitStack) -> list[Input]:
    """A .zip extracted (safely, size-capped, as ingest does) into a folder that lives as long as `stack`."""
    target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="predict-")))
    try:
        refused = safe_extract(Path(arg), target, limits.max_archive_bytes)
    except PipelineError:
        return [Input(arg, None, "unreadable_archive")]
    return [Input(f"{arg}:{r.source}", None, r.reason or "") for r in refused] + folder_inputs(target, f"{arg}:")


def folder_inputs(root: Path, shown: str) -> list[Input]:
    """The files below `root` as ingest lists them: system files skipped, links and special files refused."""
    files, refused = scan_files(root)
    prefix = shown if shown.endswith(":") else f"{shown.rstrip('/')}/"
    inputs = [Input(f"{prefix}{r.source}", None, r.reason or "") for r in refused]
    return inputs + [Input(f"{prefix}{f}", root / f) for f in files if not is_system_file(f)]


def decode(item: Input, limits: Limits) -> np.ndarray:
    """The file's RGB pixels by ingest's rules, or RejectedFile with the reason ingest would give."""
    if item.reason:
        raise RejectedFile(item.reason)
    return decode_scan(item.file, limits.max_pixels)


def decoded_batches(
    inputs: list[Input], limits: Limits, batch_size: int, reasons: list[str]
) -> Iterator[tuple[list[int], list[np.ndarray]]]:
    """(row indices, images) in batches, streaming; sets reasons[i] for each file that cannot be used."""
    rows: list[int] = []
    images: list[np.ndarray] = []
    for i, item in enumerate(progress(inputs, "predict", unit="file")):
        try:
            images.append(decode(item, limits))
            rows.append(i)
        except RejectedFile as err:
            reasons[i] = err.reason
        if len(rows) == batch_size:
            yield rows, images
            rows, images = [], []
    if rows:
        yield rows, images


# ---------------------------------------------------------------- the command


def overlay_name(path: str) -> str:
    """One PNG name per input path: the path with its separators flattened, so names never collide."""
    return path.strip("/").removeprefix("./").replace("/", "__").replace("\\", "__").replace(":", "__") + ".png"


def predict_paths(
    args: list[str],
    model: Model,
    threshold: float,
    batch_size: int = 32,
    limits: Limits | None = None,
    explain_dir: Path | None = None,
) -> pd.DataFrame:
    """One row per input file (COLUMNS); files that cannot be used have an empty p_tumor and a reason.

    With `explain_dir`, also one Grad-CAM overlay PNG per predicted image, at the image's own size.
    The overlays are written beside `explain_dir` and moved into it at the end: a failed or stopped run
    leaves none.
    """
    limits = limits or Limits()
    index, novelty = seen_index(model), novelty_of(model)
    if explain_dir is not None and model.network is None:
        raise PipelineError(f"--explain needs the PyTorch model (.pt); {model.name} has no gradients for Grad-CAM")
    with ExitStack() as stack:
        overlays = None if explain_dir is None else overlay_scratch(explain_dir, stack)
        inputs = list_inputs(args, limits, stack)
        reasons = [""] * len(inputs)
        p_tumor, similarity = np.full(len(inputs), np.nan), np.full(len(inputs), np.nan)
        nearest = np.full(len(inputs), "", dtype=object)
        novelty_score = np.full(len(inputs), np.nan)
        for rows, images in decoded_batches(inputs, limits, batch_size, reasons):
            x = model_input(images, model.image_size, model.mean, model.std)
            p_tumor[rows] = model.p_tumor(x)
            if novelty is not None:
                novelty_score[rows] = novelty.scores(model.features(x))
            if index is not None:
                similarity[rows], nearest[rows] = nearest_seen(index, images)
            if overlays is not None:
                from brain_tumor.evaluation.explain import blend, heatmaps

                heat = heatmaps(model.network, x, (p_tumor[rows] >= threshold).astype(int))
                for i, rgb, h in zip(rows, images, heat, strict=True):
                    save_png(blend(rgb, h), overlays / overlay_name(inputs[i].path))
        if overlays is not None:
            publish_overlays(overlays, explain_dir)
    predicted = np.where(p_tumor >= threshold, CLASSES[1], CLASSES[0])
    return pd.DataFrame(
        {
            "path": [item.path for item in inputs],
            "p_tumor": p_tumor.round(6),
            "predicted_class": np.where(np.isnan(p_tumor), "", predicted),
            "threshold": threshold,
            "model": model.name,
            "model_sha256": model.sha256,
            "seen_in_training": seen_flags(similarity, index),
            "training_similarity": similarity,
            "nearest_training_scan": nearest,
            "novelty": novelty_score,
            "unlike_training": novelty_flags(novelty_score, novelty),
            "reason": reasons,
        },
        columns=COLUMNS,
    )


def novelty_flags(scores: np.ndarray, novelty: Novelty | None) -> np.ndarray:
    """The unlike_training column: true above the novelty threshold, false at or below, empty without a score."""
    if novelty is None:
        return np.full(len(scores), "", dtype=object)
    return np.where(np.isnan(scores), "", np.where(scores > novelty.threshold, "true", "false")).astype(object)


def seen_flags(similarity: np.ndarray, index: SeenIndex | None) -> np.ndarray:
    """The seen_in_training column: true at or above the index's same-slice threshold, false below, empty
    where nothing was compared (no index, or a file that could not be decoded)."""
    if index is None:
        return np.full(len(similarity), "", dtype=object)
    flags = np.where(similarity >= index.threshold, "true", "false").astype(object)
    flags[np.isnan(similarity)] = ""
    return flags


def overlay_scratch(explain_dir: Path, stack: ExitStack) -> Path:
    """A folder beside `explain_dir` (`.tmp-<pid>-...`) for the overlays, removed with `stack`; checked first:
    `explain_dir` must be a folder, or not exist yet."""
    with writing("--explain", explain_dir):
        if explain_dir.exists() and not explain_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(explain_dir))
        return stack.enter_context(scratch_dir(explain_dir.parent, explain_dir.name))


def publish_overlays(overlays: Path, explain_dir: Path) -> None:
    with writing("--explain", explain_dir):
        explain_dir.mkdir(parents=True, exist_ok=True)
        for png in sorted(overlays.iterdir()):
            os.replace(png, explain_dir / png.name)


@contextlib.contextmanager
def writing(option: str, path: Path) -> Iterator[None]:
    """An OSError while writing `path` (the value of `option`) becomes one error line naming both and the cause."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where a folder must be: say which
            blocker = next((p for p in [*reversed(path.parents), path] if p.exists() and not p.is_dir()), path)
            cause = "not a folder" if blocker == path else f"{blocker} is not a folder"
        else:
            cause = CAUSES.get(err.errno, err.strerror or type(err).__name__)
        raise PipelineError(f"{option} {path}: {cause}") from None


def write_predictions(table: pd.DataFrame, out: Path) -> None:
    """CSV (empty p_tumor for unusable files) or JSON records (null p_tumor), by the file's suffix."""
    if out.suffix == ".json":
        write_json(out, json.loads(table.to_json(orient="records")))  # NaN -> null
    else:
        write_table(out, table)


def refused_text(table: pd.DataFrame) -> str:
    return reasons_text(table.loc[table["reason"] != "", "reason"].value_counts().to_dict())

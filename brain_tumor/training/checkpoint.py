"""Trained-model files: what they hold, written and checked in one place.

A model file carries its weights and a `meta` record saying what it is: the model kind and architecture,
the preprocessing it expects, the best epoch's validation figures, and the sha256 of the split manifest it
was trained on. Every reader checks that record before use, so a swapped, stale or damaged file is one
error line, never a silently wrong metric.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from brain_tumor.core.errors import PipelineError, one_line
from brain_tumor.core.labels import CLASSES
from brain_tumor.core.params import SCHEMA, Invalid
from brain_tumor.training.models import build_network

KINDS = ("scratch", "transfer")
META_TYPES = {  # the record every model file carries, and the type of each entry
    "kind": str,
    "image_size": int,
    "classes": list,
    "mean": list,
    "std": list,
    "head": str,
    "unfreeze_last": int,
    "tta_flip": bool,  # flip averaging in eval mode: part of what the model computes
    "head_standardisation": str,  # the model's first layer (standardisation.py)
    "precision": str,  # what training ran in (fp32 or bf16): how closely evaluate must repeat its figures
    "epoch": int,
    "val_loss": float,
    "val_accuracy": float,
    "split_manifest_sha256": str,
}
OPTIONAL_META = {"head_standardisation": "none"}  # what a model file from before the entry existed computes
PRECISIONS = ("fp32", "bf16")


def save_checkpoint(saved: dict, path: Path) -> None:
    """torch.save through a file object: given a path, torch names the archive's root folder after the file,
    and a temporary file's name holds the pid, so the same model would hash differently on every run."""
    with open(path, "wb") as f:
        torch.save(saved, f)


def _typed(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def _bounded(meta: dict) -> str | None:
    """What is out of range in a well-typed record (the params schema's bounds, before anything is allocated
    from it), or None."""
    spec = SCHEMA[f"train_{meta['kind']}"]
    checks = {
        "image_size": lambda v: _parses(spec["image_size"], v),
        "unfreeze_last": lambda v: meta["kind"] == "scratch" or _parses(spec["unfreeze_last"], v),
        "head": lambda v: meta["kind"] == "scratch" or _parses(spec["head"], v),
        "head_standardisation": lambda v: _parses(spec["head_standardisation"], v),
        "precision": lambda v: v in PRECISIONS,
        "classes": lambda v: v == list(CLASSES),
        "mean": lambda v: len(v) == 3 and all(_typed(x, float) and math.isfinite(x) for x in v),
        "std": lambda v: len(v) == 3 and all(_typed(x, float) and math.isfinite(x) and x > 0 for x in v),
        "epoch": lambda v: v >= 1,
        "val_loss": lambda v: math.isfinite(v) and v >= 0,
        "val_accuracy": lambda v: 0 <= v <= 1,
    }
    return next((key for key, ok in checks.items() if not ok(meta[key])), None)


def _parses(spec, value: object) -> bool:
    try:
        spec.parse(value)
    except Invalid:
        return False
    return True


def check_meta(meta: object, path: Path) -> dict:
    """The model file's record, checked for every entry, type and range; a PipelineError naming what is wrong."""
    if not isinstance(meta, dict):
        raise PipelineError(f"{path}: no model record; retrain it (dvc repro)")
    meta = OPTIONAL_META | meta
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is None or not _typed(value, kind):
            raise PipelineError(f"{path}: model record lacks a valid {key!r} ({value!r}); retrain it (dvc repro)")
    if meta["kind"] not in KINDS:
        raise PipelineError(f"{path}: unknown model kind {meta['kind']!r} (expected one of {', '.join(KINDS)})")
    if bad := _bounded(meta):
        raise PipelineError(f"{path}: model record's {bad!r} is out of range ({meta[bad]!r}); retrain it (dvc repro)")
    return meta


def load_trained(
    path: Path, expect_kind: str | None = None, split_manifest_sha256: str | None = None
) -> tuple[nn.Module, dict]:
    """A model file written by a training stage, checked against what the caller expects, in eval mode.

    `expect_kind`: the file must hold this kind of model (models/scratch.pt must not be the transfer model).
    `split_manifest_sha256`: it must have been trained on this split (not on an earlier or another one).
    """
    if not path.is_file():
        raise PipelineError(f"{path}: no such model file; run its training stage first (dvc repro)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta, state = saved["meta"], saved["state_dict"]
    except Exception as err:  # a truncated or foreign file fails anywhere in unpickling: say which file
        raise PipelineError(
            f"{path}: not a model file written by a training stage ({one_line(err)}); retrain it (dvc repro)"
        ) from None
    meta = check_meta(meta, path)
    if expect_kind is not None and meta["kind"] != expect_kind:
        raise PipelineError(
            f"{path}: holds the {meta['kind']} model, expected the {expect_kind} model (swapped files?); "
            "retrain it (dvc repro)"
        )
    if split_manifest_sha256 is not None and meta["split_manifest_sha256"] != split_manifest_sha256:
        raise PipelineError(
            f"{path}: trained on another split (manifest sha256 {meta['split_manifest_sha256'][:12]}..., the "
            f"current one is {split_manifest_sha256[:12]}...); run `dvc repro`"
        )
    try:
        model = build_network(meta)
        model.load_state_dict(state)
    except (PipelineError, RuntimeError, TypeError, AttributeError, ValueError):
        raise PipelineError(
            f"{path}: weights do not fit this code's {meta['kind']} model; retrain it (dvc repro)"
        ) from None
    return model.eval(), meta

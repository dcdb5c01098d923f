"""Benchmark: inference latency of both models, PyTorch vs ONNX Runtime, one image and a batch of 64.

PyTorch runs as `brain-tumor predict` runs it (eval mode, inference_mode, channels_last); ONNX Runtime
runs the file the export stage writes (`brain_tumor.serving.export.export_onnx`, default graph optimisations).
Both use every logical core. Inputs are already normalised, so only the model is timed: the median of
repeated runs after warm-up, the two runtimes' calls interleaved so that both see the same load on a
shared machine. Weights do not change the time: models/<name>.pt is used when it exists, else an
untrained model of the same shape.

Usage: python benchmarks/latency.py [--image-size 224] [--models scratch,transfer] [--repeats 20]
"""

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch

from brain_tumor.core.outputs import file_sha256
from brain_tumor.core.params import load_params
from brain_tumor.core.resize import MEAN, STD
from brain_tumor.serving.export import export_onnx, normalise
from brain_tumor.serving.inference import write_threshold
from brain_tumor.serving.predict import load_onnx, load_torch
from brain_tumor.training.checkpoint import save_checkpoint
from brain_tumor.training.models import build_network
from brain_tumor.training.train import model_meta

BATCHES = (1, 64)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def model_file(kind: str, image_size: int, work: Path) -> Path:
    """models/<kind>.pt when it was trained at `image_size`, else an untrained model saved in the same format."""
    trained = Path("models") / f"{kind}.pt"
    if trained.is_file() and torch.load(trained, weights_only=True)["meta"]["image_size"] == image_size:
        return trained
    cfg = replace(load_params().training(kind), image_size=image_size)
    untrained = {"epoch": 1, "val_loss": math.log(2), "val_accuracy": 0.5}  # what a coin would score
    meta = model_meta(kind, cfg, None, "0" * 64) | untrained  # the record a training stage writes
    path = work / f"{kind}.pt"
    save_checkpoint({"state_dict": build_network(meta).state_dict(), "meta": meta}, path)
    point = {"threshold": 0.5, "target_sensitivity": 0.95, "validation_sensitivity": 0.5, "validation_specificity": 0.5}
    write_threshold(path, point, file_sha256(path))  # export serves a model only with its threshold
    return path


def median_ms(runs: dict[str, Callable[[np.ndarray], np.ndarray]], x: np.ndarray, repeats: int) -> dict[str, float]:
    """Median milliseconds per call of each runtime, calls interleaved so that both see the same machine load."""
    for run in runs.values():  # warm-up: allocations, oneDNN primitive creation, ORT's first-run set-up
        run(x)
        run(x)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--models", default="scratch,transfer")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per cell (a third of it for batch 64)")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"CPU: {cpu_name()}, {threads} logical cores; load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__} "
        f"({threads} intra-op threads), image size {args.image_size}"
    )
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="latency-") as work_name:
        work = Path(work_name)
        for kind in args.models.split(","):
            source = model_file(kind, args.image_size, work)
            onnx_path = work / f"{kind}.onnx"
            export_onnx(source, onnx_path)
            runtimes = {"PyTorch": load_torch(source), "ONNX Runtime": load_onnx(onnx_path, threads)}
            for batch in BATCHES:
                pixels = rng.integers(0, 256, (batch, args.image_size, args.image_size, 3), dtype=np.uint8)
                x = normalise(pixels, list(MEAN), list(STD))
                repeats = args.repeats if batch == 1 else max(3, args.repeats // 3)
                timings = median_ms({name: model.p_tumor for name, model in runtimes.items()}, x, repeats)
                for runtime, ms in timings.items():
                    rows.append(
                        {
                            "model": kind,
                            "runtime": runtime,
                            "batch": batch,
                            "median ms": round(ms, 1),
                            "ms / image": round(ms / batch, 2),
                            "images / s": round(1000 * batch / ms, 1),
                        }
                    )
                    print(rows[-1], flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

"""Where training runs: the device, DDP's world, autocast, seeds."""

from __future__ import annotations

import os
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.numerics import reproducible, threads


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless launched by torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def setup_device() -> torch.device:
    """CUDA when present, else CPU; joins the process group when started by torchrun."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not reproducible()  # autotuning picks kernels run to run
        torch.backends.cudnn.deterministic = reproducible()
        torch.use_deterministic_algorithms(reproducible(), warn_only=True)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":  # reproducible mode: a fixed count (numerics.py); else every core on this node
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(threads() if reproducible() else max(1, (os.cpu_count() or 1) // per_node))
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None for fp32; bf16 when asked, or for `auto` where the hardware runs it fast (recent GPUs, AMX CPUs).

    fp16 is not offered: it would need loss scaling, and bf16 does not.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if fast else None
    raise PipelineError(f"precision: {precision!r} is not fp32, bf16 or auto")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

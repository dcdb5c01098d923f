"""Reproducible numerics: the same bytes from the same inputs on the same kind of CPU (not across vendors).

Measured (docs/reproducibility.md): oneDNN picks its kernels by the CPU's instruction set, and results of
the convolutions and linear layers also depend on the number of threads, so the same training run wrote
different model files on AVX-512 and AVX2 machines and with 1, 2 or 3 threads. Reproducible mode, the
default, caps oneDNN (and, for good measure, ATen and MKL) at AVX2 and fixes the thread count; it must be
set before torch runs its first operation, which is why the package does it on import.

    BRAIN_TUMOR_REPRODUCIBLE=0   use every core and the CPU's widest instructions (faster; other bytes)
    BRAIN_TUMOR_THREADS=N        threads in reproducible mode (default 2; a different N gives other bytes)

CUDA results differ from CPU results and between GPU models; on CUDA, reproducible mode asks for
deterministic algorithms, so a rerun on the same GPU gives the same bytes.
"""

from __future__ import annotations

import os

THREADS = 2
CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}


def reproducible() -> bool:
    return os.environ.get("BRAIN_TUMOR_REPRODUCIBLE", "1") != "0"


def threads() -> int:
    """Threads per process in reproducible mode (BRAIN_TUMOR_THREADS, default 2)."""
    value = os.environ.get("BRAIN_TUMOR_THREADS", str(THREADS))
    return int(value) if value.isdigit() and int(value) > 0 else THREADS


def configure() -> None:
    """Set the instruction-set caps and thread counts before torch reads them (a user's own setting wins).

    Also, in either mode, large CPU tensors on transparent huge pages (where the kernel allows them on
    request): the scratch CNN's 411 MB weight gradient is freed and allocated again every step, and with
    4 KB pages the page faults and unmapping cost about 15% of the step. Speed only; the bytes are the same.
    """
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if not reproducible():
        return
    for name, value in CAPS.items():
        os.environ.setdefault(name, value)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads()))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs


def signature() -> str:
    """What besides code and inputs decides the bytes: part of every cache key and resume fingerprint."""
    if not reproducible():
        return f"native-{os.cpu_count()}threads"
    caps = ",".join(f"{name}={os.environ.get(name, '')}" for name in CAPS)
    return f"reproducible-{os.environ.get('OMP_NUM_THREADS', '')}threads-{caps}"

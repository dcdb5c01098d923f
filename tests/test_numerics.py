"""Process settings the package applies on import (brain_tumor/core/numerics.py), seen from a new interpreter."""

import json
import subprocess
import sys

import pytest
from conftest import venv_env

SETTINGS = (
    "ONEDNN_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "THP_MEM_ALLOC_ENABLE",
)


def after_import(expression: str = "None", **env: str) -> tuple[dict, object]:
    """The SETTINGS a fresh interpreter has after `import brain_tumor`, with `env` added to a clean one (none
    of what the package sets on import: this process has imported it), and the value `expression` then has."""
    ours = (*SETTINGS, "CUBLAS_WORKSPACE_CONFIG")
    base = {k: v for k, v in venv_env().items() if k not in ours and not k.startswith("BRAIN_TUMOR_")}
    script = (
        f"import json, os, brain_tumor\nvalue = {expression}\n"
        f"print(json.dumps([{{k: os.environ.get(k) for k in {SETTINGS}}}, value]))"
    )
    result = subprocess.run([sys.executable, "-c", script], env=base | env, capture_output=True, text=True, check=True)
    settings, value = json.loads(result.stdout.splitlines()[-1])
    return settings, value


def test_reproducible_mode_caps_the_instruction_set_fixes_threads_and_takes_huge_pages():
    assert after_import()[0] == {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2,STRICT",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "THP_MEM_ALLOC_ENABLE": "1",
    }


def test_a_users_own_setting_wins_and_native_mode_keeps_only_the_speed_setting():
    mine, _ = after_import(OMP_NUM_THREADS="1", THP_MEM_ALLOC_ENABLE="0")
    assert mine["OMP_NUM_THREADS"] == "1" and mine["THP_MEM_ALLOC_ENABLE"] == "0"
    native, _ = after_import(BRAIN_TUMOR_REPRODUCIBLE="0")
    assert native == dict.fromkeys(SETTINGS) | {"THP_MEM_ALLOC_ENABLE": "1"}


@pytest.mark.slow  # imports torch
def test_torch_runs_with_the_fixed_thread_count():
    """torch's own thread count, not only the variable: 2 by default, BRAIN_TUMOR_THREADS=1 gives 1 (torch's
    default is one thread per core, so on a 2-core machine the second case is the one that tells)."""
    torch_threads = "__import__('torch').get_num_threads()"
    assert after_import(torch_threads) == (after_import()[0], 2)
    settings, threads = after_import(torch_threads, BRAIN_TUMOR_THREADS="1")
    assert (settings["OMP_NUM_THREADS"], settings["MKL_NUM_THREADS"], threads) == ("1", "1", 1)

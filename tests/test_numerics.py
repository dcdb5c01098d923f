"""Process settings the package applies on import (brain_tumor/numerics.py), seen from a new interpreter."""

import json
import subprocess
import sys

import pytest
from conftest import venv_env

SETTINGS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "THP_MEM_ALLOC_ENABLE")


def settings_after_import(code: str = "", **env: str) -> dict:
    """The SETTINGS a fresh interpreter has after `import brain_tumor`, with `env` added to a clean one."""
    base = {k: v for k, v in venv_env().items() if k not in SETTINGS and not k.startswith("BRAIN_TUMOR_")}
    script = f"import json, os, brain_tumor\n{code}\nprint(json.dumps({{k: os.environ.get(k) for k in {SETTINGS}}}))"
    result = subprocess.run([sys.executable, "-c", script], env=base | env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_reproducible_mode_caps_the_instruction_set_fixes_threads_and_takes_huge_pages():
    assert settings_after_import() == {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "AVX2,STRICT",
        "OMP_NUM_THREADS": "2",
        "THP_MEM_ALLOC_ENABLE": "1",
    }


def test_a_users_own_setting_wins_and_native_mode_keeps_only_the_speed_setting():
    mine = settings_after_import(OMP_NUM_THREADS="1", THP_MEM_ALLOC_ENABLE="0")
    assert mine["OMP_NUM_THREADS"] == "1" and mine["THP_MEM_ALLOC_ENABLE"] == "0"
    native = settings_after_import(BRAIN_TUMOR_REPRODUCIBLE="0")
    assert native == dict.fromkeys(SETTINGS) | {"THP_MEM_ALLOC_ENABLE": "1"}


@pytest.mark.slow  # imports torch
def test_torch_runs_with_the_fixed_thread_count():
    assert settings_after_import("import torch; assert torch.get_num_threads() == 2, torch.get_num_threads()")

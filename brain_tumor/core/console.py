"""Progress bars: terminal output only.

Output-neutral by contract: this module imports nothing from the package, reads and writes no file and
draws no random number, so nothing it does can change a stage's outputs. That is why no stage lists it as a
DVC dependency (tests/test_dvc_yaml.py checks the contract): restyling a progress bar re-runs nothing.
"""

from __future__ import annotations


def progress(iterable, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar on a terminal; silent when output is a log file or CI (disable=None)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, dynamic_ncols=True)

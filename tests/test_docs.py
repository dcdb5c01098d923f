"""The README's headline figures come from the recorded real-set run (scripts/headline.py), not from typing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT / "scripts" / "headline.py"


def headline_module():
    spec = importlib.util.spec_from_file_location("headline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_headline_is_the_rendered_record():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_figure_changed_in_the_record_changes_the_table_and_fails_the_check(tmp_path):
    headline = headline_module()
    record = shutil.copytree(headline.RECORD, tmp_path / "record")
    accuracy = record / "test_operating_point" / "accuracy.json"
    figures = json.loads(accuracy.read_text()) | {"transfer": 0.5012}
    accuracy.write_text(json.dumps(figures))
    table = headline.render(record)
    assert "accuracy **0.501 [" in table
    assert headline.replaced(headline.README.read_text(), table) != headline.README.read_text()
    every_set = json.loads((record / "about.json").read_text())["external_sets"]
    assert all(f"| `{name}` (" in table for name in every_set)

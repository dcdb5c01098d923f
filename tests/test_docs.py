"""The README's headline figures come from the recorded real-set run (scripts/headline.py), not from typing."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SCRIPT = PROJECT / "scripts" / "headline.py"


def headline_module():
    spec = importlib.util.spec_from_file_location("headline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edit(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_readme_headline_is_the_rendered_record():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_figure_changed_in_the_record_changes_the_table_and_fails_the_check(tmp_path):
    headline = headline_module()
    record = shutil.copytree(headline.RECORD, tmp_path / "record")
    edit(record / "test_operating_point" / "accuracy.json", lambda figures: figures | {"transfer": 0.5012})
    table = headline.render(record)
    assert "accuracy **0.501 [" in table
    assert headline.replaced(headline.README.read_text(), table) != headline.README.read_text()
    every_set = json.loads((record / "about.json").read_text())["external_sets"]
    assert all(f"| `{name}` (" in table for name in every_set)


def test_a_set_of_one_class_shows_the_rate_it_allows_and_no_set_leaves_no_novelty_line(tmp_path):
    headline = headline_module()
    record = shutil.copytree(headline.RECORD, tmp_path / "record")
    name = next(iter(json.loads((record / "about.json").read_text())["external_sets"]))
    edit(record / "external" / f"{name}.json", lambda m: m | {"unseen_tumor": 0})
    assert f"| `{name}` (" in (table := headline.render(record)) and "no-tumour scans, no tumour scans" in table
    edit(record / "about.json", lambda about: about | {"external_sets": {}})
    table = headline.render(record)
    assert "`" + name not in table and "novelty warning" not in table and "inside its collection" in table


def test_recording_a_run_takes_its_files_and_refuses_a_set_it_cannot_describe(tmp_path):
    headline = headline_module()
    record = shutil.copytree(headline.RECORD, tmp_path / "record")
    metrics = shutil.copytree(headline.RECORD, tmp_path / "metrics", ignore=shutil.ignore_patterns("about.json"))
    edit(metrics / "test_operating_point" / "recall.json", lambda figures: figures | {"transfer": 0.4242})
    headline.take_record(metrics, "today, on this machine", record)
    assert json.loads((record / "about.json").read_text())["measured"] == "today, on this machine"
    assert "sensitivity 0.424" in headline.render(record)
    shutil.copy(metrics / "external" / "summary.json", metrics / "external" / "new-hospital.json")
    with pytest.raises(SystemExit, match="no description of the external set 'new-hospital'"):
        headline.take_record(metrics, "later", record)
    assert json.loads((record / "about.json").read_text())["measured"] == "today, on this machine"

"""dvc.yaml says what each stage really depends on: its code deps equal its imports, its params its reads."""

import ast
import json
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT

PACKAGE = "brain_tumor"
# Output-neutral modules: terminal output only, so no stage lists them (a restyled progress bar re-runs nothing)
OUTPUT_NEUTRAL = {"brain_tumor/core/console.py"}


def imported_modules(file: Path) -> set[str]:
    """Modules of the package that `file` imports anywhere (function-level imports too: they run)."""
    package_of_file = ".".join(file.relative_to(PROJECT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = package_of_file if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            if module.split(".")[0] != PACKAGE:
                continue
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {m for m in found if (PROJECT / (m.replace(".", "/") + ".py")).is_file()}


def code_dependencies(script: Path) -> set[str]:
    """The stage script and every package file it imports, transitively, plus the package's __init__."""
    init = PROJECT / PACKAGE / "__init__.py"  # runs first on any import from the package, with its own imports
    files, todo = {script, init}, [script, init]
    while todo:
        for module in imported_modules(todo.pop()):
            file = PROJECT / (module.replace(".", "/") + ".py")
            if file not in files:
                files.add(file)
                todo.append(file)
    for file in list(files):  # importing brain_tumor.core.params runs brain_tumor/core/__init__.py first
        files |= {parent / "__init__.py" for parent in file.parents if (parent / "__init__.py").is_file()}
    package_files = {f for f in files if f.is_relative_to(PROJECT / PACKAGE)}
    return {f.relative_to(PROJECT).as_posix() for f in {*package_files, script}} - OUTPUT_NEUTRAL


STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_code_dependencies_equal_the_imports(name):
    stage = STAGES[name]
    assert stage["cmd"].startswith("python -m stages."), "stages run as modules, so an experiment imports its own copy"
    script = PROJECT / (stage["cmd"].split()[-1].replace(".", "/") + ".py")
    declared = {d for d in stage["deps"] if d.endswith(".py")}
    imported = code_dependencies(script)
    assert declared == imported, (
        f"stage {name}: missing {sorted(imported - declared)}, extra {sorted(declared - imported)}"
    )


def uncached_outputs(stage: dict) -> list[str]:
    """The outputs, metrics and plots of a dvc.yaml stage that say `cache: false`."""
    outs = stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", [])
    entries = [next(iter(o.items())) for o in outs if isinstance(o, dict)]  # `- path: {options}`; a string: none
    return [path for path, options in entries if not (options or {}).get("cache", True)]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_output_is_cached_so_the_run_cache_keeps_the_stage(name):
    """DVC skips the run-cache for a stage with any `cache: false` output (dvc/stage/__init__.py)."""
    assert STAGES[name]["outs"], f"stage {name} has no outputs"
    assert uncached_outputs(STAGES[name]) == []


def test_an_uncached_output_metric_or_plot_is_found():
    """The check above on a stage that has them (today's dvc.yaml has none, and writes every output as a plain
    path): each `cache: false` entry is found, whichever list it is in, and nothing else is."""
    stage = yaml.safe_load(
        """
        outs:
          - models/a.pt
          - models/b.pt: {cache: false}
          - models/c.pt: {cache: true, persist: true}
          - models/d.pt:
        metrics:
          - metrics/a.json: {cache: false}
        plots:
          - plots/a.csv: {cache: false, x: step}
        """
    )
    assert uncached_outputs(stage) == ["models/b.pt", "metrics/a.json", "plots/a.csv"]
    assert uncached_outputs({"outs": ["models/a.pt", {"models/c.pt": {"cache": True}}]}) == []


@pytest.mark.parametrize("module", sorted(OUTPUT_NEUTRAL))
def test_output_neutral_modules_cannot_change_outputs(module):
    """What lets them stay out of dvc.yaml: no import from the package, no file access, no random numbers."""
    tree = ast.parse((PROJECT / module).read_text())
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(i.startswith(PACKAGE) or i in ("", "random", "numpy", "torch") for i in imports), imports
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    """No import circle, directly or through others, function-level imports included: each module can be read
    (and tested) after the ones it uses."""
    modules = {f: imported_modules(f) for f in (PROJECT / PACKAGE).rglob("*.py")}
    graph = {
        f.relative_to(PROJECT).as_posix(): {m.replace(".", "/") + ".py" for m in found} for f, found in modules.items()
    }
    visiting, done, circles = set(), set(), []

    def visit(node: str, path: list[str]) -> None:
        visiting.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in visiting:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    assert not circles, [" -> ".join(c) for c in circles]


def test_each_stage_lists_exactly_the_params_it_reads(tiny):
    """The stages' entry points ran on recording params (conftest `build_tiny_models`): every key a stage
    read is in its `params:` in dvc.yaml (else changing it would not re-run the stage), and every entry there
    is read (else changing it would re-run the stage for nothing). Evaluate runs only as a subprocess in the
    e2e tests, so its list is checked there by what it re-runs, not here."""
    reads = json.loads((tiny / "params_read.json").read_text())
    assert set(reads) == {"ingest", "split", "train-scratch", "train-transfer"}
    for stage, keys in reads.items():
        listed = STAGES[stage]["params"]
        assert [key for key in keys if not any(covers(entry, key) for entry in listed)] == [], stage
        assert [entry for entry in listed if not any(covers(entry, key) for key in keys)] == [], stage


def covers(entry: str, key: str) -> bool:
    """A dvc.yaml params entry (a section, a key, or a nested key) covers the key itself and all below it."""
    return key == entry or key.startswith(f"{entry}.")


@pytest.mark.parametrize("name", ["train-scratch", "train-transfer"])
def test_the_resume_state_is_no_output_so_dvc_repro_keeps_it(name):
    """DVC deletes a stage's outputs before it runs the stage: the state a killed run resumes from
    (models/<kind>.resume.pt, tests/test_train.py) must not be one, nor lie inside one."""
    state = f"models/{name.removeprefix('train-')}.resume.pt"
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in STAGES[name]["outs"]]
    inside = lambda out: state == out or state.startswith(out.rstrip("/") + "/")  # noqa: E731
    assert [out for out in outs if inside(out) or out.endswith(".resume.pt")] == []

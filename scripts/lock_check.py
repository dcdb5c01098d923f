"""Did `dvc repro` reproduce the lock it started from? One line when it did not, naming the outputs and why.

    python scripts/lock_check.py --before LOCK_BEFORE_THE_RUN [--after dvc.lock]

A stage whose code, params, data and command are what the old lock records, but whose outputs now hash
differently, was not reproduced byte for byte on this machine: on another CPU type, training's float sums
run in another order (oneDNN blocks its convolutions by the CPU's cache sizes; see docs/reproducibility.md),
and everything downstream of those outputs changes with them. `make repro` and the CI script run this
after `dvc repro`; it prints nothing when the lock was reproduced, or when every difference comes from an
input that changed on purpose. Exit status 0 either way: the outputs are valid, only not the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def stages_of(lock: Path) -> dict[str, dict]:
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {})


def entries(stage: dict, kind: str) -> dict[str, object]:
    """{path: md5} of a stage's deps or outs in a lock."""
    return {e["path"]: e.get("md5") for e in stage.get(kind, [])}


def changed_inputs(old: dict, new: dict) -> list[str]:
    """What differs between two lock entries of a stage besides its outputs: command, deps, params."""
    changes = [f"command `{new.get('cmd')}`"] if old.get("cmd") != new.get("cmd") else []
    old_deps, new_deps = entries(old, "deps"), entries(new, "deps")
    changes += [f"`{p}`" for p in sorted(set(old_deps) | set(new_deps)) if old_deps.get(p) != new_deps.get(p)]
    old_params, new_params = old.get("params", {}), new.get("params", {})
    for file in sorted(set(old_params) | set(new_params)):
        a, b = old_params.get(file, {}), new_params.get(file, {})
        changes += [f"param `{k}`" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return changes


def changed_outputs(old: dict, new: dict) -> list[str]:
    old_outs = entries(old, "outs")
    return [path for path, md5 in entries(new, "outs").items() if old_outs.get(path) != md5]


def not_reproduced(before: dict[str, dict], after: dict[str, dict]) -> dict[str, list[str]]:
    """{stage: outputs that differ}: stages whose inputs are unchanged (the root causes), then the stages whose
    only changed inputs are those outputs or outputs of such stages (their consequences), in lock order."""
    found: dict[str, list[str]] = {}
    differing: set[str] = set()
    for name, new in after.items():
        old = before.get(name)
        if old is None or not (outs := changed_outputs(old, new)):
            continue
        inputs = [change.strip("`") for change in changed_inputs(old, new)]
        if all(any(p == out or p.startswith(f"{out}/") for out in differing) for p in inputs):  # none, or outputs
            found[name] = outs
            differing |= set(outs)
    return found


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "this CPU"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "this CPU")


def summary_line(found: dict[str, list[str]]) -> str | None:
    if not found:
        return None
    outs = [out for outs in found.values() for out in outs]
    data_stages = [name for name in ("ingest", "split") if name in found]
    cause = (
        f"{', '.join(data_stages)} should repeat on any CPU: report it"
        if data_stages
        else "ingest and split repeated the lock"
    )
    return (
        f"warning: dvc.lock not reproduced byte for byte: with the same code, params and data, "
        f"{len(outs)} outputs of {', '.join(found)} hash differently ({', '.join(outs)}): {cpu_name()} sums "
        f"training's floats in another order than the CPU that wrote the lock ({cause}; see "
        "docs/reproducibility.md)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a copy of dvc.lock from before the run")
    parser.add_argument("--after", type=Path, default=Path("dvc.lock"))
    args = parser.parse_args(argv)
    line = summary_line(not_reproduced(stages_of(args.before), stages_of(args.after)))
    if line:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a CI run of the pipeline did, and why: the job summary that scripts/ci_pipeline.sh writes.

    python scripts/ci_report.py --before LOCK --after dvc.lock --log repro.log --base-rev main [--strict]

For every stage: restored (not executed), or executed and why, from the lock before and after the run:
- its params, code, data or command changed (the inputs are named);
- its inputs were unchanged: it ran only because its outputs were in neither the local cache nor the remote
  (a lost object, `dvc gc`, a remote that was never pushed) - with --strict (CI_STRICT_CACHE=1) that fails
  the job, since nothing should have had to run;
- and if such a re-run wrote different outputs than the lock records, the pipeline did not reproduce them
  byte for byte on this machine (see docs/reproducibility.md), which is said too.
Then `dvc metrics diff` against the base revision, rows in a stable order, or a note that the base has none.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from lock_check import changed_inputs, changed_outputs, not_reproduced, stages_of, summary_line


def why(name: str, before: dict, after: dict) -> tuple[str, bool]:
    """(reason, ran only for missing outputs) for an executed stage."""
    if name not in before:
        return "new: no lock entry before this run", False
    old, new = before[name], after.get(name, {})
    if changes := changed_inputs(old, new):
        return "changed: " + ", ".join(changes), False
    reason = "inputs unchanged: its outputs were in neither the cache nor the remote"
    if differ := changed_outputs(old, new):
        reason += f"; re-run outputs differ from the lock ({', '.join(differ)}): not reproduced byte for byte here"
    return reason, True


def metrics_diff(base_rev: str) -> str:
    """`dvc metrics diff` against `base_rev` as a markdown table, rows sorted by file and key."""
    command = ["dvc", "metrics", "diff", base_rev, "--all", "--json"]  # --all: unchanged rows too
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    diff = json.loads(result.stdout or "{}") if result.returncode == 0 else {}
    if not any(row.get("old") is not None for rows in diff.values() for row in rows.values()):
        return f"No metrics at `{base_rev}` to compare with (first run, or the base has no pipeline outputs).\n"
    lines = ["| file | key | " + base_rev + " | this run | change |", "|---|---|---|---|---|"]
    for path in sorted(diff):
        for key in sorted(diff[path]):
            row = diff[path][key]
            change = row.get("diff")
            change = f"{change:+.4g}" if isinstance(change, int | float) else "-"
            lines.append(f"| {path} | {key} | {row.get('old', '-')} | {row.get('new', '-')} | {change} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("dvc.lock"))
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--base-rev", default="main")
    parser.add_argument("--mode", default="remote")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    before, after = stages_of(args.before), stages_of(args.after)
    executed = re.findall(r"Running stage '([^']+)'", args.log.read_text())
    lines = [f"## Pipeline ({args.mode})", "", "| stage | outcome |", "|---|---|"]
    missing = []
    for name in after or before:
        if name in executed:
            reason, lost = why(name, before, after)
            missing += [name] if lost else []
            lines.append(f"| {name} | **executed**: {reason} |")
        else:
            lines.append(f"| {name} | restored or unchanged |")
    if line := summary_line(not_reproduced(before, after)):
        lines += ["", line.removeprefix("warning: ").capitalize() + "."]
    lines += ["", f"## Metrics: {args.base_rev} -> this run", "", metrics_diff(args.base_rev)]
    if missing:
        lines.insert(
            1, f"\n> **Warning:** {', '.join(missing)} ran only because outputs were missing from the cache.\n"
        )
    print("\n".join(lines))
    if missing:
        print(f"warning: ran only for missing cached outputs: {', '.join(missing)}", file=sys.stderr)
    return 1 if (missing and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())

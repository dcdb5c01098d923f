"""A queued sweep in one command: queue the points, keep a worker running until none is left, print the table.

    python scripts/sweep.py -S 'train_transfer.lr=0.001,0.0003' [-S 'train_transfer.epochs=10,20'] [--sort-by M]
    python scripts/sweep.py --table -S train_transfer.lr    # the table alone, for experiments already run
    (--queue-only and --run-queued split the two halves: queue now, run later)

DVC's queue worker can exit while experiments are still queued (treeverse/dvc#10562: "Worker status: 0 active,
0 idle" with tasks left), so this script watches `dvc queue status` and starts a worker whenever tasks are
queued and none is running. It waits for a state, never against a clock: a slow machine just takes longer.
Exits 1 if any point failed; then `dvc queue logs <name>` shows why.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

SHOWN = {  # exp show column -> short header: the transfer model's test metrics at threshold 0.5
    "metrics/test/accuracy.json:transfer": "accuracy",
    "metrics/test/recall.json:transfer": "sensitivity",
    "metrics/test/specificity.json:transfer": "specificity",
    "metrics/test/roc_auc.json:transfer": "roc_auc",
    "metrics/validation/best_loss.json:transfer": "val_loss",
}


def dvc(*args: str, capture: bool = False) -> str:
    result = subprocess.run(["dvc", *args], check=False, text=True, capture_output=capture, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        sys.exit(f"error: dvc {' '.join(args)} failed{': ' + detail[0] if detail else ''}")
    return result.stdout or ""


def queue_state() -> tuple[dict[str, int], int]:
    """(tasks per status, active workers) from `dvc queue status`."""
    text = dvc("queue", "status", capture=True)
    statuses = re.findall(r"^\S+\s+\S+\s+.*?\s(Queued|Running|Success|Failed)\s*$", text, flags=re.M)
    counts = {s: statuses.count(s) for s in ("Queued", "Running", "Success", "Failed")}
    active = re.search(r"Worker status: (\d+) active", text)
    return counts, int(active[1]) if active else 0


def run_queue(poll_seconds: float = 3.0) -> dict[str, int]:
    """Run every queued experiment to the end, one worker at a time; returns the final counts."""
    while True:
        counts, active = queue_state()
        if not counts["Queued"] and not counts["Running"]:
            return counts
        if counts["Queued"] and not active:  # no worker, or the one that stopped early (dvc#10562)
            dvc("queue", "start", "-j", "1", capture=True)
        time.sleep(poll_seconds)


def swept_params(sets: list[str]) -> list[str]:
    return [s.split("=", 1)[0] for s in sets]


def exp_table(params: list[str], sort_by: str) -> str:
    """`dvc exp show` narrowed to the swept params and the key test metrics, with short headers: a 5-point
    sweep fits a 160-column terminal (the full table has one column per metric file, model and bound)."""
    import io

    import pandas as pd

    keep = "|".join(["Experiment", "rev", *(re.escape(p) + "$" for p in params), *(re.escape(c) + "$" for c in SHOWN)])
    csv = dvc("exp", "show", "--csv", "--drop", ".*", "--keep", keep, capture=True)
    table = pd.read_csv(io.StringIO(csv), dtype=str, keep_default_na=False)
    table.insert(0, "experiment", table["Experiment"].where(table["Experiment"] != "", table["rev"]))
    table = table.drop(columns=["Experiment", "rev"]).rename(columns=SHOWN)
    key = SHOWN.get(sort_by, sort_by)
    if key in table:
        table = table.sort_values(key, ascending=key == "val_loss", key=lambda c: pd.to_numeric(c, errors="coerce"))
    return table.to_string(index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", action="append", required=True, dest="sets", metavar="PARAM=V1,V2")
    parser.add_argument("--sort-by", default="val_loss", help="a column of the table (default: validation loss)")
    step = parser.add_mutually_exclusive_group()
    step.add_argument("--table", action="store_true", help="only print the table of the experiments already run")
    step.add_argument("--queue-only", action="store_true", help="only queue the points")
    step.add_argument("--run-queued", action="store_true", help="only run what is queued, then print the table")
    args = parser.parse_args(argv)
    if args.table:
        print(exp_table(swept_params(args.sets), args.sort_by))
        return 0
    if not args.run_queued:
        queue = ["exp", "run", "--queue"]
        for value in args.sets:
            queue += ["-S", value]
        dvc(*queue)
    if args.queue_only:
        return 0
    counts = run_queue()
    print(exp_table(swept_params(args.sets), args.sort_by))
    print(f"sweep: {counts['Success']} succeeded, {counts['Failed']} failed", file=sys.stderr)
    return 1 if counts["Failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

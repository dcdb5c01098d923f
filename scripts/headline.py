"""The README's headline table, rendered from one real-set run's metric files, so no figure in it is typed by hand.

    python scripts/headline.py                   # exit 1 with one line when README.md's table is not the record's
    python scripts/headline.py --write           # rewrite the table in README.md from docs/real-run/
    python scripts/headline.py --record metrics --write   # after a real-set run: take its metric files first

The record, `docs/real-run/`, holds the files evaluate wrote for the default transfer model on the real set
(`split.json`, `test_operating_point/*.json`, `external/*.json`) and `about.json` (when, where, which commit,
and a few words on each external set). docs/results.md is the one results table; the README links it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "real-run"
README = ROOT / "README.md"
BEGIN = "<!-- headline: rendered by scripts/headline.py from docs/real-run/, do not edit by hand -->"
END = "<!-- /headline -->"
RECORDED = ("split.json", "test_operating_point/accuracy.json", "test_operating_point/roc_auc.json",
            "test_operating_point/recall.json", "test_operating_point/specificity.json")  # fmt: skip
MODEL = "transfer"


def read(record: Path, name: str) -> dict:
    return json.loads((record / name).read_text())


def with_interval(figures: dict, key: str, digits: int = 3) -> str:
    lower, upper = figures.get(f"{key}_ci_lower"), figures.get(f"{key}_ci_upper")
    value = f"{figures[key]:.{digits}f}"
    return value if lower is None else f"{value} [{lower:.{digits}f}, {upper:.{digits}f}]"


def internal_row(record: Path) -> str:
    test = read(record, "split.json")["test"]
    figures = {}
    for name in ("accuracy", "roc_auc", "recall", "specificity"):
        values = read(record, f"test_operating_point/{name}.json")
        figures |= {key.replace(MODEL, name): value for key, value in values.items() if key.startswith(MODEL)}
    return (
        f"| **inside its collection** ({test['tumor'] + test['non_tumor']} test scans of a leak-free split) "
        f"| accuracy **{with_interval(figures, 'accuracy')}**, ROC AUC {figures['roc_auc']:.4f}, "
        f"sensitivity {figures['recall']:.3f}, specificity {figures['specificity']:.3f} |"
    )


def external_row(name: str, about: str, metrics: dict) -> str:
    point, novelty = metrics["models"][MODEL]["operating_point"], metrics["models"][MODEL]["novelty"]
    tumor, non_tumor = metrics["unseen_tumor"], metrics["unseen_non_tumor"]
    if point["roc_auc"] is None:
        verdict = f"sensitivity **{with_interval(point, 'recall')}** ({tumor} tumour scans, no no-tumour scans)"
    else:
        verdict = (
            f"ROC AUC **{with_interval(point, 'roc_auc', 2)}**, sensitivity {point['recall']:.2f}, "
            f"specificity {point['specificity']:.2f} ({tumor} tumour, {non_tumor} no-tumour scans)"
        )
    flagged = f"{novelty['flagged']:.0%}"
    return (
        f"| `{name}` ({about}) | {verdict}; novelty warning on {flagged} of its scans "
        f"(ROC AUC {novelty['roc_auc_vs_internal_test']:.3f} against the internal test scans) |"
    )


def render(record: Path = RECORD) -> str:
    about = read(record, "about.json")
    rows = [internal_row(record)]
    internal_flagged = None
    for name, words in about["external_sets"].items():
        metrics = read(record, f"external/{name}.json")
        rows.append(external_row(name, words, metrics))
        internal_flagged = metrics["models"][MODEL]["novelty"]["internal_test_flagged"]
    return "\n".join(
        [
            BEGIN,
            f"Measured {about['measured']}.",
            "The default params with `data.source` and `evaluate.external` pointed at the real sets; at the served",
            "operating point, 95% bootstrap intervals:",
            "",
            "| where the scans come from | what the default transfer model does |",
            "|---|---|",
            *rows,
            "",
            f"The novelty warning of `brain-tumor predict` fires on {internal_flagged:.1%} of the internal test scans.",
            END,
        ]
    )


def replaced(text: str, table: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"error: {README.name}: expected one '{BEGIN}' line and one '{END}' line")
    head, rest = text.split(BEGIN)
    return head + table + rest.split(END, 1)[1]


def take_record(metrics: Path) -> None:
    """Copy a run's metric files into the record (about.json stays: edit its date and commit by hand)."""
    names = [*RECORDED, "external/summary.json"]
    names += [f"external/{name}.json" for name in read(RECORD, "about.json")["external_sets"]]
    for name in names:
        if not (metrics / name).is_file():
            raise SystemExit(f"error: {metrics / name}: missing; run evaluate on the real set first")
    for name in names:
        (RECORD / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics / name, RECORD / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's table")
    parser.add_argument("--record", type=Path, help="a real-set run's metrics/ folder to record first")
    args = parser.parse_args(argv)
    if args.record:
        take_record(args.record)
    text = README.read_text()
    new = replaced(text, render())
    if args.write:
        README.write_text(new)
    elif new != text:
        print(f"error: {README.name}: its headline table is not docs/real-run/'s; run scripts/headline.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

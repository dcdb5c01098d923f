"""The README's headline table, rendered from one real-set run's metric files, so no figure in it is typed by hand.

    python scripts/headline.py           # exit 1 with one line when README.md's table is not the record's
    python scripts/headline.py --write   # rewrite the table in README.md from docs/real-run/
    python scripts/headline.py --record metrics --measured "2026-12-08 on ..., commit abc1234, model md5 ..."
        # after a real-set run of the default params: replace the record with its metric files, then --write

The record, `docs/real-run/`, holds the files evaluate wrote for the default transfer model on the real set
(`split.json`, `test_operating_point/*.json`, `external/*.json`) and `about.json` (when, where, which commit,
and a few words on each external set). The table of every recipe tried is docs/results.md's.
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
INTERNAL = ("accuracy", "roc_auc", "recall", "specificity")  # test_operating_point/<name>.json
MODEL = "transfer"


def read(record: Path, name: str) -> dict:
    return json.loads((record / name).read_text(encoding="utf-8"))


def with_interval(figures: dict, key: str, digits: int = 3) -> str:
    lower, upper = figures.get(f"{key}_ci_lower"), figures.get(f"{key}_ci_upper")
    value = f"{figures[key]:.{digits}f}"
    return value if lower is None else f"{value} [{lower:.{digits}f}, {upper:.{digits}f}]"


def internal_row(record: Path) -> str:
    test = read(record, "split.json")["test"]
    figures = {}
    for name in INTERNAL:
        values = read(record, f"test_operating_point/{name}.json")
        figures |= {name: values[MODEL], f"{name}_ci_lower": values.get(f"{MODEL}_ci_lower")}
        figures[f"{name}_ci_upper"] = values.get(f"{MODEL}_ci_upper")
    return (
        f"| **inside its collection** ({test['tumor'] + test['non_tumor']} test scans of a leak-free split) "
        f"| accuracy **{with_interval(figures, 'accuracy')}**, ROC AUC {figures['roc_auc']:.4f}, "
        f"sensitivity {figures['recall']:.3f}, specificity {figures['specificity']:.3f} |"
    )


def verdict(point: dict, tumor: int, non_tumor: int) -> str:
    """ROC AUC where the set has both classes, else the rate its one class allows."""
    if tumor and non_tumor:
        return (
            f"ROC AUC **{with_interval(point, 'roc_auc', 2)}**, sensitivity {point['recall']:.2f}, "
            f"specificity {point['specificity']:.2f} ({tumor} tumour, {non_tumor} no-tumour scans)"
        )
    if tumor:
        return f"sensitivity **{with_interval(point, 'recall')}** ({tumor} tumour scans, no no-tumour scans)"
    return f"specificity **{with_interval(point, 'specificity')}** ({non_tumor} no-tumour scans, no tumour scans)"


def external_row(name: str, about: str, metrics: dict) -> str:
    point, novelty = metrics["models"][MODEL]["operating_point"], metrics["models"][MODEL]["novelty"]
    return (
        f"| `{name}` ({about}) | {verdict(point, metrics['unseen_tumor'], metrics['unseen_non_tumor'])}; "
        f"novelty warning on {novelty['flagged']:.0%} of its scans "
        f"(ROC AUC {novelty['roc_auc_vs_internal_test']:.3f} against the internal test scans) |"
    )


def render(record: Path = RECORD) -> str:
    about = read(record, "about.json")
    measured = {name: read(record, f"external/{name}.json") for name in about["external_sets"]}
    rows = [internal_row(record)] + [external_row(n, about["external_sets"][n], m) for n, m in measured.items()]
    flagged = [m["models"][MODEL]["novelty"]["internal_test_flagged"] for m in measured.values()][:1]
    sentence = "The novelty warning of `brain-tumor predict` fires on {:.1%} of the internal test scans."
    warning = [sentence.format(share) for share in flagged]
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
            *warning,
            END,
        ]
    )


def replaced(text: str, table: str) -> str:
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"error: {README.name}: expected one '{BEGIN}' line and, after it, one '{END}' line")
    head, rest = text.split(BEGIN)
    return head + table + rest.split(END, 1)[1]


def take_record(metrics: Path, measured: str, record: Path = RECORD) -> None:
    """Replace the record with a run's metric files; every external set needs its few words in about.json."""
    about = read(record, "about.json")
    names = sorted(p.stem for p in (metrics / "external").glob("*.json") if p.stem not in ("summary", "sets"))
    files = ["split.json", *(f"test_operating_point/{n}.json" for n in INTERNAL)]
    files += [f"external/{name}.json" for name in [*names, "summary"]]
    for name in files:
        if not (metrics / name).is_file():
            raise SystemExit(f"error: {metrics / name}: missing; run evaluate on the real set first")
    unknown = [name for name in names if name not in about["external_sets"]]
    if unknown:
        raise SystemExit(f"error: {record / 'about.json'}: no description of the external set {unknown[0]!r}")
    for folder in ("test_operating_point", "external"):
        shutil.rmtree(record / folder, ignore_errors=True)
    for name in files:
        (record / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics / name, record / name)
    about |= {"measured": measured, "external_sets": {name: about["external_sets"][name] for name in names}}
    (record / "about.json").write_text(json.dumps(about, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's table")
    parser.add_argument("--record", type=Path, help="a real-set run's metrics/ folder to record (implies --write)")
    parser.add_argument("--measured", help="with --record: when, on what machine, at which commit, which model")
    args = parser.parse_args(argv)
    if args.record:
        if not args.measured:
            parser.error("--record needs --measured: the date, machine, commit and model of that run")
        take_record(args.record, args.measured)
    text = README.read_text(encoding="utf-8")
    new = replaced(text, render())
    if args.write or args.record:
        README.write_text(new, encoding="utf-8")
    elif new != text:
        message = f"error: {README.name}: its headline table is not docs/real-run/'s; run scripts/headline.py --write"
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the tables handed from stage to stage promise, declared once and checked by every reader.

A contract is a table of columns (each value must match a pattern) and row rules (each names what must
hold). Reading a manifest through its contract costs a few milliseconds and turns an edited, truncated or
foreign file into one error line naming the file, the first bad row and what is wrong with it, before any
work is done on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brain_tumor.core.errors import PipelineError, one_line
from brain_tumor.core.labels import CLASSES, SPLITS

HEX_ID = r"[0-9a-f]{20}"
SHA256 = r"[0-9a-f]{64}"
Rule = tuple[str, Callable[[pd.DataFrame], pd.Series]]  # (what must hold, rows where it does not)


@dataclass(frozen=True)
class TableContract:
    what: str  # how messages name the table
    producer: str  # the stage that writes it: what to re-run when it is missing or wrong
    columns: dict[str, str]  # column -> regular expression every value must match
    rules: tuple[Rule, ...] = field(default=())

    def read(self, path: Path) -> pd.DataFrame:
        """The table at `path`, every value a string, checked; else one PipelineError line."""
        fix = f"run `dvc repro {self.producer}`"
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise PipelineError(f"{path}: no such file; {fix} first") from None
        except (OSError, ValueError, pd.errors.ParserError) as err:
            raise PipelineError(f"{path}: not a readable {self.what} ({one_line(err)}); {fix}") from None
        if missing := [c for c in self.columns if c not in table.columns]:
            raise PipelineError(f"{path}: not a {self.what}: no column {', '.join(missing)}; {fix}")
        for column, pattern in self.columns.items():
            bad = ~table[column].str.fullmatch(pattern)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise PipelineError(
                    f"{path}: row {row + 2}: {column} {table[column].iloc[row]!r} is not allowed "
                    f"(expected {pattern}); {fix}"
                )
        for rule, broken in self.rules:
            bad = broken(table).to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise PipelineError(f"{path}: row {row + 2} (id {table['id'].iloc[row]}): not {rule}; {fix}")
        return table


def _class_contradicts_label(t: pd.DataFrame) -> pd.Series:
    return t["class"] != t["label"].map(lambda v: CLASSES[int(v)])


def _repeated_id(t: pd.DataFrame) -> pd.Series:
    return t["id"].duplicated()


LABEL = "|".join(str(i) for i in range(len(CLASSES)))
CLASS = "|".join(CLASSES)

DATASET_MANIFEST = TableContract(
    "dataset manifest",
    "ingest",
    {
        "id": HEX_ID,
        "file": r"images/[0-9a-f]{20}\.png",
        "label": LABEL,
        "class": CLASS,
        "group": r"g\d+",
        "sha256": SHA256,
    },
    (
        ("class == the label's class name", _class_contradicts_label),
        ("file == images/<id>.png", lambda t: t["file"] != "images/" + t["id"] + ".png"),
        ("a unique id", _repeated_id),
    ),
)

SPLIT_MANIFEST = TableContract(
    "split manifest",
    "split",
    {
        "id": HEX_ID,
        "split": "|".join(SPLITS),
        "file": rf"({'|'.join(SPLITS)})/({CLASS})/[0-9a-f]{{20}}\.png",
        "label": LABEL,
        "class": CLASS,
        "sha256": SHA256,
    },
    (
        ("class == the label's class name", _class_contradicts_label),
        (
            "file == <split>/<class>/<id>.png (the class folder agrees with the label)",
            lambda t: t["file"] != t["split"] + "/" + t["class"] + "/" + t["id"] + ".png",
        ),
        ("a unique id", _repeated_id),
    ),
)


def read_split_manifest(split_dir: Path) -> pd.DataFrame:
    """data/split/split_manifest.csv, checked: its contract, and both classes in every split."""
    path = split_dir / "split_manifest.csv"
    table = SPLIT_MANIFEST.read(path)
    for split in SPLITS:
        have = set(table.loc[table["split"] == split, "class"])
        if missing := [c for c in CLASSES if c not in have]:
            raise PipelineError(
                f"{path}: the {split} split has no {missing[0]} image; both classes are needed (run `dvc repro split`)"
            )
    return table

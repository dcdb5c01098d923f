"""Ingest: any supported dataset layout in, a canonical dataset out (each image once, RGB PNG),
with every input file accounted for: accepted, an exact duplicate of an accepted image, or rejected
with a reason.

Layouts: the Kaggle "Brain Tumor" layout (CSVs with `Image` and `Class` at the root or one level down,
images anywhere below it) and class-folder trees of any depth whose folder names map to a class through
`data.tumor_folders` / `data.non_tumor_folders`. Either as a folder or a `.zip`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import os
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from brain_tumor.core.console import progress
from brain_tumor.core.errors import PipelineError, one_line
from brain_tumor.core.faults import pause_point
from brain_tumor.core.labels import CLASSES, require_both_classes
from brain_tumor.core.outputs import atomic_dir, atomic_write, scratch_dir, write_json, write_table
from brain_tumor.core.params import DataParams, Params
from brain_tumor.core.stage import worker_pool
from brain_tumor.data.images import RejectedFile, decode_scan, perceptual_hash, pixel_sha256, save_png
from brain_tumor.data.sources import Item, is_system_file, safe_extract, scan_files


@dataclass
class Decoded:
    source: str
    label: int | None
    reason: str | None = None
    detail: str = ""
    subtype: str = ""
    sha256: str = ""
    phash: int = 0
    width: int = 0
    height: int = 0


# ---------------------------------------------------------------- labels


def _decode_text(path: Path) -> str:
    """A text file's content: UTF-8 (with or without BOM), UTF-16 with a BOM, else Windows-1252 (what Excel
    writes on Windows: curly quotes and dashes in 0x80-0x9f), else Latin-1 (never fails)."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


def _delimiter(header: str) -> str:
    """The column separator: whichever of `,` `;` tab `|` the header line holds most (`,` if none)."""
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    return max(counts, key=counts.get) if any(counts.values()) else ","


def _canonical(column: str) -> str:
    """`image`, ` IMAGE ` -> `Image`; other names as they are, stripped."""
    column = str(column).strip()
    return {"image": "Image", "class": "Class"}.get(column.lower(), column)


def label_table_columns(path: Path, name: str) -> list[str]:
    """The header of a CSV (canonical names), or [] when it is not a text table at all.

    A header that names Image and Class but splits into one column means a separator we cannot tell.
    """
    try:
        header = next(iter(_decode_text(path).splitlines()), "")
    except OSError:
        return []
    columns = [_canonical(c) for c in header.split(_delimiter(header))]
    if len(columns) == 1 and "image" in header.lower() and "class" in header.lower():
        raise PipelineError(
            f"{name}: cannot tell how the columns are separated (header {header.strip()[:60]!r}); use one of , ; tab |"
        )
    return columns


def read_label_table(path: Path, name: str | None = None) -> pd.DataFrame:
    """A label CSV as strings (encodings as `_decode_text` reads them); separator `,` `;` tab or `|`."""
    name = name or str(path)
    text = _decode_text(path)
    try:
        table = pd.read_csv(
            io.StringIO(text),
            sep=_delimiter(next(iter(text.splitlines()), "")),
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, csv.Error) as err:
        raise PipelineError(f"{name}: not a readable CSV table ({one_line(err)})") from None
    table.columns = [_canonical(c) for c in table.columns]
    return table


def find_label_tables(root: Path, files: list[PurePosixPath], name: str | None = None) -> list[PurePosixPath]:
    """The Kaggle label tables: the CSVs at the root or one level down with `Image` and `Class` columns."""
    name = name or str(root)
    candidates = [f for f in files if f.suffix.lower() == ".csv" and len(f.parts) <= 2 and not is_system_file(f)]
    columns = {f: set(label_table_columns(root / f, f"{name}/{f}")) for f in candidates}
    with_image = [f for f in candidates if "Image" in columns[f]]
    with_class = [f for f in with_image if "Class" in columns[f]]
    if with_image and not with_class:
        raise PipelineError(f"{name}/{with_image[0]}: has an 'Image' column but no 'Class' column")
    return with_class


def _name_key(name: str) -> str:
    """How an Image cell matches a file name: case-insensitive, and NFC (macOS zips store names decomposed)."""
    return unicodedata.normalize("NFC", name).lower()


def kaggle_items(
    root: Path,
    files: list[PurePosixPath],
    tables: Sequence[PurePosixPath],
    name: str | None = None,
    refused: Sequence[Item] = (),
) -> list[Item]:
    """Match CSV rows (Image name with or without extension) to image files found anywhere below root.

    A row naming a file already named by an earlier row of its table is a `duplicate_csv_row` (and, if the
    two rows disagree on the class, the file a `label_conflict`); a row naming a refused file (a symlink,
    ...) adds nothing, the refused file is already counted once. Several tables are read as one: they may
    name the same image if they give it the same class; a different class is a PipelineError naming both.
    """
    name = name or str(root)
    csvs = {f for f in files if f.suffix.lower() == ".csv" and len(f.parts) <= 2}
    refused_paths = {PurePosixPath(item.source) for item in refused}
    by_name: dict[str, PurePosixPath] = {}
    for f in [*files, *sorted(refused_paths)]:
        if f not in csvs and not is_system_file(f):
            by_name.setdefault(_name_key(f.name), f)
            by_name.setdefault(_name_key(f.stem), f)
    items: list[Item] = []
    first: dict[object, tuple[PurePosixPath, int, str, Item | None]] = {}  # file or missing name -> its first row
    for table in tables:
        rows = read_label_table(root / table, f"{name}/{table}")
        pairs = zip(rows["Image"].str.strip(), rows["Class"].str.strip(), strict=True)
        for row, (image, raw_label) in enumerate(pairs, start=2):  # row numbers as a spreadsheet shows them
            path = by_name.get(_name_key(image))
            key = path or ("missing", _name_key(image))
            if key in first:
                first_table, first_row, first_label, first_item = first[key]
                if first_table == table:
                    again = f"{image!r} again (row {first_row})"
                    items.append(Item(f"{table}:row {row}", reason="duplicate_csv_row", detail=again))
                    if first_item is not None and first_item.label is not None and raw_label != first_label:
                        first_item.label, first_item.reason = None, "label_conflict"
                        first_item.detail = f"rows {first_row} and {row} give different classes"
                elif raw_label != first_label:
                    raise PipelineError(
                        f"{name}/{first_table} and {name}/{table} give different classes for {image!r} "
                        f"({first_label!r} on row {first_row}, {raw_label!r} on row {row}); correct one of them"
                    )
                continue
            if path is None:
                item = Item(f"{table}:{image}", reason="missing_file", detail="listed in the CSV, no such image")
            elif path in refused_paths:
                item = None
            elif raw_label not in ("0", "1"):
                item = Item(path.as_posix(), reason="bad_label", detail=f"Class {raw_label!r} is not 0 or 1")
            else:
                item = Item(path.as_posix(), label=int(raw_label), subtype=CLASSES[int(raw_label)])
            first[key] = (table, row, raw_label, item)
            if item is not None:
                items.append(item)
    listed_in = " or ".join(str(t) for t in tables)
    for f in files:
        if f not in first and f not in csvs and not is_system_file(f):
            items.append(Item(f.as_posix(), reason="not_in_csv", detail=f"not listed in {listed_in}"))
    return items


def folder_label_map(data: DataParams) -> dict[str, str]:
    """Folder name -> class from the params' two folder lists (names compare case-insensitively)."""
    tumor = {name.lower() for name in data.tumor_folders}
    non_tumor = {name.lower() for name in data.non_tumor_folders}
    if both := sorted(tumor & non_tumor):
        raise PipelineError(f"data.tumor_folders and data.non_tumor_folders both name {', '.join(both)}")
    return dict.fromkeys(tumor, "tumor") | dict.fromkeys(non_tumor, "non_tumor")


def folder_items(root: Path, files: list[PurePosixPath], labels: dict[str, str], name: str | None = None) -> list[Item]:
    """Label each file by its nearest ancestor folder named in `labels` (case-insensitive)."""
    mapping = {str(k).lower(): CLASSES.index(v) for k, v in labels.items()}
    items = []
    for f in files:
        if is_system_file(f):
            continue
        folder = next((p.lower() for p in reversed(f.parts[:-1]) if p.lower() in mapping), None)
        if folder is None:
            items.append(Item(f.as_posix(), reason="no_label_for_folder", detail=f"folder {f.parent.as_posix()!r}"))
        else:
            items.append(Item(f.as_posix(), label=mapping[folder], subtype=folder))
    if all(item.label is None for item in items):
        folders = sorted({p for f in files for p in f.parts[:-1]})[:10]
        raise PipelineError(
            f"{name or root}: no folder name is in data.tumor_folders or data.non_tumor_folders "
            f"(folders seen: {', '.join(folders) or 'none'})"
        )
    return items


def list_items(
    root: Path, labels: dict[str, str], name: str | None = None, describing_files: Collection[str] = ()
) -> tuple[list[Item], int]:
    """All input items under root with labels (refused entries included), and the number of system files
    (e.g. __MACOSX) skipped. `name` is how messages call `root` (the user's source, not a scratch folder).
    `describing_files`: files at the top of a folder-layout source that describe its scans (an external
    set's labels.csv): neither scans nor files that could not be labelled, so neither listed nor counted."""
    name = name or str(root)
    files, refused = scan_files(root)
    system = sum(is_system_file(f) for f in files)
    if len(files) == system:
        refused_text = f" ({reasons_text(Counter(item.reason for item in refused))} refused)" if refused else ""
        raise PipelineError(f"{name}: no files found{refused_text}")
    tables = find_label_tables(root, files, name)
    if tables:
        items = kaggle_items(root, files, tables, name, refused)
    else:
        items = folder_items(root, [f for f in files if f.as_posix() not in describing_files], labels, name)
    return refused + items, system


# ---------------------------------------------------------------- decoding, in parallel and streaming


def _decode(args: tuple[Path, Item, Path, int]) -> Decoded:
    root, item, image_dir, max_pixels = args
    out = Decoded(item.source, item.label, item.reason, item.detail, item.subtype)
    if item.reason:
        return out
    path = root / item.source
    try:
        rgb = decode_scan(path, max_pixels)
    except RejectedFile as err:
        out.reason, out.detail = err.reason, err.detail
        return out
    out.sha256, out.phash = pixel_sha256(rgb), perceptual_hash(rgb)
    out.height, out.width = rgb.shape[:2]
    png = image_dir / f"{out.sha256[:20]}.png"
    if not png.exists():  # exact duplicates decode to the same file name: write it once
        atomic_write(png, lambda tmp: save_png(rgb, tmp))
    return out


def decode_all(root: Path, items: list[Item], image_dir: Path, max_pixels: int, processes: int) -> list[Decoded]:
    """Decode every item with `processes` workers; only small records come back, never pixels."""
    jobs = [(root, item, image_dir, max_pixels) for item in items]
    with worker_pool(processes) if processes > 1 else contextlib.nullcontext() as pool:
        decoded = map(_decode, jobs) if pool is None else pool.imap(_decode, jobs, chunksize=16)
        results = []
        for result in progress(decoded, "ingest", len(jobs), "file"):
            results.append(result)
            pause_point("ingest", len(results))
        return results


# ---------------------------------------------------------------- duplicates


def near_duplicate_groups(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Connected components of the graph joining hashes at most `max_distance` bits apart.

    Returns a group index per hash (the smallest member index). Each row is compared against all later
    rows in numpy, so memory stays O(n) plus the edges found.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    pairs = [np.empty(0, dtype=np.int64)] * 2
    if max_distance >= 0 and n > 1:
        rows, cols = [], []
        for i in range(n - 1):
            close = np.flatnonzero(np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= max_distance) + i + 1
            rows.append(np.full(len(close), i))
            cols.append(close)
        pairs = [np.concatenate(rows), np.concatenate(cols)]
    graph = coo_matrix((np.ones(len(pairs[0])), (pairs[0], pairs[1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    return pd.Series(np.arange(n)).groupby(component).transform("min").to_numpy()


# ---------------------------------------------------------------- the stage


def ingest_settings(data: DataParams) -> dict:
    """`ingest_folder`'s settings from the params' `data` section (the stage and the benchmarks share them)."""
    return {
        "labels": folder_label_map(data),
        "near_duplicate_distance": data.near_duplicate_distance,
        "max_reject_fraction": data.max_reject_fraction,
        "max_pixels": data.max_image_pixels,
        "processes": os.cpu_count() or 1,
    }


def mark_duplicates(
    decoded: pd.DataFrame, near_duplicate_distance: int, image_dir: Path
) -> tuple[pd.DataFrame, pd.Index]:
    """Each decoded file's status (accepted, duplicate, rejected), id and near-duplicate group; groups whose
    members disagree on the label are set aside (their images removed): neither class can claim them, and
    their group numbers are returned."""
    # exact duplicates: one canonical image per pixel hash, the first source (sorted) wins
    good = decoded["reason"].isna()
    canonical = good & ~decoded["sha256"].where(good).duplicated()
    unique = decoded[canonical]
    groups = near_duplicate_groups(unique["phash"].to_numpy(dtype=np.uint64), near_duplicate_distance)
    decoded["group"] = decoded["sha256"].map(pd.Series(groups, index=unique["sha256"]))
    conflicts = decoded[good].groupby("group")["label"].nunique().loc[lambda n: n > 1].index
    conflicted = good & decoded["group"].isin(conflicts)
    decoded.loc[conflicted, ["reason", "detail"]] = ["label_conflict", "duplicate images with different labels"]
    for sha in decoded.loc[conflicted, "sha256"].unique():
        (image_dir / f"{sha[:20]}.png").unlink(missing_ok=True)
    decoded["status"] = np.select([decoded["reason"].notna(), canonical], ["rejected", "accepted"], "duplicate")
    decoded["id"] = decoded["sha256"].str[:20]
    return decoded, conflicts


def manifest_table(accepted: pd.DataFrame) -> pd.DataFrame:
    """manifest.csv: one row per accepted image (core/contracts.py's DATASET_MANIFEST)."""
    return pd.DataFrame(
        {
            "id": accepted["id"],
            "file": "images/" + accepted["id"] + ".png",
            "label": accepted["label"].astype(int),
            "class": np.array(CLASSES)[accepted["label"].astype(int)],
            "group": accepted["group"].map("g{:06.0f}".format),
            "width": accepted["width"],
            "height": accepted["height"],
            "sha256": accepted["sha256"],
            "phash": accepted["phash"].map("{:016x}".format),
            "source": accepted["source"],
            "subtype": accepted["subtype"],  # the class folder (glioma, notumor, ...) or the class name
            "source_folder": accepted["source"].map(top_folder),  # e.g. Training / Testing
        }
    )


def ingest_folder(
    root: Path,
    out_dir: Path,
    *,
    labels: dict[str, str],
    near_duplicate_distance: int,
    max_reject_fraction: float,
    max_pixels: int,
    processes: int,
    pre_rejected: Iterable[Item] = (),
    source_name: str | None = None,
    both_classes: bool = True,
    describing_files: Collection[str] = (),
) -> dict:
    """Read the dataset at `root` into `out_dir` (images/, manifest.csv, files.csv); return the report.

    Nothing is written to `out_dir` unless the run succeeds; data with one class only is an error here,
    before any training (`both_classes`; an external test set may hold one class). `describing_files`: as list_items.
    """
    name = source_name or str(root)
    items, system_files = list_items(root, labels, name, describing_files)
    items = list(pre_rejected) + items
    with atomic_dir(out_dir) as tmp:
        image_dir = tmp / "images"
        image_dir.mkdir()
        decoded = pd.DataFrame([asdict(d) for d in decode_all(root, items, image_dir, max_pixels, processes)])
        decoded = decoded.sort_values("source", kind="stable", ignore_index=True)

        decoded, conflicts = mark_duplicates(decoded, near_duplicate_distance, image_dir)
        files = decoded[["source", "status", "reason", "detail", "id"]].fillna({"reason": ""})
        manifest = manifest_table(decoded[decoded["status"] == "accepted"])
        report = ingest_report(files, manifest, len(conflicts), system_files, name)
        reasons = reasons_text(report["rejected_by_reason"])
        if manifest.empty:
            raise PipelineError(f"{name}: no usable image ({reasons})")
        if report["rejected_fraction"] > max_reject_fraction:
            raise PipelineError(
                f"{name}: {report['rejected']} of {report['files_seen']} files rejected "
                f"({report['rejected_fraction']:.1%} > data.max_reject_fraction {max_reject_fraction:.1%}): "
                f"{reasons}"
            )
        rejected = f" (rejected: {reasons})" if report["rejected"] else ""
        if both_classes:
            require_both_classes(manifest["label"], f"{name}: accepted images{rejected}")
        write_table(tmp / "manifest.csv", manifest)
        write_table(tmp / "files.csv", files)
        write_json(tmp / "report.json", report)
    return report


def top_folder(source: str) -> str:
    """The first folder of a source path (`Training/glioma/1.jpg` -> `Training`), '' for a file at the root."""
    parts = PurePosixPath(source).parts
    return parts[0] if len(parts) > 1 else ""


def reasons_text(by_reason: Mapping[str, int]) -> str:
    """ "reason count, ..." in reason order, as every one-line summary of refused files says it."""
    return ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) or "no files"


def ingest_report(
    files: pd.DataFrame, manifest: pd.DataFrame, conflict_groups: int, system_files: int, source: str
) -> dict:
    """Counts for metrics/ingest.json and the data report: files by fate, reasons, duplicate groups, classes."""
    status = files["status"].value_counts()
    reasons = files.loc[files["status"] == "rejected", "reason"].value_counts().sort_index()
    copies = files.loc[files["status"] == "duplicate", "id"].value_counts()
    files_per_group = (1 + manifest["id"].map(copies).fillna(0)).groupby(manifest["group"]).sum().astype(int)
    in_groups = files_per_group[files_per_group > 1]
    seen = len(files)
    return {
        "source": source,
        "files_seen": seen,
        "accepted": int(status.get("accepted", 0)),
        "duplicates": int(status.get("duplicate", 0)),
        "rejected": int(status.get("rejected", 0)),
        "rejected_fraction": round(int(status.get("rejected", 0)) / seen, 6) if seen else 0.0,
        "rejected_by_reason": {k: int(v) for k, v in reasons.items()},
        "system_files_skipped": system_files,
        "duplicate_groups": len(in_groups),
        "files_in_duplicate_groups": int(in_groups.sum()),
        "largest_duplicate_group": int(files_per_group.max()) if len(files_per_group) else 0,
        "label_conflict_groups": conflict_groups,
        "per_class": {c: int((manifest["class"] == c).sum()) for c in CLASSES},
    }


SYNTHETIC_SOURCE = Path("data/synthetic")  # a committed folder: DVC's dependency when data.source selects it


def open_source(
    source: str, raw_dir: Path, workdir: Path, max_bytes: int, key: str = "data.source"
) -> tuple[Path, list[Item]]:
    """Resolve `source` (the param `key`: a folder or .zip under `raw_dir`) to a folder to read, plus refused zip
    entries."""
    path = Path(source)
    if not path.exists():
        raise PipelineError(f"{key}: {source!r} does not exist")
    if not path.resolve().is_relative_to(raw_dir.resolve()):
        also = f" (or {SYNTHETIC_SOURCE})" if key == "data.source" else ""
        raise PipelineError(f"{key}: {source!r} is not under {raw_dir}/{also}")
    if path.is_dir():
        return path, []
    if path.is_file() and path.suffix.lower() == ".zip":  # is_file: a FIFO named .zip would hang the reader
        target = workdir / "extracted"
        target.mkdir()
        return target, safe_extract(path, target, max_bytes)
    raise PipelineError(f"{key}: {source!r} is neither a folder nor a .zip archive")


def build_dataset(params: Params, raw_dir: Path, out_dir: Path, report_path: Path) -> dict:
    """The ingest stage: params -> canonical dataset in `out_dir` and the data report at `report_path`."""
    data = params.data
    with scratch_dir(out_dir.parent, "ingest") as work:  # next to the output, removed even after a kill
        source = data.source
        if Path(source) == SYNTHETIC_SOURCE:  # the built-in set, generated from data.synthetic
            from brain_tumor.data.synthetic import write_kaggle_layout

            syn = data.synthetic
            write_kaggle_layout(work, syn.n_images, syn.image_size, syn.tumor_fraction, syn.seed)
            root, refused = work, []
        else:
            root, refused = open_source(source, raw_dir, work, data.max_archive_mb * 2**20)
        report = ingest_folder(root, out_dir, **ingest_settings(data), pre_rejected=refused, source_name=source)
    write_json(report_path, report)
    return report

"""Ingest: any supported dataset layout in, a canonical dataset out (each image once, RGB PNG),
with every input file accounted for: accepted, an exact duplicate of an accepted image, or rejected
with a reason.

Layouts: the Kaggle "Brain Tumor" layout (a CSV with `Image` and `Class` at the root or one level down,
images anywhere below it) and class-folder trees of any depth whose folder names map to a class through
`data.tumor_folders` / `data.non_tumor_folders`. Either as a folder or a `.zip`.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .common import CLASSES, PipelineError, atomic_dir, atomic_write, progress, write_json, write_table
from .images import IMAGE_SUFFIXES, RejectedFile, load_rgb, perceptual_hash, pixel_sha256, save_png

SYSTEM_FILES = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass
class Item:
    """One input file (or a CSV row naming a file that is not there)."""

    source: str  # path relative to the dataset root, '/'-separated
    label: int | None = None
    reason: str | None = None  # set when the item is rejected before decoding
    detail: str = ""


@dataclass
class Decoded:
    source: str
    label: int | None
    reason: str | None = None
    detail: str = ""
    sha256: str = ""
    phash: int = 0
    width: int = 0
    height: int = 0


# ---------------------------------------------------------------- opening a dataset (folder or zip)


def safe_extract(archive: Path, target: Path, max_bytes: int) -> list[Item]:
    """Extract `archive` into `target`; entries that would escape it are refused and returned as rejects.

    The whole archive is refused when its uncompressed size exceeds `max_bytes` (declared or actual).
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise PipelineError(f"{archive}: not a readable zip archive ({err})") from None
    refused: list[Item] = []
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise PipelineError(
                f"{archive}: uncompressed size {declared / 2**20:.0f} MiB exceeds data.max_archive_mb "
                f"({max_bytes / 2**20:.0f} MiB); refusing to extract"
            )
        written = 0
        root = target.resolve()
        for member in members:
            name = member.filename
            is_symlink = (member.external_attr >> 16) & 0o170000 == 0o120000
            dest = (target / name).resolve()
            if (
                is_symlink
                or PurePosixPath(name).is_absolute()
                or ".." in PurePosixPath(name).parts
                or not dest.is_relative_to(root)
            ):
                refused.append(
                    Item(
                        name,
                        reason="unsafe_zip_entry",
                        detail="symlink" if is_symlink else "path escapes the archive root",
                    )
                )
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # sizes in the header can lie
                        raise PipelineError(
                            f"{archive}: uncompressed data exceeds data.max_archive_mb "
                            f"({max_bytes / 2**20:.0f} MiB); refusing to extract"
                        )
                    out.write(chunk)
    return refused


# ---------------------------------------------------------------- finding the files and their labels


def _is_system_file(rel: PurePosixPath) -> bool:
    return any(part in SYSTEM_FILES or part.startswith("._") for part in rel.parts)


def list_files(root: Path) -> list[PurePosixPath]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            files.append(PurePosixPath(Path(dirpath, name).relative_to(root).as_posix()))
    return files


def read_label_table(path: Path) -> pd.DataFrame:
    """A label CSV as strings: UTF-8 (with or without BOM) or Latin-1, delimiter sniffed (`,`, `;`, tab)."""
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            table = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False, encoding=encoding)
            break
        except UnicodeDecodeError:
            continue
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            raise PipelineError(f"{path}: not a readable CSV table ({str(err).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def find_label_csv(root: Path, files: list[PurePosixPath]) -> PurePosixPath | None:
    """The Kaggle label table: a CSV at the root or one level down with `Image` and `Class` columns."""
    candidates = [f for f in files if f.suffix.lower() == ".csv" and len(f.parts) <= 2 and not _is_system_file(f)]
    columns = {f: set(read_label_table(root / f).columns) for f in candidates}
    with_image = [f for f in candidates if "Image" in columns[f]]
    with_class = [f for f in with_image if "Class" in columns[f]]
    if with_class:
        return with_class[0]
    if with_image:
        raise PipelineError(f"{root / with_image[0]}: has an 'Image' column but no 'Class' column")
    return None


def kaggle_items(root: Path, files: list[PurePosixPath], table: PurePosixPath) -> list[Item]:
    """Match CSV rows (Image name with or without extension) to image files found anywhere below root."""
    tables = {f for f in files if f.suffix.lower() == ".csv" and len(f.parts) <= 2}
    by_name: dict[str, PurePosixPath] = {}
    for f in files:
        if f not in tables and not _is_system_file(f):
            by_name.setdefault(f.name.lower(), f)
            by_name.setdefault(f.stem.lower(), f)
    items: list[Item] = []
    listed: set[PurePosixPath] = set()
    rows = read_label_table(root / table)
    for name, raw_label in zip(rows["Image"].str.strip(), rows["Class"].str.strip(), strict=True):
        path = by_name.get(name.lower())
        if path is None:
            items.append(Item(f"{table}:{name}", reason="missing_file", detail="listed in the CSV, no such image"))
            continue
        listed.add(path)
        if raw_label not in ("0", "1"):
            items.append(Item(path.as_posix(), reason="bad_label", detail=f"Class {raw_label!r} is not 0 or 1"))
        else:
            items.append(Item(path.as_posix(), label=int(raw_label)))
    for f in files:
        if f not in listed and f not in tables and not _is_system_file(f):
            items.append(Item(f.as_posix(), reason="not_in_csv", detail=f"not listed in {table}"))
    return items


def folder_label_map(data: dict) -> dict[str, str]:
    """Folder name -> class from the params' two folder lists (names compare case-insensitively)."""
    tumor = {str(name).lower() for name in data["tumor_folders"]}
    non_tumor = {str(name).lower() for name in data["non_tumor_folders"]}
    if both := sorted(tumor & non_tumor):
        raise PipelineError(f"data.tumor_folders and data.non_tumor_folders both name {', '.join(both)}")
    return dict.fromkeys(tumor, "tumor") | dict.fromkeys(non_tumor, "non_tumor")


def folder_items(root: Path, files: list[PurePosixPath], labels: dict[str, str]) -> list[Item]:
    """Label each file by its nearest ancestor folder named in `labels` (case-insensitive)."""
    mapping = {str(k).lower(): CLASSES.index(v) for k, v in labels.items()}
    items = []
    for f in files:
        if _is_system_file(f):
            continue
        label = next((mapping[p.lower()] for p in reversed(f.parts[:-1]) if p.lower() in mapping), None)
        if label is None:
            items.append(Item(f.as_posix(), reason="no_label_for_folder", detail=f"folder {f.parent.as_posix()!r}"))
        else:
            items.append(Item(f.as_posix(), label=label))
    if all(item.label is None for item in items):
        folders = sorted({p for f in files for p in f.parts[:-1]})[:10]
        raise PipelineError(
            f"{root}: no folder name is in data.tumor_folders or data.non_tumor_folders "
            f"(folders seen: {', '.join(folders) or 'none'})"
        )
    return items


def list_items(root: Path, labels: dict[str, str]) -> tuple[list[Item], int]:
    """All input items under root with labels, and the number of system files (e.g. __MACOSX) skipped."""
    files = list_files(root)
    system = sum(_is_system_file(f) for f in files)
    if len(files) == system:
        raise PipelineError(f"{root}: no files found")
    table = find_label_csv(root, files)
    items = kaggle_items(root, files, table) if table else folder_items(root, files, labels)
    return items, system


# ---------------------------------------------------------------- decoding, in parallel and streaming


def _decode(args: tuple[Path, Item, Path, int]) -> Decoded:
    root, item, image_dir, max_pixels = args
    out = Decoded(item.source, item.label, item.reason, item.detail)
    if item.reason:
        return out
    path = root / item.source
    try:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise RejectedFile("not_an_image", f"suffix {path.suffix or '(none)'!r}")
        rgb = load_rgb(path, max_pixels)
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
    if processes <= 1:
        return [_decode(job) for job in progress(jobs, "ingest", unit="file")]
    with Pool(processes) as pool:
        return list(progress(pool.imap(_decode, jobs, chunksize=16), "ingest", len(jobs), "file"))


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
) -> dict:
    """Read the dataset at `root` into `out_dir` (images/, manifest.csv, files.csv); return the report.

    Nothing is written to `out_dir` unless the run succeeds.
    """
    items, system_files = list_items(root, labels)
    items = list(pre_rejected) + items
    with atomic_dir(out_dir) as tmp:
        image_dir = tmp / "images"
        image_dir.mkdir()
        decoded = pd.DataFrame([asdict(d) for d in decode_all(root, items, image_dir, max_pixels, processes)])
        decoded = decoded.sort_values("source", kind="stable", ignore_index=True)

        # exact duplicates: one canonical image per pixel hash, the first source (sorted) wins
        good = decoded["reason"].isna()
        canonical = good & ~decoded["sha256"].where(good).duplicated()
        unique = decoded[canonical]
        groups = near_duplicate_groups(unique["phash"].to_numpy(dtype=np.uint64), near_duplicate_distance)
        group_of_sha = pd.Series(groups, index=unique["sha256"])
        decoded["group"] = decoded["sha256"].map(group_of_sha)

        # groups whose members disagree on the label are set aside: neither class can claim them
        conflicts = decoded[good].groupby("group")["label"].nunique().loc[lambda n: n > 1].index
        conflicted = good & decoded["group"].isin(conflicts)
        decoded.loc[conflicted, ["reason", "detail"]] = ["label_conflict", "duplicate images with different labels"]
        for sha in decoded.loc[conflicted, "sha256"].unique():
            (image_dir / f"{sha[:20]}.png").unlink(missing_ok=True)

        decoded["status"] = np.select([decoded["reason"].notna(), canonical], ["rejected", "accepted"], "duplicate")
        decoded["id"] = decoded["sha256"].str[:20]
        files = decoded[["source", "status", "reason", "detail", "id"]].fillna({"reason": ""})
        accepted = decoded[decoded["status"] == "accepted"]
        manifest = pd.DataFrame(
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
            }
        )

        report = data_report(files, manifest, len(conflicts), system_files, source_name or str(root))
        if manifest.empty:
            raise PipelineError(f"{source_name or root}: no usable image ({_reasons_text(report)})")
        if report["rejected_fraction"] > max_reject_fraction:
            raise PipelineError(
                f"{source_name or root}: {report['rejected']} of {report['files_seen']} files rejected "
                f"({report['rejected_fraction']:.1%} > data.max_reject_fraction {max_reject_fraction:.1%}): "
                f"{_reasons_text(report)}"
            )
        write_table(tmp / "manifest.csv", manifest)
        write_table(tmp / "files.csv", files)
        write_json(tmp / "report.json", report)
    return report


def _reasons_text(report: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()) or "no files"


def data_report(
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


def open_source(source: str, raw_dir: Path, workdir: Path, max_bytes: int) -> tuple[Path, list[Item]]:
    """Resolve `data.source` (a folder or .zip under `raw_dir`) to a folder to read, plus refused zip entries."""
    path = Path(source)
    if not path.exists():
        raise PipelineError(f"data.source: {source!r} does not exist")
    if not path.resolve().is_relative_to(raw_dir.resolve()):
        raise PipelineError(f"data.source: {source!r} is not under {raw_dir}/ (or 'synthetic')")
    if path.is_dir():
        return path, []
    if path.suffix.lower() == ".zip":
        target = workdir / "extracted"
        target.mkdir()
        return target, safe_extract(path, target, max_bytes)
    raise PipelineError(f"data.source: {source!r} is neither a folder nor a .zip archive")


def build_dataset(params: dict, raw_dir: Path, out_dir: Path, report_path: Path) -> dict:
    """The ingest stage: params -> canonical dataset in `out_dir` and the data report at `report_path`."""
    data = params["data"]
    with tempfile.TemporaryDirectory(prefix="ingest-") as work_name:
        work = Path(work_name)
        source = str(data["source"])
        if source == "synthetic":
            from .synthetic import write_kaggle_layout

            syn = data["synthetic"]
            write_kaggle_layout(work, syn["n_images"], syn["image_size"], syn["tumor_fraction"], params["seed"])
            root, refused = work, []
        else:
            root, refused = open_source(source, raw_dir, work, int(data["max_archive_mb"]) * 2**20)
        report = ingest_folder(
            root,
            out_dir,
            labels=folder_label_map(data),
            near_duplicate_distance=int(data["near_duplicate_distance"]),
            max_reject_fraction=float(data["max_reject_fraction"]),
            max_pixels=int(data["max_image_pixels"]),
            processes=os.cpu_count() or 1,
            pre_rejected=refused,
            source_name=source,
        )
    write_json(report_path, report)
    return report

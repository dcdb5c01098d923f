"""Ingest (brain_tumor/data/ingest.py, sources.py), called directly: every layout with bad files mixed in and exact
accounting, label tables, archives, and the one-line errors for a source that cannot be used. (The stage
script's own path: test_hardening.py and test_faults.py.)"""

import csv
import shutil
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_accounted, class_folders, kaggle, png_bytes, save, scan, truncated_jpeg, zip_of
from PIL import Image

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.outputs import read_table
from brain_tumor.core.params import typed
from brain_tumor.data import ingest, sources

LABELS = {
    "no": "non_tumor",
    "yes": "tumor",
    "notumor": "non_tumor",
    "glioma": "tumor",
    "meningioma": "tumor",
    "tumor": "tumor",
    "non_tumor": "non_tumor",
}
# the bad files every layout below mixes in, and the reason each must get
BAD = {
    "empty": "empty_file",
    "cut": "truncated_or_corrupt",
    "text": "not_an_image",
    "huge": "decompression_bomb",
    "blank": "blank_image",
}


def add_bad_files(folder: Path, names: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names["empty"]).write_bytes(b"")
    truncated_jpeg(folder / names["cut"], 99)
    (folder / names["text"]).write_text("hello")
    Image.new("L", (300, 300)).save(folder / names["huge"])
    black = np.zeros((32, 32, 3), dtype=np.uint8)
    black[5, 5] = 255  # a black frame with one hot pixel: blank (decoding itself: test_images.py)
    save(folder / names["blank"], black)


def run_ingest(root: Path, out: Path, **kw):
    args = dict(labels=LABELS, near_duplicate_distance=4, max_reject_fraction=0.9, max_pixels=20_000, processes=2)
    return ingest.ingest_folder(root, out, **(args | kw))


def kaggle_dataset(root: Path, nested: bool) -> dict[str, str]:
    """12 good images (one also copied under another name, one resized copy), plus bad rows and files.

    Returns the expected reason per source for rejected items.
    """
    images = root / "Brain Tumor" / "Brain Tumor" if nested else root / "Brain Tumor"
    rows = []
    for i in range(1, 13):
        save(images / f"Image{i}.jpg", scan(i), "PNG")
        rows.append((f"Image{i}" if i % 2 else f"Image{i}.jpg", i % 2))
    shutil.copy(images / "Image1.jpg", images / "Image13.jpg")  # exact duplicate, same label
    rows.append(("Image13", 1))
    save(images / "Image14.png", np.asarray(Image.fromarray(scan(2)).resize((28, 28))))  # near duplicate of Image2
    rows.append(("Image14", 0))
    rows.append(("Image99", 1))  # listed, missing
    save(images / "Image15.png", scan(15))
    rows.append(("Image15", 7))  # label not 0/1
    bad = {"empty": "Image16.jpg", "cut": "Image17.jpg", "text": "Image18.jpg", "huge": "Image19.png"}
    bad["blank"] = "Image20.png"
    add_bad_files(images, bad)
    rows += [("Image16", 0), ("Image17", 1), ("Image18", 0), ("Image19", 1), ("Image20", 0)]
    save(images / "stray.png", scan(77))  # present, not listed
    with open(root / "Brain Tumor.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image", "Class", "Mean"])
        w.writerows([(name, label, 0.5) for name, label in rows])
    prefix = "Brain Tumor/Brain Tumor/" if nested else "Brain Tumor/"
    expected = {f"{prefix}{name}": BAD[kind] for kind, name in bad.items()}
    expected |= {
        "Brain Tumor.csv:Image99": "missing_file",
        f"{prefix}Image15.png": "bad_label",
        f"{prefix}stray.png": "not_in_csv",
    }
    return expected


def folder_dataset(root: Path, yes_no: bool) -> dict[str, str]:
    pos, neg = ("yes", "no") if yes_no else ("Training/glioma", "Testing/NoTumor")
    for i in range(1, 13):
        save(root / (pos if i % 2 else neg) / f"scan{i}.png", scan(i))
    shutil.copy(root / pos / "scan1.png", root / neg / "copy_of_1.png")  # same pixels, other label: conflict
    save(root / "unsorted" / "scan20.png", scan(20))  # folder with no class
    bad = {"empty": "e.png", "cut": "c.jpg", "text": "t.bmp", "huge": "h.png", "blank": "b.png"}
    add_bad_files(root / pos, bad)
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._scan1.png").write_bytes(b"junk")
    expected = {f"{pos}/{name}": BAD[kind] for kind, name in bad.items()}
    expected |= {
        "unsorted/scan20.png": "no_label_for_folder",
        f"{pos}/scan1.png": "label_conflict",
        f"{neg}/copy_of_1.png": "label_conflict",
    }
    return expected


def check_accounting(report: dict, out: Path, expected: dict[str, str], extra: dict[str, str] | None = None) -> None:
    files = read_table(out / "files.csv")
    assert report["accepted"] + report["rejected"] + report["duplicates"] == report["files_seen"] == len(files)
    rejected = dict(files.loc[files["status"] == "rejected", ["source", "reason"]].itertuples(index=False))
    assert rejected == expected | (extra or {})
    manifest = read_table(out / "manifest.csv")
    assert len(manifest) == report["accepted"] == len(list((out / "images").glob("*.png")))
    assert all(Image.open(out / f).mode == "RGB" for f in manifest["file"])


@pytest.mark.parametrize("nested", [True, False])
def test_kaggle_folder(tmp_path, nested):
    expected = kaggle_dataset(tmp_path / "raw", nested)
    report = run_ingest(tmp_path / "raw", tmp_path / "out")
    check_accounting(report, tmp_path / "out", expected)
    assert report["duplicates"] == 1  # Image13 is Image1 again
    manifest = read_table(tmp_path / "out" / "manifest.csv")
    group = dict(zip(manifest["source"].map(lambda s: Path(s).stem), manifest["group"], strict=True))
    assert group["Image2"] == group["Image14"] != group["Image4"]  # the resized copy joins its original
    assert report["duplicate_groups"] == 2 and report["files_in_duplicate_groups"] == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda root: kaggle_dataset(root, nested=True),
        lambda root: kaggle_dataset(root, nested=False),
        lambda root: folder_dataset(root, yes_no=True),
    ],
    ids=["kaggle-nested", "kaggle-flat", "yes-no-folders"],
)
def test_zip(tmp_path, make):
    expected = make(tmp_path / "raw")
    archive = zip_of(tmp_path / "raw", tmp_path / "data.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("../escape.png", b"x")  # zip-slip
    (tmp_path / "work").mkdir()
    root, refused = ingest.open_source(str(archive), tmp_path, tmp_path / "work", 10**8)
    report = run_ingest(root, tmp_path / "out", pre_rejected=refused)
    check_accounting(report, tmp_path / "out", expected, {"../escape.png": "unsafe_zip_entry"})
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize("yes_no", [True, False])
def test_class_folders(tmp_path, yes_no):
    expected = folder_dataset(tmp_path / "raw", yes_no)
    report = run_ingest(tmp_path / "raw", tmp_path / "out")
    check_accounting(report, tmp_path / "out", expected)
    assert report["label_conflict_groups"] == 1 and report["system_files_skipped"] == 1
    assert report["per_class"] == {"non_tumor": 6, "tumor": 5}


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("yes/a.png", b"\0" * 5_000_000)
    with pytest.raises(PipelineError, match="exceeds data.max_archive_mb"):
        sources.safe_extract(archive, tmp_path / "out", max_bytes=1_000_000)


def test_too_many_rejects_fail_without_output(tmp_path):
    folder_dataset(tmp_path / "raw", True)
    with pytest.raises(PipelineError) as err:
        run_ingest(tmp_path / "raw", tmp_path / "out", max_reject_fraction=0.05, source_name="data/raw/src")
    assert str(err.value) == (
        "data/raw/src: 8 of 19 files rejected (42.1% > data.max_reject_fraction 5.0%): blank_image 1, "
        "decompression_bomb 1, empty_file 1, label_conflict 2, no_label_for_folder 1, not_an_image 1, "
        "truncated_or_corrupt 1"
    )
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporary folder (.tmp-<pid>-out-...) left


def empty_folder(root: Path) -> None:
    root.mkdir()


def unclassed_folder(root: Path) -> None:
    save(root / "misc" / "a.png", scan(1))


def table_without_class_column(root: Path) -> None:
    root.mkdir()
    (root / "t.csv").write_text("Image,Target\nImage1,1\n")


@pytest.mark.parametrize(
    "make,message",
    [
        (empty_folder, "data/raw/src: no files found"),
        (
            unclassed_folder,
            "data/raw/src: no folder name is in data.tumor_folders or data.non_tumor_folders (folders seen: misc)",
        ),
        (table_without_class_column, "data/raw/src/t.csv: has an 'Image' column but no 'Class' column"),
    ],
    ids=["empty", "no-class-folder", "no-class-column"],
)
def test_unusable_datasets_fail_with_one_line(tmp_path, make, message):
    make(tmp_path / "raw")
    with pytest.raises(PipelineError) as err:
        run_ingest(tmp_path / "raw", tmp_path / "out", source_name="data/raw/src")
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()


def test_a_source_that_is_missing_or_outside_data_raw_is_one_line(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with pytest.raises(PipelineError) as err:
        ingest.open_source(str(raw / "nope"), raw, tmp_path, 10**6)
    assert str(err.value) == f"data.source: {str(raw / 'nope')!r} does not exist"
    with pytest.raises(PipelineError) as err:
        ingest.open_source(str(tmp_path), raw, tmp_path, 10**6)
    assert str(err.value) == f"data.source: {str(tmp_path)!r} is not under {raw}/ (or data/synthetic)"


def labelled(items) -> dict[str, object]:
    """source -> label (or reason) of each item."""
    return {item.source: item.reason or item.label for item in items}


def label_table(rows: list[tuple[str, object]], encoding: str = "utf-8") -> bytes:
    """An Image,Class table as Excel writes it (CRLF line ends) in `encoding`."""
    return "".join(f"{name},{label}\r\n" for name, label in [("Image", "Class"), *rows]).encode(encoding)


def label_csv(path: Path, rows: list[tuple[str, object]], encoding: str = "utf-8") -> None:
    path.write_bytes(label_table(rows, encoding))


def test_several_label_tables_are_read_as_one_when_they_agree(tmp_path):
    for i in range(1, 5):
        save(tmp_path / "images" / f"Image{i}.png", scan(i))
    label_csv(tmp_path / "a.csv", [("Image1", 1), ("Image2", 0)])
    label_csv(tmp_path / "b.csv", [("Image2", 0), ("Image3", 1), ("Image4", 0)])  # Image2 again, same class
    items, _ = ingest.list_items(tmp_path, LABELS)
    assert labelled(items) == {"images/Image1.png": 1, "images/Image2.png": 0, "images/Image3.png": 1,
                               "images/Image4.png": 0}  # fmt: skip


def test_label_tables_that_disagree_are_one_error_naming_both_and_the_image(tmp_path):
    """list_items itself (the stage's path, which must leave nothing behind: test_faults.py)."""
    save(tmp_path / "images" / "Image1.png", scan(1))
    label_csv(tmp_path / "a.csv", [("Image1", 1)])
    (tmp_path / "extra").mkdir()
    label_csv(tmp_path / "extra" / "b.csv", [("image1.png", 0)])
    with pytest.raises(PipelineError) as err:
        ingest.list_items(tmp_path, LABELS, "data/raw/src")
    assert str(err.value) == (
        "data/raw/src/a.csv and data/raw/src/extra/b.csv give different classes for 'image1.png' "
        "('1' on row 2, '0' on row 2); correct one of them"
    )


def test_windows_1252_csv_and_decomposed_file_names_match(tmp_path):
    """Excel on Windows writes an en dash as 0x96 (a control character in Latin-1); macOS zips store é as e + ◌́."""
    save(tmp_path / "images" / "scan – 1.png", scan(1))
    save(tmp_path / "images" / "scan e\u0301te\u0301.png", scan(2))  # NFD on disk
    label_csv(tmp_path / "labels.csv", [("scan – 1", 1), ("scan \u00e9t\u00e9", 0)], encoding="cp1252")  # NFC
    assert (tmp_path / "labels.csv").read_bytes().count(b"\x96") == 1
    items, _ = ingest.list_items(tmp_path, LABELS)
    assert labelled(items) == {"images/scan – 1.png": 1, "images/scan e\u0301te\u0301.png": 0}


def test_backslash_zip_entries_become_folders_and_still_cannot_escape(tmp_path):
    archive = tmp_path / "windows.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("yes\\scan.png", b"x")
        zf.writestr("data\\no\\", b"")  # a folder entry
        zf.writestr("..\\..\\escape.png", b"x")
        zf.writestr("C:\\escape.png", b"x")
    refused = sources.safe_extract(archive, tmp_path / "out", 10**6)
    assert [(r.source, r.reason) for r in refused] == [
        ("../../escape.png", "unsafe_zip_entry"),
        ("C:/escape.png", "unsafe_zip_entry"),
    ]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "out", "out/yes", "out/yes/scan.png", "windows.zip"
    ]  # fmt: skip


def test_a_windows_zip_with_two_tables_in_cp1252_and_decomposed_names_is_read_whole(tmp_path, tiny_params):
    """The three cases above together, through a zip and build_dataset (what the stage runs): backslash
    separators, names stored decomposed (NFD), one table in Windows-1252 and one in UTF-8 that repeats an image
    with the same class; every image is accepted, with its class."""
    names = [f"scan {i} – {'été' if i % 2 else 'hiver'}" for i in range(12)]  # an en dash: 0x96 in cp1252
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [(name, i % 2) for i, name in enumerate(names)]  # odd scans are tumours
    archive = raw / "windows.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(f"Brain Tumor\\images\\{unicodedata.normalize('NFD', name)}.png", png_bytes(scan(i)))
        zf.writestr("Brain Tumor\\labels.csv", label_table(rows[:7], "cp1252"))
        zf.writestr("Brain Tumor\\more labels.csv", label_table(rows[6:]))  # UTF-8; row 6 again
    tiny_params["data"]["source"] = str(archive)
    report = ingest.build_dataset(typed(tiny_params), raw, tmp_path / "dataset", tmp_path / "ingest.json")
    assert report["accepted"] == 12 and report["rejected"] == 0
    manifest = read_table(tmp_path / "dataset" / "manifest.csv")
    classes = {unicodedata.normalize("NFC", Path(s).stem): c for s, c in zip(manifest["source"], manifest["class"])}
    assert classes == {name: ("tumor" if i % 2 else "non_tumor") for i, name in enumerate(names)}


# ---------------------------------------------------------------- duplicates and archive faults, accounted


def test_zip_crc_error_names_archive_and_entry(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("yes/a.png", b"A" * 100)
    archive.write_bytes(archive.read_bytes().replace(b"A" * 100, b"B" + b"A" * 99))
    with pytest.raises(PipelineError, match=r"data.zip: entry 'yes/a.png' is corrupt \(Bad CRC-32"):
        sources.safe_extract(archive, tmp_path / "out", 10**6)


EXACT_ONLY = {"near_duplicate_distance": -1, "max_pixels": 10**6, "processes": 1}  # distinct scans stay distinct


def test_duplicate_zip_entries_are_accounted(tmp_path):
    archive = tmp_path / "data.zip"
    class_folders(tmp_path / "src")
    zip_of(tmp_path / "src", archive)
    with zipfile.ZipFile(archive, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("yes/y0.png", (tmp_path / "src" / "no" / "n0.png").read_bytes())
    (tmp_path / "x").mkdir()
    refused = sources.safe_extract(archive, tmp_path / "x", 10**8)
    assert [(r.source, r.reason) for r in refused] == [("yes/y0.png (entry 13)", "duplicate_zip_entry")]
    report = run_ingest(tmp_path / "x", tmp_path / "out", pre_rejected=refused, **EXACT_ONLY)
    assert_accounted(report, 13)
    assert report["accepted"] == 12 and report["rejected_by_reason"] == {"duplicate_zip_entry": 1}


def test_duplicate_csv_rows_are_accounted_and_conflicting_ones_reject_the_image(tmp_path):
    rows = [(f"Image{i}", i % 2) for i in range(1, 13)] + [("Image2", 0), ("image2.png", 0), ("Image3", 0)]
    n = kaggle(tmp_path / "src", rows=rows)
    report = run_ingest(tmp_path / "src", tmp_path / "out", **EXACT_ONLY)
    assert_accounted(report, n + 3)
    rejected = dict(
        read_table(tmp_path / "out" / "files.csv").query("status == 'rejected'")[["source", "reason"]].values
    )
    assert rejected == {
        "Brain Tumor.csv:row 14": "duplicate_csv_row",
        "Brain Tumor.csv:row 15": "duplicate_csv_row",
        "Brain Tumor.csv:row 16": "duplicate_csv_row",
        "images/Image3.png": "label_conflict",  # rows 4 and 16 disagree: neither class can claim it
    }

import csv
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import save, scan, truncated_jpeg
from PIL import Image

from brain_tumor import ingest, sources
from brain_tumor.errors import PipelineError
from brain_tumor.outputs import read_table

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
BAD = {"empty": "empty_file", "cut": "truncated_or_corrupt", "text": "not_an_image", "huge": "decompression_bomb"}


def add_bad_files(folder: Path, names: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names["empty"]).write_bytes(b"")
    truncated_jpeg(folder / names["cut"], 99)
    (folder / names["text"]).write_text("hello")
    Image.new("L", (300, 300)).save(folder / names["huge"])


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
    add_bad_files(images, {"empty": "Image16.jpg", "cut": "Image17.jpg", "text": "Image18.jpg", "huge": "Image19.png"})
    rows += [("Image16", 0), ("Image17", 1), ("Image18", 0), ("Image19", 1)]
    save(images / "stray.png", scan(77))  # present, not listed
    with open(root / "Brain Tumor.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image", "Class", "Mean"])
        w.writerows([(name, label, 0.5) for name, label in rows])
    prefix = "Brain Tumor/Brain Tumor/" if nested else "Brain Tumor/"
    expected = {f"{prefix}Image{i}.{'png' if i == 19 else 'jpg'}": BAD[k] for i, k in zip(range(16, 20), BAD)}
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
    add_bad_files(root / pos, {"empty": "e.png", "cut": "c.jpg", "text": "t.bmp", "huge": "h.png"})
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._scan1.png").write_bytes(b"junk")
    expected = {f"{pos}/{n}": BAD[k] for k, n in zip(BAD, ["e.png", "c.jpg", "t.bmp", "h.png"])}
    expected |= {
        "unsorted/scan20.png": "no_label_for_folder",
        f"{pos}/scan1.png": "label_conflict",
        f"{neg}/copy_of_1.png": "label_conflict",
    }
    return expected


def zip_folder(folder: Path, archive: Path, evil: bool = True) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
        if evil:
            zf.writestr("../escape.png", b"x")  # zip-slip
    return archive


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
    archive = zip_folder(tmp_path / "raw", tmp_path / "data.zip")
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
    with pytest.raises(PipelineError, match="max_reject_fraction"):
        run_ingest(tmp_path / "raw", tmp_path / "out", max_reject_fraction=0.05)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no temporary folder (.tmp-<pid>-out-...) left


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda root: root.mkdir(), "no files found"),
        (lambda root: save(root / "misc" / "a.png", scan(1)), "no folder name is in data.tumor_folders"),
        (lambda root: (root.mkdir(), (root / "t.csv").write_text("Image,Target\nImage1,1\n")), "no 'Class' column"),
    ],
)
def test_unusable_datasets_fail_with_one_line(tmp_path, make, message):
    make(tmp_path / "raw")
    with pytest.raises(PipelineError, match=message) as err:
        run_ingest(tmp_path / "raw", tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def labelled(items) -> dict[str, object]:
    """source -> label (or reason) of each item."""
    return {item.source: item.reason or item.label for item in items}


def label_csv(path: Path, rows: list[tuple[str, object]], encoding: str = "utf-8") -> None:
    with open(path, "w", newline="", encoding=encoding) as f:
        csv.writer(f).writerows([("Image", "Class"), *rows])


def test_several_label_tables_are_read_as_one_when_they_agree(tmp_path):
    for i in range(1, 5):
        save(tmp_path / "images" / f"Image{i}.png", scan(i))
    label_csv(tmp_path / "a.csv", [("Image1", 1), ("Image2", 0)])
    label_csv(tmp_path / "b.csv", [("Image2", 0), ("Image3", 1), ("Image4", 0)])  # Image2 again, same class
    items, _ = ingest.list_items(tmp_path, LABELS)
    assert labelled(items) == {"images/Image1.png": 1, "images/Image2.png": 0, "images/Image3.png": 1,
                               "images/Image4.png": 0}  # fmt: skip


def test_label_tables_that_disagree_are_one_error_naming_both_and_the_image(tmp_path):
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

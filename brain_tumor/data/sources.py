"""Reading a dataset's files safely: a folder walked without following links or opening special files, a
zip extracted without escaping its folder. Ingest and `brain-tumor predict` both list their inputs here.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from brain_tumor.core.errors import PipelineError, one_line

SYSTEM_FILES = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass
class Item:
    """One input file (or a CSV row naming a file that is not there)."""

    source: str  # path relative to the dataset root, '/'-separated
    label: int | None = None
    reason: str | None = None  # set when the item is rejected before decoding
    detail: str = ""
    subtype: str = ""  # the class folder that gave the label (e.g. glioma, notumor), for subgroup metrics


# ---------------------------------------------------------------- opening a dataset (folder or zip)

ZIP_METHODS = {  # the compression methods Python's zipfile reads (not deflate64, 9, nor PPMd, 98)
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def entry_name(member: zipfile.ZipInfo) -> str:
    """An entry's path, '/'-separated: some Windows tools write `folder\\file.jpg` (the zip format wants '/')."""
    return member.filename.replace("\\", "/")


def safe_extract(archive: Path, target: Path, max_bytes: int) -> list[Item]:
    """Extract `archive` into `target`; entries that would escape it, or repeat an earlier entry's name,
    are refused and returned as rejects. Backslashes in entry names separate folders.

    Whatever makes the archive unusable (unreadable, empty, encrypted, corrupt, an unsupported compression
    method, a zip inside the zip, more than `max_bytes` uncompressed) is a one-line PipelineError naming
    the archive and the entry.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as err:
        raise PipelineError(f"{archive}: not a readable zip archive ({one_line(err)})") from None
    refused: list[Item] = []
    with zf:
        members = [m for m in zf.infolist() if not entry_name(m).endswith("/")]
        _check_archive(archive, members, max_bytes)
        written = 0
        root = target.resolve()
        extracted: set[Path] = set()
        for index, member in enumerate(members):
            name = entry_name(member)
            is_symlink = (member.external_attr >> 16) & 0o170000 == 0o120000
            dest = (target / name).resolve()
            if (
                is_symlink
                or PurePosixPath(name).is_absolute()
                or PureWindowsPath(name).drive  # C:/..., written from a Windows path
                or ".." in PurePosixPath(name).parts
                or not dest.is_relative_to(root)
            ):
                detail = "symlink" if is_symlink else "path escapes the archive root"
                refused.append(Item(name, reason="unsafe_zip_entry", detail=detail))
                continue
            if dest in extracted:  # the first entry is used; each repeat is reported under its position
                position = f"{name} (entry {index + 1})"
                refused.append(Item(position, reason="duplicate_zip_entry", detail="an earlier entry has this name"))
                continue
            extracted.add(dest)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                out = open(dest, "wb")  # noqa: SIM115 (closed below, after the read errors are told apart)
            except (FileExistsError, NotADirectoryError, IsADirectoryError, ValueError):
                refused.append(Item(name, reason="unsafe_zip_entry", detail="path clashes with another entry"))
                continue
            with out:
                written = _copy_entry(archive, zf, member, out, written, max_bytes)
    return refused


def _check_archive(archive: Path, members: list[zipfile.ZipInfo], max_bytes: int) -> None:
    """Refuse, before extracting anything, an archive that cannot give a usable dataset."""
    if not members:
        raise PipelineError(f"{archive}: empty zip archive (no files)")
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise PipelineError(
            f"{archive}: uncompressed size {declared / 2**20:.0f} MiB exceeds data.max_archive_mb "
            f"({max_bytes / 2**20:.0f} MiB); refusing to extract"
        )
    for m in members:
        entry = f"{archive}: entry {m.filename!r}"
        if m.flag_bits & 0x1:
            raise PipelineError(f"{entry} is encrypted; re-create the archive without a password")
        if m.compress_type not in ZIP_METHODS:
            raise PipelineError(
                f"{entry} uses compression method {m.compress_type}, which Python cannot read; "
                f"re-create the archive with one of: {', '.join(ZIP_METHODS.values())}"
            )
        if m.filename.lower().endswith(".zip") and not is_system_file(PurePosixPath(entry_name(m))):
            raise PipelineError(f"{entry} is itself a zip archive; extract it and set data.source to it")


def _copy_entry(archive: Path, zf: zipfile.ZipFile, member: zipfile.ZipInfo, out, written: int, max_bytes: int) -> int:
    """Copy one entry, counting the bytes really written (sizes in the header can lie); returns the new total."""
    try:
        with zf.open(member) as src:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > max_bytes:
                    raise PipelineError(
                        f"{archive}: uncompressed data exceeds data.max_archive_mb "
                        f"({max_bytes / 2**20:.0f} MiB); refusing to extract"
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as err:
        raise PipelineError(f"{archive}: entry {member.filename!r} is corrupt ({one_line(err)})") from None
    return written


# ---------------------------------------------------------------- finding the files and their labels


def is_system_file(rel: PurePosixPath) -> bool:
    return any(part in SYSTEM_FILES or part.startswith("._") for part in rel.parts)


def _printable(rel: str) -> str | None:
    """`rel` when it is valid UTF-8 (it can be written to the manifest), else None."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return rel


def scan_files(root: Path) -> tuple[list[PurePosixPath], list[Item]]:
    """The regular files below `root` (sorted, '/'-separated), and the entries refused without opening them.

    Refused: symlinks, to files or folders (never followed: a link may point outside the dataset), special
    files (FIFOs, sockets, devices: reading one can hang), names that are not valid UTF-8 and folders
    that cannot be listed. Each is one item with its reason, so nothing disappears from the accounting.
    """
    files: list[PurePosixPath] = []
    refused: list[Item] = []

    def refuse(path: Path, reason: str, detail: str) -> None:
        rel = Path(path).relative_to(root).as_posix()
        refused.append(Item(os.fsencode(rel).decode("utf-8", "backslashreplace"), reason=reason, detail=detail))

    def unreadable(err: OSError) -> None:
        refuse(Path(err.filename), "unreadable", err.strerror or "cannot list this folder")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                refuse(base / name, "symlink", "a link to a folder; not followed")
                dirnames.remove(name)
        dirnames.sort()
        for name in sorted(filenames):
            path = base / name
            rel = _printable(path.relative_to(root).as_posix())
            try:
                mode = path.lstat().st_mode
            except OSError as err:
                refuse(path, "unreadable", err.strerror or "cannot stat")
                continue
            if rel is None:
                refuse(path, "bad_file_name", "the name is not valid UTF-8")
            elif stat.S_ISLNK(mode):
                refuse(path, "symlink", "a link; not followed")
            elif not stat.S_ISREG(mode):
                refuse(path, "special_file", "a FIFO, socket or device; not opened")
            else:
                files.append(PurePosixPath(rel))
    return files, refused

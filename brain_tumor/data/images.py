"""Decode any common scan file into 8-bit RGB, and fingerprint it for duplicate detection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from brain_tumor.core.errors import one_line

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class RejectedFile(Exception):
    """The file cannot be used; `reason` is a short machine-readable tag for the data report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def load_rgb(path: str | Path, max_pixels: int) -> np.ndarray:
    """Return the image at `path` as an HxWx3 uint8 array, or raise RejectedFile.

    EXIF orientation is applied; 16-bit and 32-bit greyscale are scaled between robust percentiles;
    alpha is composited on black (the background of a scan); size is kept. The pixel count is checked
    against `max_pixels` from the header, before any pixel is decoded.
    """
    path = Path(path)
    Image.MAX_IMAGE_PIXELS = None  # checked below against the configured limit itself (PIL's error quotes 2x)
    try:
        if path.stat().st_size == 0:
            raise RejectedFile("empty_file")
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise RejectedFile(
                    "decompression_bomb", f"{width}x{height} = {width * height} pixels > data.max_image_pixels"
                )
            opened.load()
            return _to_rgb(ImageOps.exif_transpose(opened))
    except UnidentifiedImageError:
        raise RejectedFile("not_an_image") from None
    except (PermissionError, FileNotFoundError) as err:  # the file is fine; we may not (or no longer) read it
        raise RejectedFile("unreadable", err.strerror or type(err).__name__) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:
        raise RejectedFile("truncated_or_corrupt", one_line(err)) from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.repeat(scale_to_uint8(np.asarray(img, dtype=np.float64))[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """High-bit-depth greyscale -> uint8, between the 0.5th and 99.5th percentiles (clipped).

    A few hot or dead pixels (common in scans) would otherwise set the range and push the anatomy to black.
    """
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = np.percentile(finite, [0.5, 99.5])
    if high <= low:  # a flat image bar a few outliers: use the full range instead
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (255.0 / (high - low))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


BLANK_RANGE = 8  # grey levels: an image whose pixels (bar a few outliers) lie this close together shows nothing


def reject_blank(rgb: np.ndarray) -> None:
    """A blank (near-uniform) image carries no class evidence: refuse it rather than train on it.

    The spread is taken between the 1st and 99th percentiles, so a hot pixel or a burnt-in dot on a black
    frame does not make it a scan.
    """
    if not rgb.size:
        return
    low, high = np.percentile(rgb, [1, 99])
    if high - low <= BLANK_RANGE:
        raise RejectedFile("blank_image", f"1st to 99th percentile of pixel values within {high - low:g} grey levels")


def decode_scan(path: Path, max_pixels: int) -> np.ndarray:
    """A scan file's RGB pixels by the pipeline's rules (suffix, decoding, not blank), or RejectedFile.

    Ingest and `brain-tumor predict` both call this, so a file is refused for the same reason in both."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise RejectedFile("not_an_image", f"suffix {path.suffix or '(none)'!r}")
    rgb = load_rgb(path, max_pixels)
    reject_blank(rgb)
    return rgb


def pixel_sha256(rgb: np.ndarray) -> str:
    """Hash of the decoded pixels and shape: equal for byte-different files that decode alike."""
    digest = hashlib.sha256(np.asarray(rgb.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


_DCT_SIZE = 32
_DCT = np.cos(np.pi / _DCT_SIZE * (np.arange(_DCT_SIZE)[:, None]) * (np.arange(_DCT_SIZE)[None, :] + 0.5))


def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit pHash: signs of the low 8x8 DCT frequencies of a 32x32 greyscale thumbnail vs their median.

    Resized, re-encoded and slightly brightened copies of a slice land within a few bits of each other.
    """
    grey = Image.fromarray(rgb).convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = (_DCT @ pixels @ _DCT.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


def save_png(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray(rgb).save(path, format="PNG", compress_level=1)

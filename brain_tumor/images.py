"""Decode any common scan file into 8-bit RGB, and fingerprint it for duplicate detection."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class RejectedFile(Exception):
    """The file cannot be used; `reason` is a short machine-readable tag for the data report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def load_rgb(path: str | Path, max_pixels: int) -> np.ndarray:
    """Return the image at `path` as an HxWx3 uint8 array, or raise RejectedFile.

    EXIF orientation is applied; 16-bit and 32-bit greyscale are scaled by their real value range;
    alpha is composited on black (the background of a scan); size is kept.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise RejectedFile("empty_file")
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as opened:
                opened.load()
                return _to_rgb(ImageOps.exif_transpose(opened))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise RejectedFile("decompression_bomb", str(err).split(".")[0]) from None
        except UnidentifiedImageError:
            raise RejectedFile("not_an_image") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise RejectedFile("truncated_or_corrupt", str(err)) from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        grey = np.rint(scaled).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


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


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize to size x size, as torchvision's Resize does on a PIL image."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))

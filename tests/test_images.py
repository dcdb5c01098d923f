"""Image decoding (brain_tumor/data/images.py): every mode and format to RGB uint8, each reject reason, the hashes."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import public_folder, python_as_nobody, save, scan, truncated_jpeg
from PIL import Image

from brain_tumor.data.images import RejectedFile, load_rgb, perceptual_hash, pixel_sha256, reject_blank

MAX = 10**6


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA"])
def test_every_mode_becomes_rgb_uint8(tmp_path, mode):
    path = tmp_path / f"x_{mode}.png"
    Image.fromarray(scan(1)).convert(mode).save(path)
    rgb = load_rgb(path, MAX)
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)


@pytest.mark.parametrize("hot_pixel", [False, True], ids=["plain", "hot-pixel"])
def test_sixteen_bit_is_scaled_by_its_real_range_and_keeps_its_contrast(tmp_path, hot_pixel):
    """Values 1000..3000 of 65535 fill 0..255; one saturated pixel does not push the rest to near-black."""
    values = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)
    if hot_pixel:
        values[0, 0] = 65535
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16
    rgb = load_rgb(path, MAX)
    assert rgb.min() == 0 and rgb.max() == 255 and 110 < rgb.mean() < 145
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    rgb = load_rgb(path, MAX)
    assert (rgb[:2] == 200).all() and (rgb[2:] == 0).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path, MAX).shape == (20, 10, 3)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("BMP", "bmp"), ("TIFF", "tif")])
def test_other_formats_decode(tmp_path, fmt, suffix):
    path = tmp_path / f"x.{suffix}"
    Image.fromarray(scan(2)).save(path, format=fmt)
    assert load_rgb(path, MAX).shape == (32, 32, 3)


def test_bad_files_are_rejected_with_their_reason(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not a picture")
    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    cases = {
        empty: "empty_file",
        text: "not_an_image",
        truncated_jpeg(tmp_path / "cut.jpg", 3): "truncated_or_corrupt",
        big: "decompression_bomb",
    }
    for path, reason in cases.items():
        with pytest.raises(RejectedFile) as err:
            load_rgb(path, max_pixels=20_000)
        assert err.value.reason == reason, path
    # the last case, the bomb: its message quotes the configured limit (data.max_image_pixels), not Pillow's
    assert "90000 pixels > data.max_image_pixels" in err.value.detail and "40000" not in err.value.detail


def test_pixel_hash_ignores_encoding_and_perceptual_hash_survives_resizing(tmp_path):
    a = scan(4, 64)
    png, bmp = tmp_path / "a.png", tmp_path / "a.bmp"
    Image.fromarray(a).save(png)
    Image.fromarray(a).save(bmp)
    assert pixel_sha256(load_rgb(png, MAX)) == pixel_sha256(load_rgb(bmp, MAX))
    resized = np.asarray(Image.fromarray(a).resize((48, 48)))
    near = bin(perceptual_hash(a) ^ perceptual_hash(resized)).count("1")
    far = bin(perceptual_hash(a) ^ perceptual_hash(scan(5, 64))).count("1")
    assert near <= 4 < far


def test_a_uniform_scan_with_a_hot_pixel_is_blank_and_a_small_region_of_anatomy_is_not():
    black = np.zeros((64, 64, 3), dtype=np.uint8)
    black[10, 10] = 255
    grey = np.full((32, 32, 3), 120, dtype=np.uint8)
    grey[0, 0] = 127
    for blank in (black, grey):
        with pytest.raises(RejectedFile) as err:
            reject_blank(blank)
        assert err.value.reason == "blank_image"
    black[20:40, 20:40] = 90  # 10% of the frame
    reject_blank(black)
    reject_blank(scan(1))


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    with public_folder() as folder:
        yield folder


def test_a_file_we_may_not_read_is_unreadable_not_corrupt(public_tmp):
    """load_rgb itself, as user nobody (the predict CLI's path: test_faults.py)."""
    path = save(public_tmp / "scan.png", scan(1))
    path.chmod(0)
    code = "import sys\nfrom brain_tumor.data.images import RejectedFile, load_rgb\ntry: load_rgb(sys.argv[1], 10**6)\n"
    code += "except RejectedFile as err: print(err.reason, err.detail)"
    result = python_as_nobody(["-c", code, str(path)], public_tmp)
    assert result.stdout.strip() == "unreadable Permission denied", result.stderr[-2000:]

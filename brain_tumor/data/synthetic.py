"""Deterministic synthetic brain slices, written in the Kaggle "Brain Tumor" layout (CSV + JPEGs).

Each slice has a skull ring, textured brain tissue, ventricles and bright normal structures; a tumor
is an irregular lesion of random size, contrast (brighter or darker) and position. Small faint lesions
make the task hard enough that neither model scores a trivial 100%.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from brain_tumor.core.blobs import blob


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    coarse = Image.fromarray(rng.normal(0.0, 1.0, (grid, grid)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def brain_slice(rng: np.random.Generator, size: int, tumor: bool) -> np.ndarray:
    """One greyscale slice as uint8 (size x size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.normal(0, size * 0.03, 2)
    ry, rx = size * rng.uniform(0.36, 0.44), size * rng.uniform(0.29, 0.37)
    angle = rng.uniform(-0.35, 0.35)
    dy, dx = yy - cy, xx - cx
    ny = (dy * np.cos(angle) - dx * np.sin(angle)) / ry
    nx = (dy * np.sin(angle) + dx * np.cos(angle)) / rx
    radial = np.sqrt(ny**2 + nx**2)

    brain = np.clip((0.9 - radial) * 25.0, 0.0, 1.0)
    skull = np.exp(-(((radial - 0.97) / 0.04) ** 2))
    tissue = 0.45 + 0.08 * _smooth_noise(rng, size, 6) + 0.05 * _smooth_noise(rng, size, 24)
    # gyri-like folds near the cortex
    folds = 0.06 * np.sin(radial * rng.uniform(30, 45) + _smooth_noise(rng, size, 10) * 2.0) * (radial > 0.55)
    image = brain * (tissue + folds) + 0.95 * skull

    for side in (-1, 1):  # lateral ventricles: dark, roughly symmetric
        vy, vx = cy + rng.normal(0, size * 0.015), cx + side * size * rng.uniform(0.04, 0.07)
        image -= 0.35 * blob(rng, yy, xx, vy, vx, size * rng.uniform(0.03, 0.06)) * brain
    for _ in range(rng.integers(0, 4)):  # normal bright structures (vessels, calcifications): distractors
        r, t = rng.uniform(0.1, 0.75), rng.uniform(0, 2 * np.pi)
        sy, sx = cy + r * ry * np.sin(t), cx + r * rx * np.cos(t)
        image += rng.uniform(0.1, 0.25) * blob(rng, yy, xx, sy, sx, size * rng.uniform(0.008, 0.018)) * brain

    if tumor:
        r, t = np.sqrt(rng.uniform(0.0, 0.6)), rng.uniform(0, 2 * np.pi)
        ty, tx = cy + r * ry * np.sin(t), cx + r * rx * np.cos(t)
        radius = size * rng.uniform(0.05, 0.14)
        contrast = rng.choice([-1.0, 1.0], p=[0.15, 0.85]) * rng.uniform(0.2, 0.5)
        lesion = blob(rng, yy, xx, ty, tx, radius) * brain
        rim = np.clip(blob(rng, yy, xx, ty, tx, radius * 1.3) - lesion, 0, 1) * brain
        image += contrast * lesion + 0.5 * abs(contrast) * rim * rng.uniform(0, 1)

    image = image * rng.uniform(0.75, 1.15) + rng.normal(0, rng.uniform(0.01, 0.04), image.shape)
    pil = Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8))
    return np.asarray(pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))))


def write_kaggle_layout(root: Path, n_images: int, image_size: int, tumor_fraction: float, seed: int) -> None:
    """Write `Brain Tumor.csv` (Image, Class) and `Brain Tumor/Brain Tumor/Image{i}.jpg` under `root`."""
    image_dir = root / "Brain Tumor" / "Brain Tumor"
    image_dir.mkdir(parents=True, exist_ok=True)
    label_rng = np.random.default_rng(seed)
    labels = (label_rng.permutation(n_images) < round(n_images * tumor_fraction)).astype(int)
    with open(root / "Brain Tumor.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Image", "Class"])
        for i, label in enumerate(labels, start=1):
            rng = np.random.default_rng([seed, i])
            Image.fromarray(brain_slice(rng, image_size, bool(label))).save(image_dir / f"Image{i}.jpg", quality=92)
            writer.writerow([f"Image{i}", int(label)])


def other_source_slice(image: np.ndarray) -> np.ndarray:
    """A slice as another archive would publish it: skull-stripped, tissue contrast reversed (T2-like) and
    rotated 90 degrees, as the public BraTS-derived sets differ from the training collection."""
    from scipy import ndimage

    grey = image.astype(np.float64) / 255
    head = ndimage.binary_fill_holes(grey > 0.15)
    depth = ndimage.distance_transform_edt(head)
    brain = head & (depth > 0.12 * np.sqrt(head.sum() / np.pi))
    return np.rot90(np.where(brain, np.clip(1.0 - 0.8 * grey, 0, 1), 0.0) * 255).round().astype(np.uint8)


def write_other_source(root: Path, n_images: int, image_size: int, tumor_fraction: float, seed: int) -> None:
    """The built-in external set: `yes/` and `no/` slices from another seed through `other_source_slice`, and a
    labels.csv naming each slice's subject (eight slices a subject) and weighting."""
    labels = (np.random.default_rng(seed).permutation(n_images) < round(n_images * tumor_fraction)).astype(int)
    rows = ["file,label,subject,modality"]
    for i, label in enumerate(labels):
        folder = root / ("yes" if label else "no")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"synthetic-{i // 8:02d}_t2like_{i:03d}.png"
        image = other_source_slice(brain_slice(np.random.default_rng([seed, i]), image_size, bool(label)))
        Image.fromarray(image).save(folder / name)
        rows.append(f"{name},{folder.name},synthetic-{i // 8:02d},t2-like")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")

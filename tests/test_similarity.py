"""Similarity grouping: re-processed copies join, different scans do not, chains stop at the size cap."""

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_params
from PIL import Image, ImageFilter, ImageOps

from brain_tumor.core.params import typed
from brain_tumor.data import similarity as sim
from brain_tumor.data.ingest import ingest_folder
from brain_tumor.data.split import split_dataset
from brain_tumor.data.synthetic import brain_slice

SIZE = 192
DEFAULTS = {"threshold": 0.95, "neighbour_threshold": 0.85, "mutual": 2, "max_size": 100}


def scan(seed: int, tumor: bool = True, size: int = SIZE) -> np.ndarray:
    return brain_slice(np.random.default_rng([11, seed]), size, tumor)


def jpeg(grey: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def reprocessed(grey: np.ndarray) -> dict[str, np.ndarray]:
    """The same slice as public sets hold it again: other intensities, filters, encodings, sizes, positions."""
    img, values = Image.fromarray(grey), grey.astype(np.float64)
    return {
        "contrast": np.clip(values * 1.3 - 15, 0, 255).astype(np.uint8),
        "brightness": np.clip(values + 25, 0, 255).astype(np.uint8),
        "gamma 0.6": (255 * (values / 255) ** 0.6).astype(np.uint8),
        "gamma 1.6": (255 * (values / 255) ** 1.6).astype(np.uint8),
        "equalised": np.asarray(ImageOps.equalize(img)),
        "blurred": np.asarray(img.filter(ImageFilter.GaussianBlur(1.2))),
        "sharpened": np.asarray(img.filter(ImageFilter.UnsharpMask(2, 120, 0))),
        "jpeg q40": jpeg(grey, 40),
        "resized": np.asarray(img.resize((SIZE * 2 // 3,) * 2, Image.Resampling.BILINEAR)),
        "shifted 3 px": np.pad(grey, ((3, 0), (0, 3)))[:-3, 3:],
        "cropped 4 px": np.asarray(img.crop((4, 4, SIZE - 4, SIZE - 4))),
        "mirrored": np.ascontiguousarray(grey[:, ::-1]),
        "upside down": np.ascontiguousarray(grey[::-1]),
    }


def groups_of(images: list[np.ndarray], **settings) -> sim.Grouping:
    descriptors = np.stack([sim.descriptor(im) for im in images])
    neighbours = sim.nearest_neighbours(descriptors, 32)
    s = DEFAULTS | settings
    return sim.similarity_groups(
        neighbours, np.arange(len(images)), s["threshold"], s["neighbour_threshold"], s["mutual"], s["max_size"]
    )


def test_reprocessed_copies_reach_the_threshold_and_share_a_group():
    base = scan(0)
    copies = reprocessed(base)
    others = [scan(seed, tumor=seed % 2 == 0) for seed in range(1, 13)]
    x = sim.descriptor(base)[None]
    similarity = {name: float(sim.similarity(sim.descriptor(c)[None], x)[0]) for name, c in copies.items()}
    assert min(similarity.values()) >= DEFAULTS["threshold"], similarity
    different = [float(sim.similarity(sim.descriptor(o)[None], x)[0]) for o in others]
    assert max(different) < DEFAULTS["neighbour_threshold"], different  # clearly different scans

    labels = groups_of([base, *copies.values(), *others]).labels
    n_copies = len(copies)
    assert set(labels[: 1 + n_copies]) == {labels[0]}
    assert labels[0] not in set(labels[1 + n_copies :])


def test_descriptor_of_a_flat_image_is_zero_and_joins_nothing():
    flat = np.full((64, 64), 7, np.uint8)
    assert not sim.descriptor(flat).any()
    labels = groups_of([flat, scan(1), scan(2)]).labels
    assert labels[0] not in labels[1:]


def test_a_chain_of_small_steps_stops_at_the_size_cap():
    """Each image differs a little from the next, the two ends a lot: linkage alone would join all."""
    keys = [scan(seed, size=96).astype(np.float64) for seed in range(20, 27)]
    chain = [
        ((1 - t) * a + t * b).round().astype(np.uint8)
        for a, b in itertools.pairwise(keys)
        for t in np.linspace(0, 1, 20, endpoint=False)
    ]  # 120 images, one class
    steps = [
        float(sim.similarity(sim.descriptor(a)[None], sim.descriptor(b)[None])[0]) for a, b in itertools.pairwise(chain)
    ]
    assert min(steps) >= DEFAULTS["threshold"]  # every step alone would join
    grouping = groups_of(chain)
    sizes = pd.Series(grouping.labels).value_counts()
    assert sizes.iloc[0] <= DEFAULTS["max_size"] < len(chain)
    assert grouping.refused > 0

    small = groups_of(chain, max_size=10)
    assert pd.Series(small.labels).value_counts().iloc[0] <= 10


def test_size_cap_joins_the_most_similar_pairs_first():
    pairs = pd.DataFrame({"a": [0, 1, 2, 3], "b": [1, 2, 3, 4], "similarity": [0.99, 0.96, 0.98, 0.97]})
    grouping = sim.group_pairs(5, pairs, 2, np.arange(5))
    assert grouping.labels.tolist() == [0, 0, 2, 2, 4]
    assert (grouping.refused, grouping.refused_max_similarity) == (2, pytest.approx(0.97))
    seeded = sim.group_pairs(5, pairs.iloc[:0], 2, np.array([0, 0, 0, 1, 1]))  # seed groups keep their size
    assert seeded.labels.tolist() == [0, 0, 0, 3, 3]


def test_neighbour_search_matches_all_pairs_with_flips():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, sim.DIM)).astype(np.float32)
    x[75:] = sim.flipped(x[:75])[0] + 0.3 * rng.normal(size=(75, sim.DIM)).astype(np.float32)  # noisy mirrors
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    found = sim.nearest_neighbours(x, 5, candidates=149)
    every = np.max([x @ o.T for o in (x, *sim.flipped(x))], axis=0)
    np.fill_diagonal(every, -np.inf)
    assert np.allclose(found.sims, -np.sort(-every, axis=1)[:, :5], atol=1e-5)
    assert (found.ids[:75, 0] == np.arange(75, 150)).all()
    best, which = sim.best_matches(x[75:], x[:75])
    assert (which == np.arange(75)).all() and np.allclose(best, every[np.arange(75, 150), np.arange(75)], atol=1e-5)


@pytest.fixture
def planted_dataset(tmp_path: Path) -> Path:
    """A class-folder set: 40 distinct scans, and 8 of them again as re-processed copies pHash does not catch."""
    root = tmp_path / "raw"
    for i in range(40):
        folder = root / ("yes" if i % 2 else "no")
        folder.mkdir(parents=True, exist_ok=True)
        grey = scan(100 + i, tumor=bool(i % 2), size=128)
        Image.fromarray(grey).save(folder / f"scan{i:02d}.png")
        if i < 8:
            copy = (255 * (grey[:, ::-1] / 255) ** 1.5).astype(np.uint8)  # mirrored, darker
            Image.fromarray(jpeg(copy, 60)).save(folder / f"scan{i:02d}_again.jpg")
            Image.fromarray(np.asarray(ImageOps.equalize(Image.fromarray(grey)))).save(folder / f"scan{i:02d}_eq.png")
    ingest_folder(
        root,
        tmp_path / "dataset",
        labels={"yes": "tumor", "no": "non_tumor"},
        near_duplicate_distance=4,
        max_reject_fraction=0.5,
        max_pixels=10**8,
        processes=1,
    )
    return tmp_path / "dataset"


def run_split(dataset: Path, tmp_path: Path, **split_params) -> tuple[dict, pd.DataFrame]:
    params = make_tiny_params()
    params["split"] = {"seed": 42, "train": 0.6, "val": 0.2, "test": 0.2, "group_duplicates": True} | split_params
    report = split_dataset(typed(params), dataset, tmp_path / "split", tmp_path / "split.json", tmp_path / "people")
    assert json.loads((tmp_path / "split.json").read_text()) == report
    return report, pd.read_csv(tmp_path / "split" / "split_manifest.csv")


def test_split_keeps_planted_copies_together_and_reports_no_residual_leakage(planted_dataset, tmp_path):
    report, rows = run_split(planted_dataset, tmp_path)
    rows["scan"] = rows["source"].str.extract(r"scan(\d+)")[0]
    assert (rows.groupby("scan")["split"].nunique() == 1).all()
    assert (rows.groupby("group")["split"].nunique() == 1).all() and report["groups_in_several_splits"] == 0
    assert report["residual_leakage"]["test"]["above_threshold"] == 0
    assert report["residual_leakage"]["val"]["above_threshold"] == 0
    held_out = rows[rows["split"] != "train"]
    assert held_out["train_similarity"].notna().all() and held_out["train_similarity"].max() < 0.95
    grouping = report["grouping"]
    assert grouping["enabled"] and grouping["largest_group"] >= 3 and grouping["pairs_refused_by_size_cap"] == 0
    assert sum(grouping["groups_by_size"].values()) == grouping["groups"]
    people = tmp_path / "people"
    for name in ("class_balance", "samples", "pairs_copies", "pairs_neighbours", "pairs_closest", "residual_leakage"):
        assert (people / "figures" / f"{name}.png").stat().st_size > 1000
    text = (people / "data_report.md").read_text()
    assert "figures/pairs_copies.png" in text and "Residual leakage" in text and "| >= 0.95 (threshold) | 0 of" in text


def test_split_without_grouping_is_plain_and_shows_the_leak(planted_dataset, tmp_path):
    report, rows = run_split(planted_dataset, tmp_path, group_duplicates=False)
    assert not report["grouping"]["enabled"]
    assert report["groups_in_several_splits"] > 0  # copies divided between splits
    scans = rows["source"].str.extract(r"scan(\d+)")[0]
    assert (rows.groupby(scans)["split"].nunique() > 1).any()
    leaked = (
        report["residual_leakage"]["test"]["above_threshold"] + report["residual_leakage"]["val"]["above_threshold"]
    )
    assert leaked > 0
    assert "Grouping is off" in (tmp_path / "people" / "data_report.md").read_text()

"""Scans from other sources: the domain-randomised training views, the per-group and summary figures of
external sets, and the novelty score (unit level; the stage and predict paths are in test_evaluate.py and
test_predict.py)."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import make_tiny_params, save, scan

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.params import typed
from brain_tumor.data.ingest import folder_label_map, list_items
from brain_tumor.evaluation.external import (
    ExternalResult,
    external_summary,
    group_rows,
    read_external,
    slice_table,
)
from brain_tumor.serving.novelty import build_novelty, novelty_scores, read_novelty, save_novelty, unit_rows
from brain_tumor.training.domain import domain_view, head_mask
from brain_tumor.training.looks import Looks


def head(size: int = 64, seed: int = 0) -> np.ndarray:
    """A bright ring (skull) around textured tissue on black, uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - size / 2
    r = np.hypot(y, x)
    grey = np.where(r < size * 0.4, 90 + 40 * rng.random((size, size)), 0)
    grey = np.where((r >= size * 0.33) & (r < size * 0.4), 230, grey)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)


# ---------------------------------------------------------------- domain views


def test_a_domain_view_is_a_function_of_seed_and_pixels_and_keeps_black_outside_the_head():
    image = head()
    a, b = (domain_view(image, np.random.default_rng([3, 1, 2])) for _ in range(2))
    other = domain_view(image, np.random.default_rng([3, 1, 3]))
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other) and not np.array_equal(a, image)
    assert (a[..., 0] == a[..., 1]).all()  # grey in every channel
    corners = np.r_[a[:4, :4].ravel(), a[-4:, -4:].ravel(), a[:4, -4:].ravel(), a[-4:, :4].ravel()]
    assert (corners == 0).all()  # air stays black, whatever the rotation and scale


def test_the_head_mask_holds_the_head_and_not_the_air():
    mask = head_mask(head()[..., 0] / 255)
    assert mask[32, 32] and not mask[0, 0] and not mask[2, 32]
    assert 0.3 < mask.mean() < 0.6  # the disc of radius 0.4 * 64 covers about half of the square


def test_looks_take_view_zero_as_the_scan_and_the_rest_in_order():
    images = np.stack([head(seed=s) for s in range(3)])
    looks = Looks(seed=5, rows=3, intensity=1, domain=2)
    assert looks.count == 4
    np.testing.assert_array_equal(looks.apply(images, np.arange(3), np.zeros(3, int)), images)
    remapped = looks.apply(images, np.arange(3), np.array([1, 2, 3]))
    np.testing.assert_array_equal(remapped[0], looks.tables[0, 1][images[0]])  # an intensity look: a table
    np.testing.assert_array_equal(remapped[1], domain_view(images[1], np.random.default_rng([5, 1, 2])))
    assert Looks(5, 3, 1, 2).key() == looks.key() != Looks(6, 3, 1, 2).key()


# ---------------------------------------------------------------- external sets: groups and summary


def test_slice_table_reads_labels_csv_and_falls_back_to_file_names(tmp_path):
    labels = tmp_path / "labels.csv"
    rows = [f"P1_flair_z{z:03d}.png,yes,P1,FLAIR,{z}" for z in range(0, 9)]
    labels.write_text("file,label,subject,modality,z\n" + "\n".join(rows) + "\n")
    sources = [f"yes/P1_flair_z{z:03d}.png" for z in range(9)] + ["no/P2_t2_z004.png", "no/scan.png"]
    table = slice_table(labels, sources)
    assert table["subject"].tolist()[:9] == ["P1"] * 9 and table.loc[9, "subject"] == "P2"
    assert table.loc[0, "weighting"] == "flair" and table.loc[9, "weighting"] == "t2"
    assert pd.isna(table.loc[10, "subject"]) and pd.isna(table.loc[10, "region"])
    # P1's slices run 0..8: 3..5 are its middle third; P2 has one slice (no range): no region
    assert table["region"].tolist()[:9] == ["outer thirds"] * 3 + ["middle third"] * 3 + ["outer thirds"] * 3
    assert pd.isna(table.loc[9, "region"])
    assert slice_table(tmp_path / "absent.csv", ["yes/a.png"])["subject"].isna().all()


def test_an_external_sets_labels_csv_describes_its_scans_and_is_no_file_rejected(tmp_path, monkeypatch):
    """The documented layout (yes/, no/, labels.csv at the top) reads as its scans alone: a small set is not
    pushed over data.max_reject_fraction by its own metadata. In a training source the same file is still
    reported as a file ingest could not label."""
    root = tmp_path / "data" / "external" / "small"
    for i in range(4):
        save(root / ("yes" if i % 2 else "no") / f"P1_t2_z{i:03d}.png", scan(i))
    rows = "".join(f"P1_t2_z{i:03d}.png,S7,T2,{i}\n" for i in range(4))
    (root / "labels.csv").write_text("file,subject,modality,z\n" + rows)
    params = typed(make_tiny_params() | {"data": make_tiny_params()["data"] | {"max_reject_fraction": 0.1}})
    monkeypatch.chdir(tmp_path)
    found = read_external("data/external/small", params.data)
    assert (found.ingest["files_seen"], found.ingest["accepted"], found.ingest["rejected"]) == (4, 4, 0)
    assert found.slices["subject"].tolist() == ["S7"] * 4 and sorted(found.labels.tolist()) == [0, 0, 1, 1]
    items, _ = list_items(root, folder_label_map(params.data))
    assert {item.source: item.reason for item in items}["labels.csv"] == "no_label_for_folder"


def test_a_labels_csv_that_cannot_be_read_is_one_error_naming_it(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"file,subject\n\xff\xfe\x00bad")
    with pytest.raises(PipelineError, match="labels.csv: not a readable CSV"):
        slice_table(labels, ["yes/a.png"])


def test_group_rows_count_by_hand():
    slices = pd.DataFrame(
        {
            "subject": ["A", "A", "A", "B", "B", "B"],
            "weighting": ["t2", "t2", "flair", "flair", "flair", "t2"],
            "region": ["middle third"] * 6,
        }
    )
    y = np.array([1, 0, 1, 1, 0, 0])
    score = np.array([0.9, 0.2, 0.4, 0.8, 0.7, 0.1])
    rows = group_rows(slices, y, score, threshold=0.5).set_index(["grouping", "group"])
    a = rows.loc[("subject", "A")]
    assert (a["tumor"], a["found"], a["non_tumor"], a["cleared"]) == (2, 1, 1, 1)
    assert a["sensitivity"] == 0.5 and a["specificity"] == 1.0 and a["roc_auc"] == 1.0  # 0.9, 0.4 above 0.2
    b = rows.loc[("subject", "B")]
    assert (b["found"], b["cleared"], b["roc_auc"]) == (1, 1, 1.0)
    flair = rows.loc[("weighting", "flair")]
    assert (flair["tumor"], flair["found"], flair["non_tumor"], flair["cleared"]) == (2, 1, 1, 0)
    assert flair["sensitivity_ci_lower"] < 0.5 < flair["sensitivity_ci_upper"]


def test_the_summary_takes_the_lowest_figure_over_the_sets_that_define_it():
    def result(auc, sensitivity, specificity, novelty_auc):
        point = {"roc_auc": auc, "recall": sensitivity, "specificity": specificity}
        model = {"operating_point": point, "0.5": point, "novelty": {"roc_auc_vs_internal_test": novelty_auc}}
        return ExternalResult({"models": {"transfer": model}}, pd.DataFrame(), [], pd.DataFrame())

    summary = external_summary({"a": result(0.9, 0.8, 0.95, 0.99), "b": result(None, 0.6, None, 0.7)})
    assert summary == {
        "transfer": {
            "lowest_roc_auc": 0.9,
            "lowest_sensitivity": 0.6,
            "lowest_specificity": 0.95,
            "lowest_novelty_auc": 0.7,
        }
    }


# ---------------------------------------------------------------- the novelty score


def test_novelty_scores_a_vector_far_from_the_reference_higher():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    reference = unit_rows(centre + 0.1 * rng.normal(size=(200, 16)))
    near = centre + 0.1 * rng.normal(size=(5, 16))
    far = rng.normal(size=(5, 16))
    near_scores, far_scores = novelty_scores(reference, near), novelty_scores(reference, far)
    assert near_scores.max() < far_scores.min()
    assert np.allclose(novelty_scores(reference, reference[:3], neighbours=1), 0, atol=1e-6)  # itself: distance 0


def test_the_threshold_is_the_validation_scores_99th_percentile_and_the_file_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    train, val = rng.normal(size=(300, 8)), rng.normal(size=(100, 8))
    novelty = build_novelty(train, val, "ab" * 32)
    val_scores = novelty.scores(val)
    assert (val_scores > novelty.threshold).sum() == 1  # 1 in 100 validation scans exceed it
    path = tmp_path / "m.novelty.npz"
    save_novelty(path, novelty)
    back = read_novelty(path, "ab" * 32)
    assert back.threshold == novelty.threshold
    np.testing.assert_array_equal(back.reference, novelty.reference)
    first = path.read_bytes()
    save_novelty(path, novelty)
    assert path.read_bytes() == first  # the same vectors, the same bytes (DVC hashes it)


def test_a_novelty_file_of_another_model_or_damaged_is_one_error(tmp_path):
    novelty = build_novelty(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), "ab" * 32)
    path = tmp_path / "m.novelty.npz"
    save_novelty(path, novelty)
    with pytest.raises(PipelineError, match="made for another model file"):
        read_novelty(path, "cd" * 32)
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(PipelineError, match="not a novelty file"):
        read_novelty(path, None)
    with zipfile.ZipFile(path, "w") as archive:  # a zip of the right names but a foreign kind
        for name, array in {"reference": np.eye(2, dtype=np.float32), "meta": json.dumps({"kind": "x"})}.items():
            with archive.open(f"{name}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(array))
    with pytest.raises(PipelineError, match="not a novelty file of this code"):
        read_novelty(path, None)

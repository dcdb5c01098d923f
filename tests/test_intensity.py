"""Intensity looks (training that cannot lean on how a sequence looks) and acquisition-balanced sampling."""

import numpy as np
import pandas as pd
import torch

from brain_tumor.core.arrays import batch_indices
from brain_tumor.training.batches import acquisition_weights
from brain_tumor.training.intensity import KINDS, apply_looks, curve, look_tables
from brain_tumor.training.prefix import prefix_batches


def test_look_tables_are_seeded_per_row_and_keep_the_scan_as_look_zero():
    tables = look_tables(7, 40, 3)
    assert tables.shape == (40, 4, 256) and tables.dtype == np.uint8
    assert (tables[:, 0] == np.arange(256)).all()
    np.testing.assert_array_equal(tables, look_tables(7, 40, 3))
    np.testing.assert_array_equal(tables[:10], look_tables(7, 10, 3))  # a row's looks do not depend on the others
    assert not np.array_equal(tables, look_tables(8, 40, 3))
    drawn = tables[:, 1:].reshape(-1, 256)
    inverted = (drawn == 255 - np.arange(256)).all(axis=1)
    assert 0 < inverted.sum() < 60  # inversion is one kind of five
    assert len({t.tobytes() for t in drawn[~inverted]}) == (~inverted).sum()  # every other look its own


def test_every_kind_of_look_keeps_black_black_except_the_inversion_and_folds_where_it_should():
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for _ in range(50):
            levels = curve(kind, rng)
            assert levels.shape == (256,) and (levels >= 0).all() and (levels <= 1).all(), kind
            steps = np.diff(levels)
            if kind == "inverted":
                assert levels[0] == 1 and (steps < 0).all()
            else:
                assert levels[0] == 0, kind
            if kind in ("gamma", "monotonic"):
                assert (steps >= 0).all(), kind
    folds = [np.diff(curve("non-monotonic", rng)).min() < 0 for _ in range(50)]
    assert sum(folds) > 40  # almost every non-monotonic look really folds some grey levels over others


def test_apply_looks_maps_each_image_through_its_own_table():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    tables = np.stack([255 - np.arange(256), np.arange(256) // 2]).astype(np.uint8)
    out = apply_looks(images, tables)
    np.testing.assert_array_equal(out[0], 255 - images[0])
    np.testing.assert_array_equal(out[1], images[1] // 2)


def test_acquisition_weights_give_each_kind_an_equal_share_of_its_class():
    rows = pd.DataFrame(
        {"label": [1] * 10 + [0] * 6, "acquisition": ["T1-like"] * 8 + ["T2-like"] * 2 + ["T1-like"] * 6}
    )
    labels = rows["label"].to_numpy()
    weights = acquisition_weights(labels, rows)
    assert weights[:8].sum() == weights[8:10].sum() == 5.0  # the tumour class's 10 draws, split equally
    assert weights[10:].sum() == 6.0 and np.allclose(weights[10:], 1.0)  # one kind: unchanged
    draws = np.concatenate(batch_indices(16, 4, torch.Generator().manual_seed(0), weights))
    assert len(draws) == 16 and set(draws) <= set(range(16))
    many = np.concatenate(
        [np.concatenate(batch_indices(16, 16, torch.Generator().manual_seed(s), weights)) for s in range(200)]
    )
    t2_share = np.isin(many, [8, 9]).mean()
    assert abs(t2_share - 5 / 16) < 0.03  # 2 of 16 rows, drawn 5/16 of the time


def test_a_training_batch_takes_each_rows_drawn_look_and_mirror():
    views = np.arange(3 * 6, dtype=np.float32).reshape(3, 6, 1)  # 3 rows x (3 looks x 2 mirrors)
    batches = prefix_batches(views, np.zeros(3, dtype=np.int64), torch.device("cpu"), augment=True, looks=3)
    x, _ = batches.get(np.array([0, 1, 2]), torch.device("cpu"), torch.tensor([True, False, True]), np.array([2, 1, 0]))
    assert x.squeeze().tolist() == [5.0, 8.0, 13.0]  # row 0 view 2*2+1, row 1 view 1*2, row 2 view 0*2+1
    everything, _ = batches.get(np.array([1]), torch.device("cpu"))
    assert everything.shape == (1, 6, 1)  # evaluation: all views

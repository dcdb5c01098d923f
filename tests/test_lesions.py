"""Synthetic lesions: a lesioned copy of a no-tumour scan differs from it only inside the head, is a function
of (seed, row, copy), and joins the training split labelled tumour with its original's manifest row."""

import numpy as np
import pandas as pd
from test_other_sources import head

from brain_tumor.core.arrays import SplitImages
from brain_tumor.training.lesions import add_lesion, with_lesions


def test_a_lesion_changes_pixels_inside_the_head_only_and_is_seeded():
    image = head(size=96)
    a = add_lesion(image, np.random.default_rng([1, 2, 0]))
    np.testing.assert_array_equal(a, add_lesion(image, np.random.default_rng([1, 2, 0])))
    changed = np.abs(a[..., 0].astype(int) - image[..., 0]) > 2
    assert changed.sum() > 20  # a visible lesion
    y, x = np.mgrid[:96, :96] - 48
    assert not changed[np.hypot(y, x) > 96 * 0.4].any()  # nothing outside the head


def test_with_lesions_appends_labelled_copies_of_the_no_tumour_scans():
    images = np.stack([head(size=64, seed=s) for s in range(4)])
    split = SplitImages(images, np.array([0, 1, 0, 1]), ["a", "b", "c", "d"], "key")
    rows = pd.DataFrame({"label": [0, 1, 0, 1], "acquisition": ["T1-like", "T1-like", "T2-like", "T1-like"]})
    grown, grown_rows = with_lesions(split, rows, copies=2, seed=9)
    assert grown.labels.tolist() == [0, 1, 0, 1, 1, 1, 1, 1]
    assert grown.ids[4:] == ["a+lesion0", "a+lesion1", "c+lesion0", "c+lesion1"]
    assert grown_rows["acquisition"].tolist()[4:] == ["T1-like", "T1-like", "T2-like", "T2-like"]
    assert (grown_rows["label"].to_numpy() == grown.labels).all()
    np.testing.assert_array_equal(grown.images[:4], images)
    assert not np.array_equal(grown.images[4], grown.images[5])  # two copies, two lesions
    assert grown.key != split.key and with_lesions(split, rows, 0, 9)[0] is split

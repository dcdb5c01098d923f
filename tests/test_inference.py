"""Threshold files (brain_tumor/serving/inference.py), read directly: every kind of file that cannot be trusted, once.
The paths that read them are tested once each: the predict CLI (test_faults.py), the export stage
(test_contracts.py)."""

import json

import pytest
from conftest import SOURCE_SHA256, threshold_point

from brain_tumor.core.errors import PipelineError
from brain_tumor.serving.inference import read_threshold

RERUN = "run `dvc repro evaluate`"


@pytest.mark.parametrize(
    "content,problem",
    [
        ("{not json", f"not a threshold file (Expecting property name enclosed in double quotes: line 1 column 2 "
                      f"(char 1)); {RERUN}"),
        ("[0.3]", f"not a threshold file (not a JSON object); {RERUN}"),
        (json.dumps(threshold_point(validation_specificity=None)),
         f"not a threshold file (missing validation_specificity); {RERUN}"),
        (json.dumps(threshold_point(threshold=float("nan"))), "threshold nan is not a number between 0 and 1"),
        (json.dumps(threshold_point(threshold=1.5)), "threshold 1.5 is not a number between 0 and 1"),
        (json.dumps(threshold_point(threshold=True)), "threshold True is not a number between 0 and 1"),
        (json.dumps(threshold_point(model_sha256="cd" * 32)),
         f"chosen for another model file (sha256 cdcdcdcdcdcd..., the model is abababababab...); {RERUN}"),
    ],
    ids=["garbage", "not-an-object", "missing-key", "nan", "out-of-range", "bool", "other-model"],
)  # fmt: skip
def test_a_threshold_file_that_cannot_be_trusted_is_one_line_naming_it(tmp_path, content, problem):
    path = tmp_path / "transfer.threshold.json"
    path.write_text(content)
    with pytest.raises(PipelineError) as err:
        read_threshold(path, SOURCE_SHA256)
    assert str(err.value) == f"{path}: {problem}"


def test_a_valid_threshold_file_is_read_and_bound_to_its_model_only_when_asked(tmp_path):
    path = tmp_path / "transfer.threshold.json"
    path.write_text(json.dumps(threshold_point()))
    assert read_threshold(path, SOURCE_SHA256) == threshold_point()
    path.write_text(json.dumps(threshold_point(model_sha256="cd" * 32)))
    assert read_threshold(path)["threshold"] == 0.3  # no model given: the binding is not checked
    with pytest.raises(PipelineError) as err:
        read_threshold(tmp_path / "scratch.threshold.json", SOURCE_SHA256)
    assert str(err.value) == f"{tmp_path / 'scratch.threshold.json'}: no such file; {RERUN} first"

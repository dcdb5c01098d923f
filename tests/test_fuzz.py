"""Property-based tests (Hypothesis) of every boundary that takes outside input: generated, not enumerated.

Each property is what any input must keep: a clear one-line PipelineError (or, for scans, a RejectedFile
with a known reason) or a complete result; never another exception, a traceback, a file outside the target.
`make test` runs a small, derandomised example budget (the `ci` profile); `make fuzz` a large random one
(the `fuzz` profile, HYPOTHESIS_PROFILE=fuzz), and what it finds is added below as an @example.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import PROJECT, SOURCE_SHA256, model_record, threshold_point, tiny_onnx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.params import load_params, typed
from brain_tumor.data.images import RejectedFile, decode_scan
from brain_tumor.data.ingest import folder_label_map, list_items
from brain_tumor.data.sources import safe_extract
from brain_tumor.serving.inference import check_onnx_contract, onnx_session, read_threshold
from brain_tumor.training.checkpoint import load_trained, save_checkpoint
from brain_tumor.training.models import ScratchCNN

pytestmark = pytest.mark.fuzz
REASONS = {  # every reason decode_scan may give
    "not_an_image", "empty_file", "truncated_or_corrupt", "blank_image", "decompression_bomb", "unreadable",
    "unsupported_mode", "too_small", "special_file", "symlink",
}  # fmt: skip
PARAMS = yaml.safe_load((PROJECT / "params.yaml").read_text())
FILES = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(err: BaseException, *names: str) -> None:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text, text
    assert any(name in text for name in names), text


def round_trips(params, path: Path) -> None:
    """Loaded params are complete and typed: written back as YAML and read again, they are the same."""
    as_yaml = json.loads(json.dumps(dataclasses.asdict(params)))  # tuples -> lists, as YAML holds them
    again = path.with_name("again.yaml")
    again.write_text(yaml.safe_dump(as_yaml))
    assert load_params(again) == params


def usable_model(model, meta: dict) -> None:
    """A model file that loads gives a model that classifies an image of the size its record states."""
    size = meta["image_size"]
    with torch.inference_mode():
        logits = model.eval()(torch.zeros(1, 3, size, size))
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    assert meta["kind"] in ("scratch", "transfer") and 0 <= meta["val_accuracy"] <= 1


# ---------------------------------------------------------------- params.yaml

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
documents = st.recursive(
    scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=20
)


def mutated_params(draw_value, path: tuple[str, ...]) -> dict:
    params = json.loads(json.dumps(PARAMS))
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = draw_value
    return params


LEAVES = [
    (section, key) for section, values in PARAMS.items() for key, value in values.items() if not isinstance(value, dict)
]


@FILES
@given(document=documents)
@example(document={"data": {"source": None}})
@example(document={"\n": None})  # found by make fuzz: a key with a line break broke the one line
def test_any_yaml_document_is_params_or_one_line_naming_the_file(tmp_path, document):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        params = load_params(path)
    except PipelineError as err:
        one_line(err, str(path))
    else:
        round_trips(params, path)


@FILES
@given(leaf=st.sampled_from(LEAVES), value=scalars | st.lists(scalars, max_size=3))
def test_one_bad_value_in_real_params_names_its_key(tmp_path, leaf, value):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(mutated_params(value, leaf)))
    try:
        params = load_params(path)
    except PipelineError as err:
        one_line(err, f"{leaf[0]}.{leaf[1]}", leaf[1], str(path))
    else:  # the value was taken as given (a number spelled as text becomes that number)
        got = getattr(getattr(params, leaf[0]), leaf[1])
        given = tuple(value) if isinstance(value, list) else value
        assert got == given or (isinstance(value, str) and got == float(value)), (leaf, value, got)
        round_trips(params, path)


@FILES
@given(text=st.text(max_size=200))
def test_any_text_as_params_is_params_or_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    try:
        params = load_params(path)
    except PipelineError as err:
        one_line(err, str(path))
    else:
        round_trips(params, path)


# ---------------------------------------------------------------- scans


def real_image_bytes(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    try:
        Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode the format cannot hold: PNG (or 8-bit) instead
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, format="PNG") if mode != "CMYK" else None
        Image.fromarray(pixels).save(buf, format=fmt) if mode == "CMYK" else None
    return buf.getvalue()


images = st.builds(
    real_image_bytes,
    st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "GIF"]),
    st.sampled_from(["RGB", "L", "RGBA", "P", "I;16", "1", "CMYK", "LA"]),
    st.tuples(st.integers(1, 70), st.integers(1, 70)),
)


@st.composite
def damaged(draw) -> bytes:
    """A real image file, then truncated, with bytes flipped, or both; or bytes from nowhere."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(images.filter(lambda b: b is not None)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)


@FILES
@given(data=damaged(), suffix=st.sampled_from([".png", ".jpg", ".jpeg", ".bmp", ".tif", ".gif", ".txt", ""]))
def test_any_file_as_a_scan_is_pixels_or_a_known_reason(tmp_path, data, suffix):
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(data)
    try:
        rgb = decode_scan(path, 10_000)
    except RejectedFile as err:
        assert str(err).split(":")[0] in REASONS, str(err)
    else:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[0] * rgb.shape[1] <= 10_000


# ---------------------------------------------------------------- label tables

cells = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@FILES
@given(
    rows=st.lists(
        st.lists(cells | st.sampled_from(["a.png", "b", "A.PNG", "c.png", "0", "1", "yes"]), max_size=4), max_size=8
    ),
    header=st.sampled_from(
        [["Image", "Class"], ["image", "class", "x"], ["Class"], ["Image"], [], ["Image", "Class", "Image"]]
    ),
    delimiter=st.sampled_from([",", ";", "\t", "|", " "]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "utf-16", "latin-1"]),
)
def test_any_label_table_labels_every_file_or_is_one_line(tmp_path, rows, header, delimiter, encoding):
    """A Kaggle-layout folder (two scans and a fuzzed `Brain Tumor.csv`): every image file is one item (with a
    label, or a reason), or the table is refused in one line naming it."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / name)
    text = "\n".join(delimiter.join(r) for r in [header, *rows])
    try:
        (root / "Brain Tumor.csv").write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        (root / "Brain Tumor.csv").write_bytes(text.encode("utf-8", "replace"))
    try:
        items, _ = list_items(root, folder_label_map(typed(PARAMS).data), "source")
    except PipelineError as err:
        one_line(err, "source")
    else:
        for name in ("a.png", "c.png"):
            mine = [item for item in items if item.source == name]
            assert mine and all(item.label in (0, 1) or item.reason for item in mine), (name, items)


# ---------------------------------------------------------------- archives

names = st.one_of(
    st.text(alphabet="ab/\\.:_ \u00e9", min_size=1, max_size=20),
    st.sampled_from(["../x.png", "/abs.png", "a/../../b.png", "C:\\x.png", "a//b.png", ".", "a/", "ok.png"]),
)


@FILES
@given(entries=st.lists(st.tuples(names, st.binary(max_size=64)), max_size=6), nested=st.booleans())
def test_any_archive_extracts_inside_its_target_or_is_one_line(tmp_path, entries, nested):
    work = Path(tempfile.mkdtemp(dir=tmp_path))  # one per example: Hypothesis runs them all in one tmp_path
    archive, target = work / "in.zip", work / "target"
    target.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if nested:
            zf.writestr("inner.zip", b"PK\x05\x06" + bytes(18))
    try:
        refused = safe_extract(archive, target, 10_000)
    except PipelineError as err:
        one_line(err, str(archive))
    else:  # every file written is an entry's bytes; what was not written is refused with a reason
        assert all(r.reason for r in refused)
        written = [p.read_bytes() for p in target.rglob("*") if p.is_file()]
        given = [d for _, d in entries] + ([b"PK\x05\x06" + bytes(18)] if nested else [])
        assert all(data in given for data in written)
    outside = [p for p in work.rglob("*") if p.is_file() and p != archive and target not in p.parents]
    assert outside == []


# ---------------------------------------------------------------- model, threshold and ONNX files

record_values = scalars | st.lists(scalars, max_size=4) | st.integers(-(10**12), 10**12)


@FILES
@given(key=st.sampled_from(sorted(model_record("scratch", 32))), value=record_values)
@example(key="image_size", value=10**9)  # issue 24: a forged size allocated 10^18 pixels (MemoryError)
def test_a_mutated_model_record_loads_or_is_one_line(tmp_path, key, value):
    path = tmp_path / "scratch.pt"
    save_checkpoint({"state_dict": STATE, "meta": model_record("scratch", 32) | {key: value}}, path)
    try:
        model, meta = load_trained(path)
    except PipelineError as err:
        one_line(err, str(path))
    else:
        usable_model(model, meta)


STATE = ScratchCNN(32).state_dict()


@FILES
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_mutated_model_bytes_load_or_are_one_line(tmp_path, cut, flips):
    path = tmp_path / "scratch.pt"
    save_checkpoint({"state_dict": STATE, "meta": model_record("scratch", 32)}, path)
    data = bytearray(path.read_bytes())
    for where, byte in flips:
        data[min(int(where * len(data)), len(data) - 1)] = byte
    path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]) if cut < 1 else bytes(data))
    try:
        model, meta = load_trained(path)
    except PipelineError as err:
        one_line(err, str(path))
    else:
        usable_model(model, meta)


@FILES
@given(document=documents)
@example(document={"threshold": math.inf})
def test_any_threshold_file_is_valid_or_one_line(tmp_path, document):
    path = tmp_path / "transfer.threshold.json"
    base = threshold_point(threshold=0.4)
    content = base | document if isinstance(document, dict) else document
    path.write_text(json.dumps(content, allow_nan=True))
    try:
        point = read_threshold(path, SOURCE_SHA256)
    except PipelineError as err:
        one_line(err, str(path))
    else:
        assert 0 <= point["threshold"] <= 1


@FILES
@given(key=st.sampled_from(["image_size", "mean", "std", "threshold", "threshold_source", "source_model_sha256"]),
       value=st.text(max_size=30) | st.sampled_from(["nan", "-1", "1e309", "[1,2]", "[0,0,0]", "0"]))  # fmt: skip
def test_mutated_onnx_metadata_is_checked_or_one_line(tmp_path, key, value):
    path = tiny_onnx(tmp_path / "transfer.onnx", **{key: value})
    session, meta = onnx_session(path, threads=1)
    try:
        contract = check_onnx_contract(session, meta, path)
    except PipelineError as err:
        one_line(err, str(path))
    else:  # what the file promises is usable: a size, three channels, a positive spread, a probability
        assert contract.image_size >= 1 and len(contract.mean) == len(contract.std) == 3
        assert all(math.isfinite(m) for m in contract.mean) and all(0 < s < math.inf for s in contract.std)
        assert contract.threshold is None or 0 <= contract.threshold <= 1


# ---------------------------------------------------------------- brain-tumor predict arguments


@FILES
@given(
    args=st.lists(
        st.sampled_from(
            [
                "--threshold",
                "--batch-size",
                "--out",
                "--model",
                "--explain",
                "x.png",
                "nan",
                "-1",
                "0",
                "1e9",
                "p.csv",
                "p.txt",
                "scratch",
                "m.onnx",
                "",
                "dir/",
                "--",
                "-",
            ]
        ),
        max_size=6,
    )
)
def test_any_predict_arguments_end_in_a_status_and_at_most_one_error_line(tmp_path, args, capsys, monkeypatch):
    from brain_tumor.serving.cli import main

    monkeypatch.chdir(tmp_path)
    try:
        status = main(["predict", *args])
    except SystemExit as exit:  # argparse: a usage line and status 2
        status = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and status in (0, 1, 2)
    assert status != 1 or len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: no model here to predict with

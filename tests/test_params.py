"""params.yaml against its schema: every kind of mistake is one line naming the key, the value and what is allowed."""

import copy

import pytest
import yaml
from conftest import PROJECT, alias_bomb

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.params import ParamsLoader, load_params, read_yaml, validate_params

PARAMS = yaml.load((PROJECT / "params.yaml").read_text(), Loader=ParamsLoader)


def replaced(text: str, old: str, new: str) -> str:
    """`text` with the first `old` replaced by `new`, failing if `old` is not there: a replacement that silently
    did not happen would leave the project's own values in place."""
    assert old in text, f"{old!r} is not in params.yaml"
    return text.replace(old, new, 1)


def changed(path: str, value) -> dict:
    """The project's params with `path` ('a.b.c') set to `value`, or removed when value is ...; a new key is added."""
    params = copy.deepcopy(PARAMS)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return params


@pytest.mark.parametrize(
    "path,value,message",
    [
        (
            "train_transfer.haed",
            "mlp",
            "train_transfer.haed: unknown key (expected one of: seed, image_size, batch_size,",
        ),
        ("trian_scratch", {"epochs": 3}, "trian_scratch: unknown key (expected one of: data, split,"),
        ("train_scratch.epochs", ..., "train_scratch.epochs: missing (expected an integer >= 1 and <= 10000)"),
        ("evaluate", ..., "evaluate: missing (expected a mapping of: seed, batch_size,"),
        ("train_scratch.epochs", 0, "train_scratch.epochs: 0 is not allowed (expected an integer >= 1 and <= 10000)"),
        ("train_scratch.epochs", 1.5, "train_scratch.epochs: 1.5 is not allowed (expected an integer >= 1"),
        ("train_scratch.epochs", True, "train_scratch.epochs: True is not allowed"),
        (
            "train_transfer.batch_size",
            0,
            "train_transfer.batch_size: 0 is not allowed (expected an integer >= 1 and <= 4096)",
        ),
        (
            "train_scratch.image_size",
            0,
            "train_scratch.image_size: 0 is not allowed (expected an integer >= 32 and <= 1024, a",
        ),
        ("train_scratch.image_size", 226, "(expected an integer >= 32 and <= 1024, a multiple of 4)"),
        ("train_transfer.lr", 0, "train_transfer.lr: 0 is not allowed (expected a number > 0 and <= 1)"),
        ("train_transfer.lr", "fast", "train_transfer.lr: 'fast' is not allowed (expected a number > 0 and <= 1)"),
        ("train_transfer.lr", float("nan"), "train_transfer.lr: nan is not allowed"),
        ("train_transfer.precision", "fp16", "train_transfer.precision: 'fp16' is not allowed (expected one of fp32,"),
        ("train_transfer.head", "cnn", "train_transfer.head: 'cnn' is not allowed (expected one of linear, mlp)"),
        ("train_transfer.unfreeze_last", 20, "(expected an integer >= 0 and <= 19)"),
        ("train_transfer.augment", "false", "train_transfer.augment: 'false' is not allowed (expected true or false"),
        ("split.group_duplicates", "false", "split.group_duplicates: 'false' is not allowed (expected true or"),
        ("split.seed", "abc", "split.seed: 'abc' is not allowed (expected an integer >= 0 and <= 4294967295)"),
        ("train_scratch.seed", -1, "train_scratch.seed: -1 is not allowed (expected an integer >= 0"),
        ("evaluate.seed", 2**40, "evaluate.seed: 1099511627776 is not allowed"),
        (
            "train_transfer.image_size",
            100000,
            "train_transfer.image_size: 100000 is not allowed (expected an integer >= 32 and <= 1024)",
        ),
        ("train_transfer.lr", 1e9, "train_transfer.lr: 1000000000.0 is not allowed (expected a number > 0 and <= 1)"),
        ("data.source", "x" * 300, "data.source: 'xxxxx"),
        ("split.train", 0.8, "split: train + val + test = 1.1 (expected a sum of 1)"),
        ("split.val", -0.1, "split.val: -0.1 is not allowed (expected a number >= 0 and <= 1)"),
        (
            "evaluate.bootstrap_samples",
            0,
            "evaluate.bootstrap_samples: 0 is not allowed (expected an integer >= 1 and <= 100000)",
        ),
        ("evaluate.grid_images", 0, "evaluate.grid_images: 0 is not allowed"),
        ("evaluate.target_sensitivity", 0, "evaluate.target_sensitivity: 0 is not allowed (expected a number > 0"),
        ("data.tumor_folders", [True, "tumor"], "data.tumor_folders: [True, 'tumor'] is not allowed (expected a"),
        ("data.non_tumor_folders", "no", "data.non_tumor_folders: 'no' is not allowed (expected a list of strings"),
        ("data.near_duplicate_distance", -2, "(expected an integer >= -1 and <= 64)"),
        ("data.max_reject_fraction", 1.5, "data.max_reject_fraction: 1.5 is not allowed"),
        ("data.synthetic.tumor_fraction", 1, "data.synthetic.tumor_fraction: 1 is not allowed (expected a number > 0"),
        ("data.source", "", "data.source: '' is not allowed (expected a non-empty string of at most 255 characters)"),
        ("data", [1, 2], "data: [1, 2] is not allowed (expected a mapping of: source, synthetic,"),
    ],
)
def test_bad_value_is_one_line_naming_key_value_and_what_is_allowed(path, value, message):
    with pytest.raises(PipelineError) as err:
        validate_params(changed(path, value))
    text = str(err.value)
    assert text.startswith("params.yaml: ") and message in text and "\n" not in text, text


def test_values_are_normalised_and_defaults_filled():
    params = changed("train_transfer.lr", "1e-3")  # a string: PyYAML reads YAML 1.1
    del params["evaluate"]["target_sensitivity"]
    params["split"] |= {"train": 1, "val": 0, "test": 0}
    checked = validate_params(params)
    assert checked["train_transfer"]["lr"] == 0.001 and isinstance(checked["train_transfer"]["lr"], float)
    assert checked["split"]["train"] == 1.0 and isinstance(checked["split"]["train"], float)
    assert checked["evaluate"]["target_sensitivity"] == 0.95
    assert validate_params(PARAMS) == PARAMS  # the project's own params are valid as they are


def test_yaml_is_read_as_dvc_writes_it(tmp_path):
    """`dvc exp run -S` rewrites params.yaml in YAML 1.2: unquoted yes/no are folder names, 1e-3 a number."""
    text = replaced((PROJECT / "params.yaml").read_text(), '["yes", tumor', "[yes, tumor")
    text = replaced(text, '["no", non_tumor', "[no, non_tumor")
    text = replaced(text, "lr: 0.0001", "lr: 1e-3")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.data.tumor_folders[0] == "yes" and params.data.non_tumor_folders[0] == "no"
    assert params.train_scratch.lr == 0.001
    (tmp_path / "params.yaml").write_text(replaced(text, "group_duplicates: true", "group_duplicates: no"))
    with pytest.raises(PipelineError, match=r"split.group_duplicates: 'no' is not allowed \(expected true or false"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "params.yaml: None is not allowed (expected a mapping of: data, split,"),
        ("seed: [1,\n", "params.yaml: not readable YAML ("),
        (None, "params.yaml: no such file"),
    ],
    ids=["empty", "bad-yaml", "missing"],
)
def test_unreadable_params_file_is_one_line(tmp_path, text, message):
    if text is not None:
        (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(PipelineError) as err:
        load_params(tmp_path / "params.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_alias_bomb_and_recursive_alias_are_refused_before_anything_is_built(tmp_path):
    """Refused from the node graph, without expanding it."""
    (tmp_path / "params.yaml").write_text(alias_bomb())
    with pytest.raises(PipelineError, match=r"params.yaml: line 5: aliases expand to more than 100000 values"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(PipelineError, match=r"params.yaml: line 1: an alias refers to its own anchor"):
        load_params(tmp_path / "params.yaml")


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    text = replaced((PROJECT / "params.yaml").read_text(), "  epochs: 20\n", "  epochs: 20\n  epochs: 30\n")
    (tmp_path / "params.yaml").write_text(text)
    line = text.splitlines().index("  epochs: 30") + 1
    with pytest.raises(PipelineError) as err:
        load_params(tmp_path / "params.yaml")
    assert (
        str(err.value) == f"{tmp_path / 'params.yaml'}: line {line}: duplicate key 'epochs' (first on line {line - 1})"
    )


def test_small_anchors_aliases_and_merge_keys_still_load(tmp_path):
    """A shared training block (`<<: *train`) with keys given beside it: they override, not duplicate; a seed
    shared through an alias. The values differ from the project's (whose seeds are all 42), so each must
    arrive from where the test put it."""
    text = replaced((PROJECT / "params.yaml").read_text(), "train_scratch:\n", "train_scratch: &train\n")
    text = replaced(text, "  seed: 42", "  seed: &seed 7")  # the first: data.synthetic.seed
    text = replaced(text, "split:\n  seed: 42", "split:\n  seed: *seed")
    transfer = "train_transfer:\n  <<: *train\n  head: linear\n  unfreeze_last: 0\n  epochs: 3\n"
    text = text[: text.index("train_transfer:")] + transfer + text[text.index("\nevaluate:") :]
    (tmp_path / "params.yaml").write_text(text)
    params = validate_params(read_yaml(tmp_path / "params.yaml"))
    assert PARAMS["train_scratch"]["epochs"] != 3 and PARAMS["split"]["seed"] != 7  # what the YAML changes
    assert params["train_transfer"] == PARAMS["train_scratch"] | {"head": "linear", "unfreeze_last": 0, "epochs": 3}
    assert params["train_scratch"] == PARAMS["train_scratch"]  # the anchored block itself is unchanged
    typed = load_params(tmp_path / "params.yaml")  # and the typed params the stages read
    assert typed.data.synthetic.seed == typed.split.seed == 7 and typed.train_transfer.epochs == 3


def test_the_typed_params_carry_every_key_and_the_schema_defaults():
    """Stages read attributes of frozen dataclasses built by the schema: every key of params.yaml arrives, and
    a key left out gets the schema's default (the one place defaults live)."""
    import dataclasses

    from brain_tumor.core.params import Params, typed

    params = typed(PARAMS)
    assert isinstance(params, Params)

    def frozen(values: dict) -> dict:  # lists arrive as tuples, nested sections as dataclasses
        return {
            k: frozen(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v for k, v in values.items()
        }

    for section, values in PARAMS.items():
        assert dataclasses.asdict(getattr(params, section)) == frozen(values), section
    assert params.data.synthetic.n_images == PARAMS["data"]["synthetic"]["n_images"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.split.seed = 1  # type: ignore[misc]
    trimmed = copy.deepcopy(PARAMS)
    for key in ("similarity_threshold", "neighbour_threshold", "mutual_neighbours", "max_group_size"):
        del trimmed["split"][key]
    del trimmed["train_transfer"]["intensity_looks"]
    defaults = typed(trimmed)
    assert (defaults.split.similarity_threshold, defaults.split.neighbour_threshold) == (0.95, 0.85)
    assert (defaults.split.mutual_neighbours, defaults.split.max_group_size) == (2, 100)
    assert defaults.train_transfer.intensity_looks == 0

"""The schema of params.yaml: every key, its type and what it allows, checked before a stage does any work.

A new key is one line in SCHEMA. Errors name the key, the value and what is allowed, in one line.
params.yaml is read as YAML 1.2, as DVC reads and writes it (`dvc exp run -S` drops the quotes around
"yes"): only true/false are booleans and `1e-3` is a number. Values must have their type (`"false"` is
not a bool, `20.0` is not an int); a Float also takes a string that spells a number. Like DVC, the reader
refuses a key given twice in one mapping, and it refuses aliases that expand beyond MAX_YAML_NODES values
(an alias bomb) before anything is built from them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from brain_tumor.core.errors import PipelineError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ParamsLoader(yaml.SafeLoader):
    """PyYAML with YAML 1.2 scalars: yes/no/on/off stay strings, `1e-3` is a float (PyYAML reads 1.1)."""


ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_BOOL_12 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$")
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_12, list("tTfF"))
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+.0123456789"))

MAX_YAML_NODES = 100_000  # values once every alias is expanded: params.yaml has about 100, an alias bomb billions
_MERGE = "tag:yaml.org,2002:merge"  # `<<: *defaults`: keys given beside it override the merged ones


def _refuse_duplicate_keys(node: yaml.MappingNode, source: str) -> None:
    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first:
            raise PipelineError(
                f"{source}: line {line}: duplicate key {key.value!r} (first on line {first[key.tag, key.value]})"
            )
        first[key.tag, key.value] = line


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse a composed document with a key twice in a mapping, an alias inside its own anchor, or aliases
    expanding to more than MAX_YAML_NODES values. Each node is sized once (aliases share their node)."""
    sizes: dict[int, int | None] = {}  # node id -> expanded size; None while its children are being sized

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise PipelineError(f"{source}: line {node.start_mark.line + 1}: an alias refers to its own anchor")
            return sizes[id(node)]
        sizes[id(node)] = None
        children = node.value if isinstance(node, yaml.SequenceNode) else []
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node, source)
            children = [child for pair in node.value for child in pair]
        total = 1 + sum(size(child) for child in children)
        if total > MAX_YAML_NODES:
            raise PipelineError(
                f"{source}: line {node.start_mark.line + 1}: aliases expand to more than {MAX_YAML_NODES} values "
                "(an alias bomb?); refusing to read it"
            )
        sizes[id(node)] = total
        return total

    size(root)


class Invalid(ValueError):
    """A value the schema does not allow; the message says what is allowed."""


def _range(low: float | None, high: float | None, open_low: bool = False, open_high: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if open_high else '<='} {high}")
    return " and ".join(parts)


@dataclass(frozen=True)
class Int:
    low: int | None = None
    high: int | None = None
    multiple_of: int = 1
    default: int | None = None

    def allowed(self) -> str:
        bounds = _range(self.low, self.high)
        step = f", a multiple of {self.multiple_of}" if self.multiple_of > 1 else ""
        return f"an integer{' ' + bounds if bounds else ''}{step}"

    def parse(self, value: Any) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or not _within(value, self.low, self.high) or value % self.multiple_of:
            raise Invalid(self.allowed())
        return int(value)


@dataclass(frozen=True)
class Float:
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    default: float | None = None

    def allowed(self) -> str:
        bounds = _range(self.low, self.high, self.open_low, self.open_high)
        return f"a number{' ' + bounds if bounds else ''}"

    def parse(self, value: Any) -> float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1: `1e-3` is a string
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Invalid(self.allowed())
        value = float(value)
        if not _within(value, self.low, self.high, self.open_low, self.open_high):
            raise Invalid(self.allowed())
        return value


@dataclass(frozen=True)
class Bool:
    default: bool | None = None

    def allowed(self) -> str:
        return "true or false (unquoted)"

    def parse(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(self.allowed())
        return value


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]
    default: str | None = None

    def allowed(self) -> str:
        return "one of " + ", ".join(self.choices)

    def parse(self, value: Any) -> str:
        if value not in self.choices or not isinstance(value, str):
            raise Invalid(self.allowed())
        return value


@dataclass(frozen=True)
class Text:
    default: str | None = None
    max_length: int = 255

    def allowed(self) -> str:
        return f"a non-empty string of at most {self.max_length} characters"

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > self.max_length:
            raise Invalid(self.allowed())
        return value


@dataclass(frozen=True)
class TextList:
    """A list of strings; YAML 1.1 reads unquoted yes/no/on/off as booleans, hence the hint."""

    default: tuple[str, ...] | None = None

    def allowed(self) -> str:
        return 'a list of strings (quote "yes", "no", "on", "off")'

    def parse(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise Invalid(self.allowed())
        return list(value)


def _within(value: float, low, high, open_low: bool = False, open_high: bool = False) -> bool:
    above = low is None or (value > low if open_low else value >= low)
    below = high is None or (value < high if open_high else value <= high)
    return above and below


Spec = Int | Float | Bool | Choice | Text | TextList

SEED = Int(0, 2**32 - 1)  # numpy and torch take seeds in this range


def spec(allowed: Spec) -> Any:
    """A param: its type, range and default live here, in the schema, and nowhere else."""
    return field(metadata={"spec": allowed})


# The schema: one frozen dataclass per section of params.yaml. Stages read attributes (params.split.seed);
# SCHEMA below is the same thing as a mapping of specs, for code that checks one value against it.


@dataclass(frozen=True)
class SyntheticParams:
    seed: int = spec(SEED)  # the generated images and their labels
    n_images: int = spec(Int(2, 100_000))
    image_size: int = spec(Int(32, 1024))
    tumor_fraction: float = spec(Float(0, 1, open_low=True, open_high=True))


@dataclass(frozen=True)
class DataParams:
    source: str = spec(Text())
    synthetic: SyntheticParams = spec(SyntheticParams)
    tumor_folders: tuple[str, ...] = spec(TextList())
    non_tumor_folders: tuple[str, ...] = spec(TextList())
    near_duplicate_distance: int = spec(Int(-1, 64))
    max_reject_fraction: float = spec(Float(0, 1))
    max_archive_mb: int = spec(Int(low=1, default=4096))
    max_image_pixels: int = spec(Int(low=1, default=100_000_000))


@dataclass(frozen=True)
class SplitParams:
    seed: int = spec(SEED)
    train: float = spec(Float(0, 1))
    val: float = spec(Float(0, 1))
    test: float = spec(Float(0, 1))
    group_duplicates: bool = spec(Bool())
    similarity_threshold: float = spec(Float(0, 1, open_low=True, default=0.95))
    neighbour_threshold: float = spec(Float(0, 1, open_low=True, default=0.85))
    mutual_neighbours: int = spec(Int(0, 8, default=2))
    max_group_size: int = spec(Int(low=2, default=100))


@dataclass(frozen=True)
class TrainParams:
    """What both training stages take."""

    seed: int = spec(SEED)
    image_size: int = spec(Int(32, 1024))
    batch_size: int = spec(Int(1, 4096))
    epochs: int = spec(Int(1, 10000))
    lr: float = spec(Float(0, 1, open_low=True))
    lr_schedule: str = spec(Choice(("constant", "cosine"), default="constant"))
    label_smoothing: float = spec(Float(0, 0.5, open_high=True, default=0.0))
    augment: bool = spec(Bool())
    tta_flip: bool = spec(Bool(default=False))
    intensity_looks: int = spec(Int(0, 16, default=0))  # random intensity remappings per training scan
    domain_looks: int = spec(Int(0, 16, default=0))  # domain-randomised views per training scan (domain.py)
    lesion_copies: int = spec(Int(0, 4, default=0))  # lesioned copies of each no-tumour training scan (lesions.py)
    balance_acquisition: bool = spec(Bool(default=False))  # T1-like and T2-like drawn equally within a class
    head_standardisation: str = spec(Choice(("none", "histogram"), default="none"))  # standardisation.py
    precision: str = spec(Choice(("fp32", "bf16", "auto")))


@dataclass(frozen=True)
class ScratchParams(TrainParams):
    image_size: int = spec(Int(32, 1024, multiple_of=4))


@dataclass(frozen=True)
class TransferParams(TrainParams):
    head: str = spec(Choice(("linear", "mlp")))
    unfreeze_last: int = spec(Int(0, 19))


@dataclass(frozen=True)
class EvaluateParams:
    seed: int = spec(SEED)
    batch_size: int = spec(Int(1, 4096))
    bootstrap_samples: int = spec(Int(1, 100_000))
    grid_images: int = spec(Int(1, 256))
    target_sensitivity: float = spec(Float(0, 1, open_low=True, default=0.95))
    external: tuple[str, ...] = spec(TextList(default=()))  # labelled test sets under data/external/


@dataclass(frozen=True)
class Params:
    data: DataParams = spec(DataParams)
    split: SplitParams = spec(SplitParams)
    train_scratch: ScratchParams = spec(ScratchParams)
    train_transfer: TransferParams = spec(TransferParams)
    evaluate: EvaluateParams = spec(EvaluateParams)

    def training(self, kind: str) -> TrainParams:
        """The section of one training stage: 'scratch' or 'transfer'."""
        sections = {"scratch": self.train_scratch, "transfer": self.train_transfer}
        if kind not in sections:
            raise PipelineError(f"no training stage {kind!r}: expected scratch or transfer")
        return sections[kind]


def _specs(section: type) -> dict[str, Any]:
    """A section's specs by key, nested sections as mappings."""
    out = {}
    for f in fields(section):
        allowed = f.metadata["spec"]
        out[f.name] = _specs(allowed) if isinstance(allowed, type) else allowed
    return out


def _build(section: type, checked: dict) -> Any:
    values = {}
    for f in fields(section):
        allowed = f.metadata["spec"]
        value = _build(allowed, checked[f.name]) if isinstance(allowed, type) else checked[f.name]
        values[f.name] = tuple(value) if isinstance(value, list) else value  # frozen all the way down
    return section(**values)


SCHEMA: dict[str, Any] = _specs(Params)


def _split_sums_to_one(split: dict) -> str | None:
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        return f"train + val + test = {total:g} (expected a sum of 1)"
    return None


def _neighbours_below_copies(split: dict) -> str | None:
    if split["neighbour_threshold"] > split["similarity_threshold"]:
        return "neighbour_threshold is above similarity_threshold (expected neighbour_threshold <= it)"
    return None


# checks across keys: (section, check returning what is wrong or None)
RULES: list[tuple[str, Callable[[dict], str | None]]] = [
    ("split", _split_sums_to_one),
    ("split", _neighbours_below_copies),
]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check(schema: dict, raw: Any, where: str, source: str) -> dict:
    """`raw` normalised by `schema` (floats as floats, defaults filled in), or a PipelineError."""
    prefix = f"{source}: {where + ': ' if where else ''}"
    keys = ", ".join(schema)
    if not isinstance(raw, dict):
        raise PipelineError(f"{prefix}{_show(raw)} is not allowed (expected a mapping of: {keys})")
    if unknown := [k for k in raw if k not in schema]:
        key = unknown[0] if isinstance(unknown[0], str) and unknown[0].isprintable() else repr(unknown[0])
        name = f"{where}.{key}" if where else key
        raise PipelineError(f"{source}: {name}: unknown key (expected one of: {keys})")
    out = {}
    for key, spec in schema.items():
        name = f"{where}.{key}" if where else key
        if key not in raw and (isinstance(spec, dict) or spec.default is None):
            expected = f"a mapping of: {', '.join(spec)}" if isinstance(spec, dict) else spec.allowed()
            raise PipelineError(f"{source}: {name}: missing (expected {expected})")
        if isinstance(spec, dict):
            out[key] = _check(spec, raw[key], name, source)
        elif key in raw:
            try:
                out[key] = spec.parse(raw[key])
            except Invalid as err:
                raise PipelineError(f"{source}: {name}: {_show(raw[key])} is not allowed (expected {err})") from None
        else:
            out[key] = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    return out


def validate_params(raw: Any, source: str = "params.yaml") -> dict:
    """The params, checked and normalised; the first problem found is a one-line PipelineError."""
    params = _check(SCHEMA, raw, "", source)
    for section, rule in RULES:
        if problem := rule(params[section]):
            raise PipelineError(f"{source}: {section}: {problem}")
    return params


def read_yaml(path: str | Path) -> Any:
    """A YAML file read as params.yaml is (ParamsLoader), its node graph checked (`_check_nodes`) before any
    value is built; every problem is a one-line PipelineError naming the file."""
    path = Path(path)
    try:
        loader = ParamsLoader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            if node is None:  # an empty file
                return None
            _check_nodes(node, str(path))
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: not readable YAML ({' '.join(str(err).split())})") from None
    except RecursionError:
        raise PipelineError(f"{path}: not readable YAML (nested too deeply)") from None


def typed(params: Params | dict) -> Params:
    """The typed params: as they are, or a mapping (a params.yaml document) checked against the schema."""
    return params if isinstance(params, Params) else _build(Params, validate_params(params))


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml, checked against the schema before a stage does any work."""
    return _build(Params, validate_params(read_yaml(path), str(path)))

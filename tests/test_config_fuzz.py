"""Random configs: each one validates, or is refused with a one-line
:class:`ConfigError`; no other exception ever escapes the config code.

Each example starts from a valid config and mutates it: a key of the schema
(at any depth) gets a random YAML-like value, an unknown key is added, a key is
removed, or a mapping or list is put where a scalar goes. A config that
validates must survive the trip through its resolved YAML unchanged (a run
directory compares that text when it resumes).
"""

import copy
import datetime
import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from kdlens.compare.config import CompareConfig, dump_compare_config, parse_compare_config
from kdlens.config import ConfigError, ExperimentConfig, dump_config, load_config, parse_config
from kdlens.distill import METHODS
from kdlens.train.mutual import MutualOptions

# KDLENS_FUZZ_EXAMPLES=5000 for a long hunt; the normal suite runs a few hundred in all.
EXAMPLES = int(os.environ.get("KDLENS_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXISTING_DIR = tempfile.gettempdir()


def schema_paths(model: type[BaseModel], prefix: tuple = ()) -> list[tuple]:
    """Every key path of ``model``, nested sections included; ``0`` stands for a list item."""
    paths = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        paths.append(path)
        paths += _annotation_paths(field.annotation, path)
    return sorted(set(paths), key=str)


def _annotation_paths(annotation: Any, path: tuple) -> list[tuple]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return schema_paths(annotation, path)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and args:
        return [(*path, 0), *_annotation_paths(args[0], (*path, 0))]
    if origin is Union or (args and origin is not None and origin not in (dict, tuple, list)):
        return [p for arg in args for p in _annotation_paths(arg, path)]
    return []


# Each method's keyword arguments, which a config passes through as options.
METHOD_OPTIONS = {name: [p for p in inspect.signature(METHODS.get(name)).parameters if p != "layer"]
                  for name in METHODS.names()}
OPTION_NAMES = sorted({p for params in METHOD_OPTIONS.values() for p in params}
                      | set(MutualOptions.__dataclass_fields__))
EXPERIMENT_PATHS = schema_paths(ExperimentConfig) + [("student", "method_options", p) for p in OPTION_NAMES]
COMPARE_PATHS = schema_paths(CompareConfig) + [
    (*entry, "options", p) for entry in [("methods", 1), ("methods", 2), ("mutual", 0)] for p in OPTION_NAMES]
KNOWN_KEYS = sorted({str(p[-1]) for p in EXPERIMENT_PATHS + COMPARE_PATHS})

SPECIAL_STRINGS = [
    "inf", "-inf", "nan", ".inf", "-.Inf", ".NaN", "1e999", "-0", "0x10", "1_000", "1e-400", "~", "null", "yes",
    "auto", "cpu", "cuda", "cuda:0", "cuda:99", "mps", "tpu", "CPU", "conv", "fc1", "fc3", "fc9",
    "baseline", "kd", "at", "ft", "od", "ie_ft", "iep", "feature_mse", "dml", "ie_dml", "vgg11", "resnet18",
    "synthetic", "cub", "folder", "object", "background", "cosine", "step", "mean", "sum", "converged", "paper",
    "", " ", "a|b", "<script>alert(1)</script>", "x\ny", "\x00", "é", "../..", "/", EXISTING_DIR,
    "/no/such/dir", "x" * 300,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1.5, max_value=1.5),
    st.sampled_from(SPECIAL_STRINGS),
    st.text(max_size=12),
    st.dates(),
    st.datetimes(max_value=datetime.datetime(9000, 1, 1)),
    st.binary(max_size=6),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(-2, 2), st.none(), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=10,
)


def put(config: dict, path: tuple, value: Any) -> None:
    """Set ``config[path] = value``, making the sections on the way; a list index picks an existing item."""
    node: Any = config
    for part in path[:-1]:
        if isinstance(node, list):
            if not isinstance(part, int):
                return
            if not node:
                node.append({})
            part = part % len(node)
        elif not isinstance(node, dict):
            return
        elif not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or isinstance(last, bool):
            return
        if not node:
            node.append(None)
        node[last % len(node)] = value
    elif isinstance(node, dict):
        node[last] = value


def drop(config: dict, path: tuple) -> None:
    node: Any = config
    for part in path[:-1]:
        if isinstance(node, dict) and isinstance(node.get(part), (dict, list)):
            node = node[part]
        elif isinstance(node, list) and node and isinstance(part, int):
            node = node[part % len(node)]
        else:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


@st.composite
def mutated(draw, base: dict, paths: list[tuple]) -> dict:
    config = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(["set", "set", "set", "unknown", "drop", "self"]))
        path = draw(st.sampled_from(paths))
        if kind == "set":
            put(config, path, draw(values))
        elif kind == "unknown":
            put(config, (*path[:-1], draw(keys)), draw(values))
        elif kind == "drop":
            drop(config, path)
        else:  # a value that holds itself, as a YAML alias can make
            loop: list = [1]
            loop.append(loop)
            put(config, path, loop)
    return config


EXPERIMENT_BASE = {
    "seed": 1, "device": "cpu", "train": ["teacher", "student"],
    "data": {"name": "synthetic", "image_size": 32, "num_classes": 3, "object_size": [0.5, 0.9]},
    "model": {"arch": "vgg11", "width": 0.25},
    "teacher": {"epochs": 2, "lr": 0.05},
    "student": {"layer": "fc1", "method": "feature_mse", "method_options": {"reduction": "mean"},
                "distill": {"lr": 0.003}},
    "analysis": {"estimators": ["converged"], "samples": 4},
}
COMPARE_BASE = {
    "seeds": [0, 1], "device": "cpu", "layer": "conv",
    "data": {"image_size": 32, "num_classes": 3},
    "model": {"arch": "vgg11", "width": 0.25}, "teacher_model": {"arch": "vgg11", "width": 0.5},
    "student": {"epochs": 1},
    "methods": [{"name": "baseline"}, {"name": "kd", "label": "KD T4", "options": {"temperature": 4.0}},
                {"name": "ie_ft", "options": {"eta": 0.5}}],
    "mutual": [{"mode": "ie_dml", "options": {"eta": 0.5, "lambda_rec": 0.8}}],
    "sample_rates": [1.0, 0.5],
    "analysis": {"sharpness_sigmas": [0.0, 0.01]},
}


def refused_in_one_line(error: ConfigError) -> None:
    message = str(error)
    assert message.strip(), "empty message"
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 2000, message


def test_the_bases_are_valid():
    assert isinstance(parse_config(EXPERIMENT_BASE), ExperimentConfig)
    assert isinstance(parse_compare_config(COMPARE_BASE), CompareConfig)


@FUZZ
@given(mutated(EXPERIMENT_BASE, EXPERIMENT_PATHS))
def test_experiment_configs_validate_or_are_refused_in_one_line(raw):
    try:
        config = parse_config(raw, source="fuzz.yaml")
    except ConfigError as error:
        refused_in_one_line(error)
        return
    assert isinstance(config, ExperimentConfig)
    assert parse_config(yaml.safe_load(dump_config(config))) == config


@FUZZ
@given(mutated(COMPARE_BASE, COMPARE_PATHS))
def test_compare_configs_validate_or_are_refused_in_one_line(raw):
    try:
        config = parse_compare_config(raw, source="fuzz.yaml")
    except ConfigError as error:
        refused_in_one_line(error)
        return
    assert isinstance(config, CompareConfig)
    assert parse_compare_config(yaml.safe_load(dump_compare_config(config))) == config


@st.composite
def method_entries(draw) -> dict:
    """A comparison of one method whose own options get random values."""
    name = draw(st.sampled_from(sorted(METHOD_OPTIONS)))
    options = draw(st.dictionaries(st.sampled_from(METHOD_OPTIONS[name] or ["unknown"]), values, max_size=3))
    entry = {"name": name, "options": options}
    if draw(st.booleans()):
        entry["layer"] = draw(st.sampled_from(["conv", "fc1", "fc3", "fc9"]))
    return {**COMPARE_BASE, "methods": ["baseline", entry], "mutual": []}


@FUZZ
@given(method_entries())
def test_method_options_validate_or_are_refused_in_one_line(raw):
    try:
        config = parse_compare_config(raw, source="fuzz.yaml")
    except ConfigError as error:
        refused_in_one_line(error)
        return
    assert parse_compare_config(yaml.safe_load(dump_compare_config(config))) == config


YAML_PIECES = ["seed: ", "teacher:\n  lr: ", "data: {", "}", "[", "]", "- ", ": ", "\n", "  ", "\t", "&a ", "*a",
               "!!binary ", "!!python/object:os.system ", "? ", "|\n  ", "'", '"', "#", "---\n", "...\n", ".inf",
               ".nan", "1e999", "~", "\x00", "\x07", "\ufeff", "é", "<<: *a\n", "%YAML 1.1\n", "!!set {a}", "@"]


@settings(max_examples=max(EXAMPLES // 2, 1), deadline=None)
@given(st.one_of(
    st.lists(st.sampled_from(YAML_PIECES), max_size=12).map("".join).map(str.encode),
    st.binary(max_size=40),
))
def test_any_file_loads_or_is_refused_in_one_line(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(content)
        try:
            config = load_config(path)
        except ConfigError as error:
            refused_in_one_line(error)
            return
        assert isinstance(config, ExperimentConfig)

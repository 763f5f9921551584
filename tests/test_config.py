from pathlib import Path

import pytest
import yaml

from kdlens.config import ConfigError, ExperimentConfig, dump_config, load_config, parse_config


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(tmp_path: Path, raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, raw))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_are_the_paper_protocol():
    config = parse_config({})
    assert config.data.name == "synthetic"
    assert config.data.student_fraction == 0.1
    assert config.teacher.batch_size == 64
    assert config.student.layer == "fc1"
    assert config.train == ["teacher", "baseline", "student"]


def test_resolved_config_round_trips(tmp_path):
    config = parse_config({"seed": 3, "model": {"arch": "vgg16", "width": 0.25}})
    again = load_config(write(tmp_path, yaml.safe_load(dump_config(config))))
    assert again == config


def test_unknown_key_names_key_and_allowed(tmp_path):
    message = error_of(tmp_path, {"model": {"arch": "vgg11", "depth": 3}})
    assert "model.depth" in message and "arch" in message and "width" in message


def test_unknown_top_level_key(tmp_path):
    message = error_of(tmp_path, {"epochs": 3})
    assert "'epochs'" in message and "teacher" in message


def test_unknown_key_inside_dataset_variant(tmp_path):
    message = error_of(tmp_path, {"data": {"name": "synthetic", "colour": 1}})
    assert "data.colour" in message and "image_size" in message


def test_wrong_type_names_key_value_and_expectation(tmp_path):
    message = error_of(tmp_path, {"data": {"image_size": "big"}})
    assert "data.image_size" in message and "'big'" in message and "integer" in message


def test_out_of_range_value(tmp_path):
    message = error_of(tmp_path, {"data": {"student_fraction": 1.5}})
    assert "data.student_fraction" in message and "1.5" in message and "less than or equal to 1" in message


def test_layer_the_model_lacks(tmp_path):
    message = error_of(tmp_path, {"student": {"layer": "fc4"}})
    assert "student.layer" in message and "'fc4'" in message and "conv, fc1, fc2, fc3" in message


def test_unknown_architecture(tmp_path):
    message = error_of(tmp_path, {"model": {"arch": "vgg99"}})
    assert "model.arch" in message and "'vgg99'" in message and "vgg16" in message


def test_data_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-dir"
    message = error_of(tmp_path, {"data": {"name": "cub", "path": str(missing)}})
    assert "data.path" in message and str(missing) in message and "does not exist" in message


def test_unknown_dataset_name(tmp_path):
    message = error_of(tmp_path, {"data": {"name": "imagenet"}})
    assert "data.name" in message and "'imagenet'" in message and "synthetic" in message


def test_missing_teacher_checkpoint(tmp_path):
    message = error_of(tmp_path, {"student": {"teacher_checkpoint": str(tmp_path / "t.pt")}})
    assert "student.teacher_checkpoint" in message and "t.pt" in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_are_valid(tmp_path):
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        raw = yaml.safe_load(path.read_text())
        if "methods" in raw:  # kdlens compare's own schema (tests/compare/test_ready_configs.py)
            continue
        if "path" in raw.get("data", {}):  # real data: point it at a directory that exists
            raw["data"]["path"] = str(tmp_path)
        assert isinstance(parse_config(raw, source=str(path)), ExperimentConfig)


def test_method_options_are_checked_when_loaded(tmp_path):
    message = error_of(tmp_path, {"student": {"method_options": {"reduction": "max"}}})
    assert "student.method_options" in message and "'max'" in message and "'mean' or 'sum'" in message
    message = error_of(tmp_path, {"student": {"method_options": {"temperature": 4}}})
    assert "student.method_options" in message and "temperature" in message


def test_iep_is_refused_by_the_two_phase_protocol(tmp_path):
    message = error_of(tmp_path, {"student": {"method": "iep"}})
    assert "student.method" in message and "kdlens compare" in message


def test_synthetic_object_size_and_cue(tmp_path):
    config = parse_config({})
    assert config.data.object_size == (0.7, 0.95) and config.data.cue == "object" and config.data.distractors == 0
    config = parse_config({"data": {"object_size": [0.5, 0.6], "cue": "background"}})
    assert config.data.object_size == (0.5, 0.6) and config.data.cue == "background"
    assert load_config(write(tmp_path, yaml.safe_load(dump_config(config)))) == config
    message = error_of(tmp_path, {"data": {"object_size": [0.9, 0.5]}})
    assert "data.object_size" in message and "[0.9, 0.5]" in message and "0 < low <= high <= 1" in message
    message = error_of(tmp_path, {"data": {"cue": "texture"}})
    assert "data.cue" in message and "'texture'" in message and "'background'" in message
    message = error_of(tmp_path, {"data": {"cue": "background", "spurious_strength": 0.5}})
    assert "data.spurious_strength = 0.5" in message and "data.cue = 'background'" in message


def test_build_datasets_passes_object_size_and_cue_through():
    from kdlens.builders import build_datasets

    config = parse_config({"data": {"image_size": 16, "train_size": 4, "test_size": 2, "object_size": [0.5, 0.6],
                                    "cue": "background", "distractors": 1}})
    for data in build_datasets(config):
        assert data.object_size == (0.5, 0.6) and data.cue == "background" and data.distractors == 1

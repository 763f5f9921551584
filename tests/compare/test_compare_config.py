"""The compare config: defaults, entries by name or mapping, one-line errors."""

from pathlib import Path

import pytest

from kdlens.compare.config import load_compare_config, parse_compare_config
from kdlens.config import ConfigError


def test_defaults_compare_the_papers_table_1_methods_on_the_whole_training_set():
    config = parse_compare_config({})
    assert [e.title for e in config.methods] == ["Student", "KD", "AT", "FT", "OD", "IE-AT", "IE-FT", "IE-OD"]
    assert config.data.student_fraction == 1.0
    assert config.seeds == [0, 1]


def test_logit_methods_ignore_the_feature_layer():
    config = parse_compare_config({"layer": "conv", "methods": ["baseline", "kd", "ie_ft"]})
    kd, ie = config.methods[1], config.methods[2]
    assert kd.resolved_layer(config.layer) == "fc3"
    assert ie.resolved_layer(config.layer) == "conv"
    assert ie.build(config.layer).layers == ("conv",)


def test_entries_take_labels_layers_and_options():
    config = parse_compare_config({"methods": [
        "baseline", {"name": "ie_ft", "label": "IE-FT eta 0.3", "options": {"eta": 0.3}}]})
    entry = config.methods[1]
    assert entry.title == "IE-FT eta 0.3"
    assert entry.build(config.layer).eta == 0.3


@pytest.mark.parametrize("raw, message", [
    ({"methods": ["kd"]}, "expected 'baseline' among them"),
    ({"methods": ["baseline", "nope"]}, "methods.1.name = 'nope': unknown method"),
    ({"methods": ["baseline", "kd", "kd"]}, "KD listed twice"),
    ({"methods": ["baseline", {"name": "ie_ft", "options": {"eta": 2}}]}, "eta = 2"),
    ({"methods": ["baseline", {"name": "od", "options": {"margin": 1}}]}, "OD: options"),
    ({"seeds": [1, 1]}, "expected distinct seeds"),
    ({"seeds": []}, "seeds"),
    ({"layer": "fc9"}, "no layer 'fc9'"),
    ({"mutual": ["dmx"]}, "mutual.0.mode = 'dmx'"),
    ({"mutual": [{"mode": "ie_dml", "options": {"foo": 1}}]}, "unknown key(s) foo"),
    ({"student": {"epochz": 3}}, "unknown key 'student.epochz'"),
])
def test_mistakes_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_compare_config(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_ready_configs_load():
    root = Path(__file__).parents[2] / "configs"
    config = load_compare_config(root / "compare-synthetic.yaml")
    assert len(config.seeds) >= 5
    assert {e.name for e in config.methods} >= {"baseline", "kd", "fitnet", "at", "sp", "ft"}
    table1 = load_compare_config(root / "compare-synthetic-table1.yaml")
    assert len(table1.seeds) >= 3
    assert {e.name for e in table1.methods} >= {"baseline", "kd", "at", "ft", "od", "ie_at", "ie_ft", "ie_od"}
    mutual = load_compare_config(root / "compare-mutual-synthetic.yaml")
    assert [e.mode for e in mutual.mutual] == ["dml", "ie_dml"]
    for path in root.glob("compare-*.yaml"):
        load_compare_config(path)


def test_ie_methods_pair_by_their_declared_property_not_their_labels():
    config = parse_compare_config({"methods": ["baseline", {"name": "at", "label": "Attention"},
                                                      {"name": "ie_at", "label": "Mine"}, "ie_ft", "kd"]})
    assert config.ie_pairs == [("Mine", "Attention")]  # IE-FT's base (ft) is not compared
    assert config.ie_titles == ["Mine", "IE-FT"]

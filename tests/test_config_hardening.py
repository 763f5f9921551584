"""Issue 12: configs that cannot be used are refused in one line, before a run
directory is made, and what a label puts in the comparison's files is literal."""

import csv
import io
from pathlib import Path

import pytest
import torch
import yaml

from kdlens.cli import main
from kdlens.compare.config import load_compare_config
from kdlens.compare.tables import markdown_text, per_seed_table, rate_table, results_csv, table1
from kdlens.config import load_config
from kdlens.errors import ConfigError

# A valid config that trains in a blink, for the command-line checks.
TINY = {
    "device": "cpu", "train": ["baseline"],
    "data": {"image_size": 32, "num_classes": 3, "train_size": 12, "test_size": 6, "student_fraction": 1.0},
    "model": {"arch": "vgg11", "width": 0.125},
    "baseline": {"epochs": 1, "batch_size": 4},
}


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(load, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def unavailable_device() -> str:
    """A device of a valid form that this machine does not have."""
    if torch.cuda.is_available():
        return "cuda:99"
    return "cuda"


def run_cli(argv: list[str], capsys) -> str:
    """``kdlens argv``, which must fail as a user error: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlens: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# 1. Infinities and NaN, anywhere a number goes.

@pytest.mark.parametrize("text, key", [
    ("teacher: {lr: .inf}", "teacher.lr"),
    ("teacher: {lr: inf}", "teacher.lr"),
    ("baseline: {weight_decay: -.inf}", "baseline.weight_decay"),
    ("student: {distill: {lr: .nan}}", "student.distill.lr"),
    ("student: {classify: {momentum: .nan}}", "student.classify.momentum"),
    ("data: {student_fraction: .nan}", "data.student_fraction"),
    ("data: {noise: .inf}", "data.noise"),
    ("data: {object_size: [0.5, .inf]}", "data.object_size.1"),
    ("model: {width: .inf}", "model.width"),
    ("teacher_model: {width: .nan}", "teacher_model.width"),
    ("student: {method_options: {reduction: .nan}}", "student.method_options.reduction"),
])
def test_non_finite_numbers_are_refused(tmp_path, text, key):
    message = config_error(load_config, write(tmp_path, text + "\n"))
    assert key in message and ("inf" in message or "nan" in message) and "finite" in message


def test_non_finite_crop_of_real_data_is_refused(tmp_path):
    path = write(tmp_path, f"data: {{name: cub, path: {tmp_path}, bbox_crop: .inf}}\n")
    message = config_error(load_config, path)
    assert "data.bbox_crop = inf" in message and "finite" in message


@pytest.mark.parametrize("text, key", [
    ("student: {lr: .inf}", "student.lr"),
    ("teacher_model: {width: .nan}", "teacher_model.width"),
    ("analysis: {sharpness_sigmas: [0.0, .inf]}", "analysis.sharpness_sigmas.1"),
    ("analysis: {energy: .nan}", "analysis.energy"),
    ("sample_rates: [1.0, .nan]", "sample_rates.1"),
    ("methods: [baseline, {name: kd, options: {temperature: .inf}}]", "methods.1.options.temperature"),
    ("methods: [baseline, {name: ie_ft, options: {eta: .nan}}]", "methods.1.options.eta"),
    ("mutual: [{mode: ie_dml, options: {lambda_rec: .inf}}]", "mutual.0.options.lambda_rec"),
])
def test_non_finite_numbers_are_refused_by_compare(tmp_path, text, key):
    message = config_error(load_compare_config, write(tmp_path, text + "\n"))
    assert key in message and "finite" in message


# 2. Every message names the key and the value.

@pytest.mark.parametrize("text, key, value", [
    ("seed: -5", "seed", "-5"),
    ("seed: 1.5", "seed", "1.5"),
    ("seed: yes", "seed", "True"),
    ("teacher: {epochs: true}", "teacher.epochs", "True"),
    ("data: {image_size: 8}", "data.image_size", "8"),
    ("train: [teacher, tutor]", "train.1", "'tutor'"),
    ("model: {linear_init: xavier}", "model.linear_init", "'xavier'"),
    ("teacher_model: {width: -1}", "teacher_model.width", "-1"),
    ("teacher: [1, 2]", "teacher", "[1, 2]"),
    ("data: {name: imagenet}", "data.name", "'imagenet'"),
    ("analysis: {estimators: [paper, guess]}", "analysis.estimators.1", "'guess'"),
    ("student: {layer: fc9}", "student.layer", "'fc9'"),
    ("analysis: {layers: [fc1, fc9]}", "analysis.layers", "'fc9'"),
    ("analysis: {layers: [fc2, fc2]}", "analysis.layers", "fc2"),
    ("1: 2", "key 1", "1"),
])
def test_messages_name_key_and_value(tmp_path, text, key, value):
    message = config_error(load_config, write(tmp_path, text + "\n"))
    assert key in message and value in message and "expected" in message


@pytest.mark.parametrize("text, key, value", [
    ("seeds: [0, -1]", "seeds.1", "-1"),
    ("seeds: [true]", "seeds", "True"),
    ("methods: [baseline, {name: kd, label: 'a|b'}]", "methods.1.label", "'a|b'"),
    ("mutual: [{mode: ie_dml, options: {lambda_inh: lots}}]", "mutual.0.options.lambda_inh", "'lots'"),
])
def test_compare_messages_name_key_and_value(tmp_path, text, key, value):
    message = config_error(load_compare_config, write(tmp_path, text + "\n"))
    assert key in message and value in message and "expected" in message


def test_a_huge_value_is_shown_short(tmp_path):
    message = config_error(load_config, write(tmp_path, f"device: [{', '.join(['1'] * 5000)}]\n"))
    assert "device" in message and len(message) < 400


# 3. The device: its form when loaded; whether this machine has it, before a run directory is made.

@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "cuda:-1", "CPU", ""])
def test_device_of_an_unknown_form_is_refused(tmp_path, device):
    message = config_error(load_config, write(tmp_path, f"device: '{device}'\n"))
    assert f"device = {device!r}" in message and "cuda:N" in message
    message = config_error(load_compare_config, write(tmp_path, f"device: '{device}'\n"))
    assert f"device = {device!r}" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices_of_a_known_form_load(tmp_path, device):
    assert load_config(write(tmp_path, f"device: '{device}'\n")).device == device


@pytest.mark.parametrize("command", ["train", "compare"])
def test_an_unavailable_device_stops_before_the_run_directory(tmp_path, capsys, command):
    device = unavailable_device()
    raw = {**TINY, "device": device} if command == "train" else {"device": device, "seeds": [0]}
    path = write(tmp_path, yaml.safe_dump(raw))
    out = tmp_path / "run"
    err = run_cli([command, "--config", str(path), "--out", str(out), "--quiet"], capsys)
    assert f"device = {device!r}" in err
    assert not out.exists()


# 4. The file itself: binary, empty, a directory, unreadable YAML.

@pytest.mark.parametrize("load", [load_config, load_compare_config])
def test_binary_file_is_refused_naming_it(tmp_path, load):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00seedq\x01K\x00u.\xff\xfe")
    message = config_error(load, path)
    assert str(path) in message and "UTF-8" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "~\n", "---\n"])
@pytest.mark.parametrize("load", [load_config, load_compare_config])
def test_empty_file_is_refused(tmp_path, load, text):
    path = write(tmp_path, text)
    message = config_error(load, path)
    assert str(path) in message and "is empty" in message and "expected a mapping" in message


@pytest.mark.parametrize("load", [load_config, load_compare_config])
def test_directory_is_refused(tmp_path, load):
    message = config_error(load, tmp_path)
    assert str(tmp_path) in message and "is a directory" in message


@pytest.mark.parametrize("text", ["seed: [1, 2\n", "a: b: c\n", "seed: \x07\n", "\tseed: 1\n", "{{{\n"])
def test_unreadable_yaml_is_one_line(tmp_path, text):
    path = write(tmp_path, text)
    message = config_error(load_config, path)
    assert str(path) in message and "not valid YAML" in message


def test_a_key_given_twice_is_refused(tmp_path):
    path = write(tmp_path, "teacher: {lr: 0.1}\nseed: 1\nteacher: {epochs: 3}\n")
    message = config_error(load_config, path)
    assert str(path) in message and "'teacher' appears twice" in message and "line 3" in message


def test_merge_keys_may_repeat_a_key(tmp_path):
    path = write(tmp_path, "teacher: &base {lr: 0.1, epochs: 2}\nbaseline: {<<: *base, lr: 0.2}\n")
    config = load_config(path)
    assert (config.baseline.lr, config.baseline.epochs) == (0.2, 2)


@pytest.mark.parametrize("text", ["- seed\n- 1\n", "just words\n", "42\n"])
def test_a_document_that_is_not_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    message = config_error(load_config, path)
    assert str(path) in message and "expected a mapping" in message


def test_a_file_name_too_long_to_look_up(tmp_path):
    message = config_error(load_config, tmp_path / ("x" * 5000 + ".yaml"))
    assert "does not exist" in message


# 5. Nothing is written for a config that fails.

@pytest.mark.parametrize("command, text, names", [
    ("train", "teacher: {lr: .inf}\n", "teacher.lr"),
    ("train", "device: tpu\n", "device"),
    ("train", "", "is empty"),
    ("train", "seed: -5\n", "seed = -5"),
    ("compare", "methods: [baseline, {name: kd, label: '<script>'}]\n", "methods.1.label"),
    ("compare", "device: tpu\n", "device"),
    ("compare", "student: {lr: .nan}\n", "student.lr"),
])
def test_a_bad_config_leaves_no_run_directory(tmp_path, capsys, command, text, names):
    path = write(tmp_path, text)
    out = tmp_path / "run"
    err = run_cli([command, "--config", str(path), "--out", str(out), "--quiet"], capsys)
    assert names in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_binary_or_directory_config_on_the_command_line(tmp_path, capsys, command):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)))
    out = tmp_path / "run"
    assert str(binary) in run_cli([command, "--config", str(binary), "--out", str(out)], capsys)
    assert "is a directory" in run_cli([command, "--config", str(tmp_path), "--out", str(out)], capsys)
    assert not out.exists()


# 6. Method labels: a clear character set in the config, literal text in the report.

@pytest.mark.parametrize("label", [
    "a|b", "<script>alert(1)</script>", "x\ny", "", " leading", "-dash", "..", "back\\slash", "a" * 41,
    "quote'", 'double"', "semi;colon", "tab\there", "Élève",
])
def test_labels_outside_the_character_set_are_refused(tmp_path, label):
    raw = {"methods": ["baseline", {"name": "kd", "label": label}]}
    message = config_error(load_compare_config, write(tmp_path, yaml.safe_dump(raw)))
    assert "methods.1.label" in message and repr(label) in message and "letters, digits" in message


def test_mutual_labels_are_checked_too(tmp_path):
    message = config_error(load_compare_config, write(tmp_path, "mutual: [{mode: dml, label: 'a|b'}]\n"))
    assert "mutual.0.label" in message
    message = config_error(load_compare_config, write(tmp_path, "mutual: [{mode: dml, label: Independent}]\n"))
    assert "mutual.0.label = 'Independent'" in message


@pytest.mark.parametrize("label", ["IE-FT (eta=0.3)", "KD/T=4", "KD T 4, alpha 0.9", "FitNet+MSE_2", "I=1", "50%: kd"])
def test_labels_in_the_character_set_load(tmp_path, label):
    raw = {"methods": ["baseline", {"name": "kd", "label": label}]}
    config = load_compare_config(write(tmp_path, yaml.safe_dump(raw)))
    assert config.methods[1].title == label


@pytest.mark.parametrize("first, second", [("KD a", "KD_a"), ("KD/a", "KD a"), ("kd", "KD")])
def test_labels_that_would_share_a_folder_are_refused(tmp_path, first, second):
    raw = {"methods": ["baseline", {"name": "kd", "label": first}, {"name": "kd", "label": second,
                                                                     "options": {"temperature": 2.0}}]}
    message = config_error(load_compare_config, write(tmp_path, yaml.safe_dump(raw)))
    assert repr(first) in message and repr(second) in message and "folder" in message


def row(error):
    return {"test_error": error, "train_error": error / 2, "test_accuracy": 1 - error / 100, "seconds": 6.0}


HOSTILE = {"Student": {"0": row(10.0)}, "a|b <script>x</script>": {"0": row(9.0)}, 'c,"d"': {"0": row(8.0)}}


def cells(line: str) -> list[str]:
    """A Markdown table row's cells, splitting at unescaped pipes."""
    out, cell, escaped = [], "", False
    for char in line.strip()[1:-1]:
        if char == "|" and not escaped:
            out.append(cell.strip())
            cell = ""
        else:
            cell += char
        escaped = char == "\\" and not escaped
    return [*out, cell.strip()]


@pytest.mark.parametrize("table", [
    lambda: table1("t", 5.0, "s", {t: {"mean": 1.0, "std": None} for t in HOSTILE}),
    lambda: per_seed_table(HOSTILE),
    lambda: rate_table({"100%": HOSTILE}),
])
def test_markdown_tables_escape_labels(table):
    text = table()
    assert "<script>" not in text and "&lt;script&gt;" in text
    lines = text.strip().splitlines()
    widths = {len(cells(line)) for line in lines}
    assert len(widths) == 1, lines  # no label adds a column


def test_markdown_text_is_literal():
    assert markdown_text("a|b") == "a\\|b"
    assert markdown_text("<b>&") == "&lt;b&gt;&amp;"
    assert "\n" not in markdown_text("two\nlines")


def test_results_csv_keeps_commas_and_quotes_in_one_cell():
    rows = list(csv.reader(io.StringIO(results_csv({"100%": HOSTILE}))))
    assert [r[1] for r in rows[1:]] == list(HOSTILE)
    assert {len(r) for r in rows} == {7}


def test_options_that_yaml_cannot_write_back_are_refused():
    """YAML's !!binary reads as bytes, which a dumped config would write back as a string."""
    from kdlens.compare.config import parse_compare_config
    from kdlens.config import ConfigError, parse_config

    raw = {"seeds": [0, 1], "device": "cpu", "layer": "conv", "data": {"image_size": 32, "num_classes": 3},
           "model": {"arch": "vgg11", "width": 0.25}, "student": {"epochs": 1},
           "methods": ["baseline", {"name": "ie_at", "options": {"metric": b""}}]}
    with pytest.raises(ConfigError, match=r"options.metric = b'': expected a string, number, true/false"):
        parse_compare_config(raw, source="binary.yaml")
    with pytest.raises(ConfigError, match="expected a string, number"):
        parse_config({"model": {"options": {"batch_norm": b"\x00"}}})

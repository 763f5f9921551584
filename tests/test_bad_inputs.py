"""The catalogue of bad inputs: each one gives a one-line error that names the
offending key, file or value, and no traceback.

Command-line cases run ``kdlens`` in-process (``kdlens.cli.main``): an
exception other than a kdlens error would escape ``main`` and fail the test
with its traceback. API cases call ``information_discarding`` and expect a
``UsageError`` whose message is one line.

    .venv/bin/python -m pytest tests/test_bad_inputs.py -q
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kdlens.cli import main
from kdlens.explain import information_discarding
from kdlens.modalities.units import grid_units
from kdlens.errors import KdlensError
from kdlens.models import build_model

TINY = {
    "device": "cpu",
    "train": ["teacher", "baseline"],
    "data": {"image_size": 32, "num_classes": 3, "train_size": 60, "test_size": 30, "student_fraction": 1.0},
    "model": {"arch": "vgg11", "width": 0.125},
    "teacher": {"epochs": 1, "batch_size": 16},
    "baseline": {"epochs": 1, "batch_size": 16},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run with a one-epoch teacher and baseline (a few seconds)."""
    root = tmp_path_factory.mktemp("trained")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    assert main(["train", "--config", str(config), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def write_config(tmp: Path, changes: dict | None = None, text: str | None = None, name: str = "c.yaml") -> str:
    path = tmp / name
    if text is not None:
        path.write_text(text)
    else:
        raw = yaml.safe_load(yaml.safe_dump(TINY))
        for dotted, value in (changes or {}).items():
            *parents, key = dotted.split(".")
            node = raw
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = value
        path.write_text(yaml.safe_dump(raw))
    return str(path)


def copy_run(run: Path, tmp: Path) -> Path:
    copy = tmp / "run"
    shutil.copytree(run, copy)
    return copy


def train_args(config: str, tmp: Path) -> list[str]:
    return ["train", "--config", config, "--out", str(tmp / "out"), "--quiet"]


def analyze_args(run: Path, *extra: str) -> list[str]:
    return ["analyze", str(run), "--samples", "2", "--grid", "4", "--steps", "3", "--quiet", *extra]


def fake_cub(tmp: Path, labels: str | None = None, corrupt: bool = False) -> Path:
    """A 4-image, 2-class CUB directory, optionally with a bad label file or a corrupt image."""
    root = tmp / "cub"
    rows = {"images": [], "labels": [], "split": [], "boxes": []}
    for i in range(1, 5):
        label = 1 if i <= 2 else 2
        rel = f"{label:03d}.bird_{label}/bird_{i}.jpg"
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 40 * i, dtype=np.uint8)).save(root / "images" / rel)
        rows["images"].append(f"{i} {rel}")
        rows["labels"].append(f"{i} {label}")
        rows["split"].append(f"{i} {i % 2}")
        rows["boxes"].append(f"{i} 5 5 20 20")
    for name, key in [("images", "images"), ("image_class_labels", "labels"),
                      ("train_test_split", "split"), ("bounding_boxes", "boxes")]:
        (root / f"{name}.txt").write_text("\n".join(rows[key]) + "\n")
    if labels is not None:
        (root / "image_class_labels.txt").write_text(labels)
    if corrupt:
        (root / "images" / "001.bird_1" / "bird_1.jpg").write_bytes(b"not a jpeg at all")
    return root


def cub_config(tmp: Path, **cub) -> str:
    raw = {"device": "cpu", "train": ["baseline"], "model": {"arch": "vgg11", "width": 0.125},
           "data": {"name": "cub", "path": str(fake_cub(tmp, **cub)), "image_size": 32, "student_fraction": 1.0},
           "baseline": {"epochs": 1, "batch_size": 2}}
    return write_config(tmp, text=yaml.safe_dump(raw))


def truncated_teacher(tmp: Path, run: Path) -> str:
    data = (run / "teacher" / "checkpoints" / "epoch_001.pt").read_bytes()
    path = tmp / "teacher.pt"
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def other_arch_teacher(tmp: Path) -> str:
    path = tmp / "resnet.pt"
    torch.save({"model": build_model("resnet18", num_classes=3, image_size=32, width=0.125).state_dict()}, path)
    return str(path)


def with_teacher(tmp: Path, checkpoint: str) -> list[str]:
    config = write_config(tmp, {"train": ["student"], "student.distill.epochs": 1, "student.classify.epochs": 1, "student.teacher_checkpoint": checkpoint})
    return train_args(config, tmp)


def with_teacher_method(tmp: Path, run: Path, method: str) -> list[str]:
    """The student distilled with ``method`` at fc1 from the trained run's teacher."""
    teacher = run / "teacher" / "checkpoints" / "epoch_001.pt"
    config = write_config(tmp, {"train": ["student"], "student.method": method, "student.distill.epochs": 1,
                                "student.classify.epochs": 1, "student.teacher_checkpoint": str(teacher)})
    return train_args(config, tmp)


def truncate_checkpoint(run: Path) -> Path:
    path = run / "baseline" / "checkpoints" / "epoch_001.pt"
    path.write_bytes(path.read_bytes()[:300])
    return path


def foreign_checkpoint(run: Path) -> Path:
    path = run / "baseline" / "checkpoints" / "epoch_002.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def empty_run(tmp: Path, run: Path) -> Path:
    copy = tmp / "empty"
    copy.mkdir()
    shutil.copy(run / "config.yaml", copy / "config.yaml")
    return copy


@dataclass
class Case:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (tmp_path, trained run) -> argv
    names: tuple[str, ...]  # what the one-line message must contain


CASES = [
    # the config file itself
    Case("missing config", lambda t, r: train_args(str(t / "nope.yaml"), t), ("nope.yaml",)),
    Case("config is a directory", lambda t, r: train_args(_directory(t, "confdir"), t), ("confdir",)),
    Case("binary config", lambda t, r: train_args(_binary(t), t), ("binary.yaml",)),
    Case("empty config", lambda t, r: train_args(write_config(t, text=""), t), ("c.yaml", "empty")),
    Case("not YAML", lambda t, r: train_args(write_config(t, text="a: [1, 2\n"), t), ("c.yaml", "YAML")),
    Case("a list, not a mapping", lambda t, r: train_args(write_config(t, text="- 1\n- 2\n"), t), ("mapping",)),
    # keys and values
    Case("unknown key", lambda t, r: train_args(write_config(t, {"colour": "red"}), t), ("colour",)),
    Case("unknown nested key", lambda t, r: train_args(write_config(t, {"teacher.speed": 3}), t), ("teacher.speed",)),
    Case("infinite lr", lambda t, r: train_args(write_config(t, {"teacher.lr": float("inf")}), t), ("teacher.lr", "inf")),
    Case("nan lr", lambda t, r: train_args(write_config(t, {"baseline.lr": float("nan")}), t), ("baseline.lr", "nan")),
    Case("negative lr", lambda t, r: train_args(write_config(t, {"teacher.lr": -1.0}), t), ("teacher.lr", "-1")),
    Case("negative seed", lambda t, r: train_args(write_config(t, {"seed": -5}), t), ("seed", "-5")),
    Case("seed of the wrong type", lambda t, r: train_args(write_config(t, {"seed": "abc"}), t), ("seed", "abc")),
    Case("unknown device", lambda t, r: train_args(write_config(t, {"device": "tpu"}), t), ("device", "tpu")),
    Case("image size a word", lambda t, r: train_args(write_config(t, {"data.image_size": "big"}), t),
         ("data.image_size", "big")),
    Case("unknown architecture", lambda t, r: train_args(write_config(t, {"model.arch": "vgg99"}), t),
         ("model.arch", "vgg99")),
    Case("negative width", lambda t, r: train_args(write_config(t, {"model.width": -1}), t), ("model.width", "-1")),
    Case("unknown layer", lambda t, r: train_args(write_config(t, {"student.layer": "fc9"}), t), ("fc9",)),
    Case("unknown method", lambda t, r: train_args(write_config(t, {"student.method": "magic"}), t), ("magic",)),
    Case("a method that needs feature maps at fc1", lambda t, r: with_teacher_method(t, r, "at"), ("fc1",)),
    Case("compare on point clouds", lambda t, r: ["compare", "--config", _compare_points(t), "--out",
                                                  str(t / "cmp"), "--quiet"], ("point_shapes",)),
    Case("unknown role", lambda t, r: [*train_args(write_config(t), t), "--roles", "teacher,dean"], ("dean",)),
    Case("negative epochs", lambda t, r: train_args(write_config(t, {"teacher.epochs": -1}), t), ("teacher.epochs", "-1")),
    Case("dataset root missing", lambda t, r: train_args(
        write_config(t, text=yaml.safe_dump({"data": {"name": "cub", "path": str(t / "nowhere")}})), t), ("nowhere",)),
    # output paths
    Case("train --out is a file", lambda t, r: ["train", "--config", write_config(t), "--out", _file(t), "--quiet"],
         ("afile",)),
    Case("demo --out is a file", lambda t, r: ["demo", "--quick", "--out", _file(t), "--quiet"], ("afile",)),
    Case("validate --out is a file", lambda t, r: ["validate", "--quick", "--out", _file(t), "--quiet"], ("afile",)),
    # teacher checkpoints
    Case("teacher checkpoint missing", lambda t, r: with_teacher(t, str(t / "gone.pt")), ("gone.pt",)),
    Case("teacher checkpoint truncated", lambda t, r: with_teacher(t, truncated_teacher(t, r)), ("teacher.pt",)),
    Case("teacher checkpoint of another architecture", lambda t, r: with_teacher(t, other_arch_teacher(t)),
         ("resnet.pt",)),
    # datasets on disk
    Case("CUB class id 0", lambda t, r: train_args(cub_config(t, labels="1 0\n2 1\n3 2\n4 2\n"), t),
         ("image_class_labels.txt", "0")),
    Case("CUB class id not a number", lambda t, r: train_args(cub_config(t, labels="1 a\n2 1\n3 2\n4 2\n"), t),
         ("image_class_labels.txt",)),
    Case("CUB corrupt image", lambda t, r: train_args(cub_config(t, corrupt=True), t), ("bird_1.jpg",)),
    # analysis
    Case("analyze a directory that is not a run", lambda t, r: analyze_args(Path(_directory(t, "notarun"))),
         ("notarun",)),
    Case("analyze a run without checkpoints", lambda t, r: analyze_args(empty_run(t, r)), ("empty",)),
    Case("analyze an unknown layer", lambda t, r: analyze_args(r, "--layer", "fc7"), ("fc7",)),
    Case("analyze a NaN threshold", lambda t, r: analyze_args(r, "--threshold", "nan"), ("threshold", "nan")),
    Case("analyze a negative threshold", lambda t, r: analyze_args(r, "--threshold", "-1"), ("threshold", "-1")),
    Case("analyze zero samples", lambda t, r: analyze_args(r, "--samples", "0"), ("samples", "0")),
    Case("analyze more samples than images", lambda t, r: analyze_args(r, "--samples", "100000"), ("100000",)),
    Case("analyze a grid of 0", lambda t, r: analyze_args(r, "--grid", "0"), ("grid", "0")),
    Case("analyze a truncated checkpoint",
         lambda t, r: analyze_args(_run_with(t, r, truncate_checkpoint)), ("epoch_001.pt",)),
    Case("analyze a foreign file among the checkpoints",
         lambda t, r: analyze_args(_run_with(t, r, foreign_checkpoint)), ("epoch_002.pt",)),
    # compare
    Case("compare config missing", lambda t, r: ["compare", "--config", str(t / "none.yaml")], ("none.yaml",)),
    Case("compare label with a pipe", lambda t, r: ["compare", "--config", _compare(t, "kd|at"), "--out",
                                                    str(t / "cmp"), "--quiet"], ("kd|at",)),
]


def _directory(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return str(tmp / name)


def _binary(tmp: Path) -> str:
    path = tmp / "binary.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    return str(path)


def _file(tmp: Path) -> str:
    path = tmp / "afile"
    path.write_text("not a directory\n")
    return str(path)


def _run_with(tmp: Path, run: Path, damage: Callable[[Path], Path]) -> Path:
    copy = copy_run(run, tmp)
    damage(copy)
    return copy


def _compare_points(tmp: Path) -> str:
    raw = {"seeds": [0], "data": {"name": "point_shapes"}, "teacher_model": {"arch": "pointnet"},
           "model": {"arch": "pointnet"}, "methods": ["baseline", "kd"]}
    return write_config(tmp, text=yaml.safe_dump(raw), name="compare.yaml")


def _compare(tmp: Path, label: str) -> str:
    raw = {"seeds": [0], "device": "cpu",
           "data": {"image_size": 32, "num_classes": 3, "train_size": 60, "test_size": 30, "student_fraction": 1.0},
           "teacher_model": {"arch": "vgg11", "width": 0.125}, "model": {"arch": "vgg11", "width": 0.125},
           "teacher": {"epochs": 1}, "student": {"epochs": 1}, "layer": "conv",
           "methods": ["baseline", {"name": "kd", "label": label}]}
    return write_config(tmp, text=yaml.safe_dump(raw), name="compare.yaml")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line(case, tmp_path, trained, capsys):
    argv = case.argv(tmp_path, trained)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdlens: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    for expected in case.names:
        assert expected in err, f"{expected!r} not in {err!r}"


def test_catalogue_is_big_enough():
    assert len(CASES) + len(API_CASES) >= 30


def test_a_config_that_fails_leaves_no_run_directory(tmp_path, capsys):
    for changes in ({"device": "tpu"}, {"teacher.lr": float("inf")}, {"seed": -5}):
        assert main(train_args(write_config(tmp_path, changes), tmp_path)) == 2
        assert not (tmp_path / "out").exists(), changes
    capsys.readouterr()


# --- the API --------------------------------------------------------------------------------------

MODEL = build_model("vgg11", num_classes=3, image_size=32, width=0.125)
IMAGES = torch.randn(2, 3, 32, 32)
UNITS = grid_units(32, 32, 4)

API_CASES = [
    ("empty batch", dict(inputs=IMAGES[:0]), ("0",)),
    ("NaN alpha", dict(alpha=float("nan")), ("alpha", "nan")),
    ("infinite tau", dict(tau=float("inf")), ("tau", "inf")),
    ("zero steps", dict(steps=0), ("steps", "0")),
    ("NaN image", dict(inputs=torch.full((1, 3, 32, 32), float("nan"))), ("inputs",)),
    ("unknown estimator", dict(estimator="exact"), ("exact",)),
    ("option of the other estimator", dict(estimator="paper", alpha=2.0), ("alpha",)),
    ("units of the wrong shape", dict(units=grid_units(16, 16, 4)), ("units",)),
    ("unknown layer", dict(layer="fc9"), ("fc9",)),
]


@pytest.mark.parametrize("changes,names", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input_gives_one_line(changes, names):
    kwargs = {"inputs": IMAGES, "layer": "fc1", "units": UNITS, "steps": 2, **changes}
    with pytest.raises(KdlensError) as info:
        information_discarding(MODEL, kwargs.pop("inputs"), kwargs.pop("layer"), kwargs.pop("units"), **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    for expected in names:
        assert expected in message, f"{expected!r} not in {message!r}"


def test_a_reader_that_leaves_gets_no_traceback(trained):
    """`kdlens analyze RUN | head -c 0`: stdout closes before kdlens prints; no BrokenPipeError traceback."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "kdlens.cli", *analyze_args(trained)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err

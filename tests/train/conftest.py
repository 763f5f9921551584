import pytest

from kdlens.config import parse_config


def tiny_raw(**overrides) -> dict:
    """A config that trains every role in a few seconds on the CPU."""
    raw = {
        "seed": 7,
        "device": "cpu",
        "data": {"name": "synthetic", "image_size": 32, "num_classes": 4, "train_size": 192,
                 "test_size": 64, "distractors": 1, "student_fraction": 0.5},
        "model": {"arch": "vgg11", "width": 0.125, "dropout": 0.5},
        "teacher": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "baseline": {"epochs": 2, "batch_size": 32, "lr": 0.05},
        "student": {"layer": "fc1",
                    "distill": {"epochs": 2, "batch_size": 32, "lr": 0.05},
                    "classify": {"epochs": 2, "batch_size": 32, "lr": 0.05}},
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw


@pytest.fixture
def tiny_config():
    return parse_config(tiny_raw())

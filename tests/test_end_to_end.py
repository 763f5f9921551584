"""The acceptance check of the foundation: on the synthetic default at 32x32, a
small VGG-style teacher trained on the full data is clearly more accurate than
the baseline trained on 10% of it. Slow (a few minutes): `make test-slow`."""

import pytest

from kdlens.experiment import demo_config
from kdlens.train import train_roles


@pytest.mark.slow
def test_teacher_beats_the_baseline_trained_on_a_tenth(tmp_path):
    config = demo_config()
    run = train_roles(config, tmp_path / "run", roles=["teacher", "baseline"])
    teacher = run.role("teacher").load(config.teacher.epochs)["metrics"]["test_accuracy"]
    baseline = run.role("baseline").load(config.baseline.epochs)["metrics"]["test_accuracy"]
    print(f"\nteacher test accuracy {teacher:.3f}, baseline (10%) {baseline:.3f}")
    assert teacher > baseline + 0.1

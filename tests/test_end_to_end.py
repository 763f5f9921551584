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


def test_a_run_written_before_new_config_keys_still_resumes(tmp_path):
    """A run directory's config written by an earlier kdlens lacks the keys added
    since (at their defaults): the same config, so the run resumes; a changed
    value is still refused."""
    import yaml

    from kdlens.config import dump_config, parse_config
    from kdlens.train import train_roles

    raw = {"device": "cpu", "train": ["teacher"],
           "data": {"image_size": 32, "num_classes": 3, "train_size": 12, "test_size": 6},
           "model": {"arch": "vgg11", "width": 0.125}, "teacher": {"epochs": 1, "batch_size": 6}}
    config = parse_config(raw)
    out = tmp_path / "run"
    train_roles(config, out, progress=False)
    old = yaml.safe_load(dump_config(config, training_only=True))
    del old["model"]["options"], old["teacher"]["warmup_epochs"]  # keys this session added
    (out / "config.yaml").write_text(yaml.safe_dump(old))
    train_roles(config, out, progress=False)  # resumes: nothing left to train
    with pytest.raises(Exception, match="different config"):
        train_roles(parse_config({**raw, "teacher": {"epochs": 1, "batch_size": 6, "lr": 0.01}}), out, progress=False)

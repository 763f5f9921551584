"""Sharpness curve: the unperturbed loss, growth with noise, exact restoration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.data.base import Sample
from kdlens.models import NamedLayerModel
from kdlens.probes import sharpness_curve


def _dataset(n: int = 40, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, 2, 2, generator=g)
    labels = (images.flatten(1).sum(1) > 0).long()  # linearly separable
    mask = torch.ones(2, 2, dtype=torch.bool)
    return [Sample(images[i], int(labels[i]), mask) for i in range(n)]


def _model(fitted: bool = False) -> NamedLayerModel:
    torch.manual_seed(0)
    model = NamedLayerModel(
        [("conv", nn.Flatten()), ("fc1", nn.Linear(4, 2)), ("fc2", nn.ReLU()), ("fc3", nn.Linear(2, 2))]
    )
    if fitted:
        # Set by hand rather than trained (no backward passes in the tests):
        # s = sum of the pixels; logits (4 relu(-4s), 4 relu(4s)) fit the
        # label s > 0 with a small loss.
        with torch.no_grad():
            model.stages["fc1"].weight.copy_(torch.tensor([[-4.0] * 4, [4.0] * 4]))
            model.stages["fc1"].bias.zero_()
            model.stages["fc3"].weight.copy_(4 * torch.eye(2))
            model.stages["fc3"].bias.zero_()
    return model


def _plain_loss(model: nn.Module, data: list[Sample]) -> float:
    x = torch.stack([s.image for s in data])
    y = torch.tensor([s.label for s in data])
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x), y).item()


def test_sigma_zero_is_the_plain_loss():
    model, data = _model(), _dataset()
    (row,) = sharpness_curve(model, data, [0.0], batch_size=7)
    assert row == {"sigma": 0.0, "loss_mean": pytest.approx(_plain_loss(model, data), rel=1e-6), "loss_std": 0.0}


def test_max_samples_takes_the_first_samples():
    model, data = _model(), _dataset()
    (row,) = sharpness_curve(model, data, [0.0], max_samples=10)
    assert row["loss_mean"] == pytest.approx(_plain_loss(model, data[:10]), rel=1e-6)


def test_loss_grows_with_noise_on_a_fitted_model():
    model, data = _model(fitted=True), _dataset()
    curve = sharpness_curve(model, data, [0.0, 0.3, 1.0, 3.0], draws=4)
    means = [row["loss_mean"] for row in curve]
    assert means[0] < 0.3  # a fitted model
    assert means == sorted(means) and means[-1] > 2 * means[0]
    assert all(row["loss_std"] > 0 for row in curve[1:])


def test_weights_and_mode_restored_bit_exactly():
    model = _model(fitted=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sharpness_curve(model, _dataset(), [0.0, 0.5, 2.0], draws=2)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_restored_when_the_sweep_fails():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}

    def fail_on_second_pass(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")

    handle = model.register_forward_hook(fail_on_second_pass)
    with pytest.raises(RuntimeError, match="boom"):
        sharpness_curve(model, _dataset(), [0.0, 1.0])
    handle.remove()
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_same_seed_same_curve_other_seed_differs():
    model, data = _model(), _dataset()
    a = sharpness_curve(model, data, [0.5, 1.0], seed=3)
    b = sharpness_curve(model, data, [0.5, 1.0], seed=3)
    c = sharpness_curve(model, data, [0.5, 1.0], seed=4)
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigmas": []}, "sigmas is empty"),
        ({"sigmas": [0.1, -1.0]}, r"\[-1.0\]"),
        ({"sigmas": [float("nan")]}, "finite"),
        ({"sigmas": [0.1], "draws": 0}, "draws = 0"),
        ({"sigmas": [0.1], "max_samples": 0}, "max_samples = 0"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sharpness_curve(_model(), _dataset(), **kwargs)

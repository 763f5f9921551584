"""Active neurons: hand-built heads whose sensitive directions are known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.data.base import Sample
from kdlens.models import NamedLayerModel, build_model
from kdlens.probes import ActiveNeurons, active_neurons, count_active


def _dataset(n: int, shape: tuple[int, ...], classes: int, seed: int = 0) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, *shape, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    mask = torch.ones(shape[-2:], dtype=torch.bool)
    return [Sample(images[i], int(labels[i]), mask) for i in range(n)]


def _reads_two_features(classes: int = 3) -> NamedLayerModel:
    """fc2 outputs 6 features; the head's weights on features 2..5 are zero, so
    every loss gradient at fc2 lies in the span of features 0 and 1."""
    torch.manual_seed(0)
    head = nn.Linear(6, classes)
    with torch.no_grad():
        head.weight[:, 2:] = 0
    return NamedLayerModel(
        [("conv", nn.Flatten()), ("fc1", nn.Linear(6, 6)), ("fc2", nn.Tanh()), ("fc3", head)]
    )


DATA = _dataset(24, (1, 2, 3), classes=3)


def test_head_reading_two_features_has_two_active_neurons():
    result = active_neurons(_reads_two_features(), "fc2", DATA, energy=1.0, batch_size=5)
    assert isinstance(result, ActiveNeurons)
    assert (result.count, result.dimension, result.samples) == (2, 6, 24)
    assert result.eigenvalues.shape == (6,)
    assert result.eigenvalues[1] > 1e-6 and result.eigenvalues[2:].abs().max() < 1e-12


def test_two_classes_have_a_single_sensitive_direction():
    # With 2 classes the gradient is W^T (p - onehot), p - onehot in span{(1, -1)}:
    # rank 1 at fc2 whatever the features.
    model = _reads_two_features(classes=2)
    result = active_neurons(model, "fc2", _dataset(16, (1, 2, 3), classes=2), energy=1.0)
    assert result.count == 1


def test_eigenvalues_are_those_of_the_gradient_covariance():
    model = _reads_two_features().eval()
    x = torch.stack([s.image for s in DATA])
    y = torch.tensor([s.label for s in DATA])
    f = model.forward_to(x, "fc2").detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model.forward_from(f, "fc2"), y, reduction="sum"), f)
    g = g.double()
    expected = torch.linalg.eigvalsh(g.T @ g / len(DATA)).flip(0)
    result = active_neurons(model, "fc2", DATA)
    assert torch.allclose(result.eigenvalues, expected, atol=1e-10)


def test_energy_threshold():
    model = _reads_two_features()
    assert active_neurons(model, "fc2", DATA, energy=0.01).count == 1
    # Shares of the sum 10 held by the r largest: 0.4, 0.7, 0.9, 1.0 (order-free).
    spectrum = torch.tensor([2.0, 4.0, 1.0, 3.0])
    expected = {0.4: 1, 0.41: 2, 0.7: 2, 0.71: 3, 0.9: 3, 0.95: 4, 1.0: 4}
    assert {energy: count_active(spectrum, energy) for energy in expected} == expected
    assert count_active(torch.tensor([0.0, 0.0]), 0.9) == 0


def test_channels_restrict_the_dimension():
    model = _reads_two_features()
    read = active_neurons(model, "fc2", DATA, channels=torch.tensor([0, 3, 4]), energy=1.0)
    assert (read.count, read.dimension) == (1, 3)
    ignored = active_neurons(model, "fc2", DATA, channels=torch.tensor([3, 4, 5]), energy=1.0)
    assert (ignored.count, ignored.dimension) == (0, 3)


def test_channels_of_a_conv_map_on_a_real_model():
    model = build_model("vgg11", num_classes=4, image_size=32, width=0.125).train()
    data = _dataset(6, (3, 32, 32), classes=4)
    full = active_neurons(model, "conv", data, energy=1.0)
    half = active_neurons(model, "conv", data, channels=torch.arange(32), energy=1.0)
    assert full.dimension == 64 * 2 * 2 and half.dimension == 32 * 2 * 2
    assert 1 <= half.count <= 6 and 1 <= full.count <= 6  # rank <= n = 6
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("energy", [0, -0.1, 1.5, float("nan"), True])
def test_bad_energy(energy):
    with pytest.raises(ValueError, match="energy"):
        active_neurons(_reads_two_features(), "fc2", DATA, energy=energy)


def test_bad_layer_and_channels():
    with pytest.raises(KeyError, match="no layer 'fc9'"):
        active_neurons(_reads_two_features(), "fc9", DATA)
    with pytest.raises(ValueError, match=r"indices \[6\]"):
        active_neurons(_reads_two_features(), "fc2", DATA, channels=torch.tensor([0, 6]))

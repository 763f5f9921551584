"""LRP relevance maps: hand-worked values, gradient x input, channel splits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlens.models import NamedLayerModel, build_model
from kdlens.probes import relevance_maps


def _tiny() -> NamedLayerModel:
    """flatten -> Linear(4, 2) -> ReLU -> Linear(2, 2), weights set by hand."""
    fc1, fc3 = nn.Linear(4, 2), nn.Linear(2, 2)
    with torch.no_grad():
        fc1.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 2.0], [0.0, -1.0, 1.0, 0.0]]))
        fc1.bias.copy_(torch.tensor([0.5, 0.0]))
        fc3.weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 3.0]]))
        fc3.bias.copy_(torch.tensor([0.0, 0.25]))
    return NamedLayerModel([("conv", nn.Flatten()), ("fc1", fc1), ("fc2", nn.ReLU()), ("fc3", fc3)])


# x = (1, 2, -1, 0.5): z1 = (1.5, -3), a = (1.5, 0), logits = (3, -1.25).
X = torch.tensor([[[[1.0, 2.0], [-1.0, 0.5]]]])


def test_tiny_model_by_hand_equals_input_times_gradient():
    # Class 0 (predicted): d logit0 / dx = W1[0] * 2 = (2, 0, 2, 4), times x
    # = (2, 0, -2, 2). Epsilon-LRP by hand: R_a = (1.5 * 2 / 3 * 3, 0) = (3, 0),
    # R_x = x * W1[0] / 1.5 * 3 = (2, 0, -2, 2): the same. The sum is 2, not the
    # logit 3: fc1's bias absorbs 0.5 / 1.5 of the relevance.
    assert torch.allclose(relevance_maps(_tiny(), X), torch.tensor([[[2.0, 0.0], [-2.0, 2.0]]]), atol=1e-6)
    # Class 1: d logit1 / dx = -W1[0] = (-1, 0, -1, -2), times x = (-1, 0, 1, -1).
    expected = torch.tensor([[[-1.0, 0.0], [1.0, -1.0]]])
    assert torch.allclose(relevance_maps(_tiny(), X, targets=1), expected, atol=1e-6)
    assert torch.allclose(relevance_maps(_tiny(), X, targets=[1]), expected, atol=1e-6)


def test_tiny_model_with_a_large_epsilon_by_hand():
    # eps = 1, class 0: top 1 / (3 + 1) = 0.25 -> W3[0] * 0.25 * a = (0.75, 0)
    # -> / (z1 + eps * sign z1) = (0.75 / 2.5, 0 / -4) = (0.3, 0) -> W1[0] * 0.3
    # * x = (0.3, 0, -0.3, 0.3), scaled by the logit 3: (0.9, 0, -0.9, 0.9).
    expected = torch.tensor([[[0.9, 0.0], [-0.9, 0.9]]])
    assert torch.allclose(relevance_maps(_tiny(), X, epsilon=1.0), expected, atol=1e-6)


def test_tiny_model_channel_restriction():
    full = relevance_maps(_tiny(), X)
    # Only hidden unit 0 is active, so all relevance flows through it.
    for layer in ("fc1", "fc2"):
        assert torch.allclose(relevance_maps(_tiny(), X, layer=layer, channels=torch.tensor([0])), full, atol=1e-6)
        assert relevance_maps(_tiny(), X, layer=layer, channels=torch.tensor([1])).abs().max() < 1e-6


def _model(arch: str) -> NamedLayerModel:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=4, image_size=32, width=0.125)
    with torch.no_grad():  # non-trivial BatchNorm statistics and a head that is not ~0
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module", params=["vgg11", "resnet18"])
def arch(request) -> str:
    return request.param


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _input_times_gradient(model: nn.Module, images: torch.Tensor, layer=None, keep=None) -> torch.Tensor:
    """Gradient x input of the predicted logit, the gradient optionally masked
    to ``keep`` channels at ``layer``'s output (what LRP-0 must equal)."""
    model = model.eval()
    x = images.clone().requires_grad_(True)
    handle = None
    if layer is not None:
        mask = torch.zeros(model.forward_to(images, layer).shape[1])
        mask[keep] = 1

        def mask_gradient(_module, _args, out):
            out.register_hook(lambda g: g * mask.view(1, -1, 1, 1))  # returns None: output kept

        handle = model.stages[layer].register_forward_hook(mask_gradient)
    logits = model(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    if handle is not None:
        handle.remove()
    return (x.grad * images).sum(1)


def test_shape_and_equals_input_times_gradient(arch):
    # LRP-epsilon with a negligible epsilon on a ReLU network is gradient x
    # input; a relevance leak at the residual sum or at BatchNorm would break it.
    model = _model(arch)
    maps = relevance_maps(model, IMAGES)
    assert maps.shape == (2, 32, 32)
    assert torch.allclose(maps, _input_times_gradient(model, IMAGES), atol=1e-4, rtol=1e-3)


def test_channel_split_conserves_relevance(arch):
    model = _model(arch)
    channels = model.forward_to(IMAGES, "conv").shape[1]
    first = torch.randperm(channels, generator=torch.Generator().manual_seed(2))[: channels // 2]
    second = torch.tensor(sorted(set(range(channels)) - set(first.tolist())))
    full = relevance_maps(model, IMAGES)
    part_a = relevance_maps(model, IMAGES, layer="conv", channels=first)
    part_b = relevance_maps(model, IMAGES, layer="conv", channels=second)
    assert part_a.abs().max() > 1e-3 and part_b.abs().max() > 1e-3
    assert torch.allclose(part_a + part_b, full, atol=1e-5, rtol=1e-4)
    expected = _input_times_gradient(model, IMAGES, layer="conv", keep=first)
    assert torch.allclose(part_a, expected, atol=1e-4, rtol=1e-3)


def test_gamma_rule_changes_the_map_and_keeps_the_split_additive():
    model = _model("vgg11")
    plain = relevance_maps(model, IMAGES)
    full = relevance_maps(model, IMAGES, gamma=0.25)
    assert not torch.allclose(full, plain, atol=1e-3)
    first, second = torch.arange(0, 64, 2), torch.arange(1, 64, 2)
    parts = [relevance_maps(model, IMAGES, gamma=0.25, layer="conv", channels=c) for c in (first, second)]
    assert torch.allclose(parts[0] + parts[1], full, atol=1e-5, rtol=1e-4)


def test_the_callers_model_is_untouched():
    model = _model("resnet18").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        output = model.eval()(IMAGES)
    model.train()
    relevance_maps(model, IMAGES, layer="conv", channels=torch.tensor([0, 1]))
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "rule") for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.eval()(IMAGES), output)


class _Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(x) * 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layer": "conv"}, ValueError, "expected both or neither"),
        ({"channels": torch.tensor([0])}, ValueError, "expected both or neither"),
        ({"layer": "fc1", "channels": torch.tensor([2])}, ValueError, r"indices \[2\]"),
        ({"layer": "fc9", "channels": torch.tensor([0])}, KeyError, "no layer 'fc9'"),
        ({"targets": 2}, ValueError, "outside the 2 classes"),
        ({"targets": [0, 1]}, ValueError, r"expected one class per image, \(1,\)"),
        ({"epsilon": 0.0}, ValueError, "epsilon = 0.0"),
    ],
)
def test_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        relevance_maps(_tiny(), X, **kwargs)


def test_unknown_module_is_refused():
    model = NamedLayerModel([("conv", nn.Flatten()), ("fc1", _Unknown()), ("fc2", nn.ReLU()), ("fc3", nn.Linear(4, 2))])
    with pytest.raises(TypeError, match="cannot propagate through _Unknown"):
        relevance_maps(model, X)
    with pytest.raises(ValueError, match=r"expected a float tensor \(B, C, H, W\)"):
        relevance_maps(model, X[0])

"""The model zoo: the four named layers, their shapes, and the forward helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlens.models import MODELS, PAPER_LAYERS, build_model, capture, input_kind, stage_end_modules

# the image models with the paper's four layers; the CIFAR benchmark networks (conv, fc1, fc3)
# are tested in test_cifar_models.py
ALL = [arch for arch in MODELS.names()
       if input_kind(arch) == "image" and not MODELS.get(arch).__module__.startswith("kdlens.models.cifar_")]
B, CLASSES = 2, 10

# Expected (conv, hidden) shapes worked out by hand from the definitions.
# 32x32, width 0.25: VGG 32 -> 4 max-pools in conv -> 2x2, 512*0.25 = 128
# channels, hidden 4096*0.25 = 1024; small AlexNet 32 -> 2 pools -> 8x8,
# 256*0.25 = 64; CIFAR ResNet 32 -> layer2..4 stride 2 -> 4x4, 512*0.25 = 128,
# head hidden 512*0.25 = 128.
SMALL = {
    "alexnet": ((B, 64, 8, 8), 1024),
    "vgg11": ((B, 128, 2, 2), 1024),
    "vgg16": ((B, 128, 2, 2), 1024),
    "vgg19": ((B, 128, 2, 2), 1024),
    "resnet18": ((B, 128, 4, 4), 128),
    "resnet34": ((B, 128, 4, 4), 128),
}
# 224x224, width 0.125: AlexNet 224 -> conv1 55 -> pool 27 -> pool 13,
# 256/8 = 32; VGG 224 / 2**4 = 14, 512/8 = 64; ResNet stem /4 = 56, then
# /8 = 7, 512/8 = 64, head hidden 64.
LARGE = {
    "alexnet": ((B, 32, 13, 13), 512),
    "vgg11": ((B, 64, 14, 14), 512),
    "vgg16": ((B, 64, 14, 14), 512),
    "vgg19": ((B, 64, 14, 14), 512),
    "resnet18": ((B, 64, 7, 7), 64),
    "resnet34": ((B, 64, 7, 7), 64),
}
# Spatial side of each stage end at 32x32.
STAGE_SIDES = {
    "alexnet": [32, 16, 8],
    "vgg11": [32, 16, 8, 4, 2],
    "vgg16": [32, 16, 8, 4, 2],
    "vgg19": [32, 16, 8, 4, 2],
    "resnet18": [32, 16, 8, 4],
    "resnet34": [32, 16, 8, 4],
}


# Side of fc1's adaptive pool: the family's side at 224 (VGG 7, AlexNet 6,
# ResNet global 1) times image_size / 224, rounded, clamped to [1, side at 224].
POOL_SIDES = {
    "alexnet": {16: 1, 64: 2, 95: 3, 96: 3, 128: 3, 224: 6},
    "vgg": {16: 1, 64: 2, 95: 3, 96: 3, 128: 4, 224: 7},
    "resnet": {16: 1, 64: 1, 95: 1, 96: 1, 128: 1, 224: 1},
}


def test_every_model_has_expectations():
    assert set(ALL) == set(SMALL) == set(LARGE) == set(STAGE_SIDES)
    assert all(arch.rstrip("0123456789") in POOL_SIDES for arch in ALL)


def _model(arch: str, size: int = 32, width: float = 0.25, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(arch, num_classes=CLASSES, image_size=size, width=width, **kw).eval()


@pytest.mark.parametrize("size,width,expected", [(32, 0.25, SMALL), (224, 0.125, LARGE)])
@pytest.mark.parametrize("arch", ALL)
def test_named_layers_and_forward_helpers(arch, size, width, expected):
    model = _model(arch, size, width)
    assert model.layer_names == PAPER_LAYERS
    x = torch.randn(B, 3, size, size)
    conv_shape, hidden = expected[arch]
    with torch.no_grad():
        feats = model.features(x, PAPER_LAYERS)
        assert {k: tuple(v.shape) for k, v in feats.items()} == {
            "conv": conv_shape,
            "fc1": (B, hidden),
            "fc2": (B, hidden),
            "fc3": (B, CLASSES),
        }
        assert torch.equal(model.forward_to(x, "fc1"), feats["fc1"])
        logits = model(x)
        assert logits.shape == (B, CLASSES)
        assert torch.equal(logits, feats["fc3"])
        for layer in PAPER_LAYERS:
            rebuilt = model.forward_from(model.forward_to(x, layer), layer)
            torch.testing.assert_close(rebuilt, logits, rtol=0, atol=0)
    # fc1 and fc2 are post-ReLU features
    assert (feats["fc1"] >= 0).all() and (feats["fc2"] >= 0).all()


@pytest.mark.parametrize("arch", ALL)
def test_forward_to_stops_at_the_layer(arch):
    model = _model(arch)
    calls = {name: 0 for name in PAPER_LAYERS}
    for name in PAPER_LAYERS:
        model.stages[name].register_forward_pre_hook(
            lambda _m, _a, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    with torch.no_grad():
        model.forward_to(torch.randn(B, 3, 32, 32), "fc1")
    assert calls == {"conv": 1, "fc1": 1, "fc2": 0, "fc3": 0}


@pytest.mark.parametrize("arch", ALL)
def test_seeded_init_is_reproducible(arch):
    a, b, c = _model(arch, seed=1), _model(arch, seed=1), _model(arch, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("arch", ALL)
def test_capture_matches_stage_output_and_cleans_up(arch):
    model = _model(arch)
    x = torch.randn(B, 3, 32, 32)
    with torch.no_grad():
        got = capture(model, x, ["stages.conv", "stages.fc2"])
        assert torch.equal(got["stages.conv"], model.forward_to(x, "conv"))
        assert torch.equal(got["stages.fc2"], model.forward_to(x, "fc2"))
        assert all(not m._forward_hooks for m in model.modules())
        with pytest.raises(RuntimeError):
            capture(model, torch.randn(B, 5, 32, 32), ["stages.conv", "stages.fc1"])
    assert all(not m._forward_hooks for m in model.modules())
    hint = r"'stages\.nope' \(valid prefix 'stages'; below it: stages\.conv, "
    with pytest.raises(KeyError, match=hint):
        capture(model, x, ["stages.conv", "stages.nope"])
    with pytest.raises(KeyError, match=r"'conv' \(did you mean 'stages\.conv'\?\)"):
        capture(model, x, ["conv"])
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ALL)
def test_stage_ends(arch):
    model = _model(arch)
    ends = stage_end_modules(model)
    assert ends == model.stage_ends and ends is not model.stage_ends
    modules = dict(model.named_modules())
    assert all(name.startswith("stages.conv") for name in ends)
    assert all(isinstance(modules[name], (nn.ReLU, nn.Sequential)) for name in ends)
    with torch.no_grad():
        got = capture(model, torch.randn(B, 3, 32, 32), ends)
    assert [got[name].shape[-1] for name in ends] == STAGE_SIDES[arch]
    # the last stage end of VGG/AlexNet is the top conv's ReLU: the conv output
    if not arch.startswith("resnet"):
        assert ends[-1] == f"stages.conv.{len(model.stages['conv']) - 1}"


@pytest.mark.parametrize("size", [16, 64, 95, 96, 128])
@pytest.mark.parametrize("arch", ALL)
def test_other_input_sizes(arch, size):
    # The small/ImageNet switch is at 96; both sides of it, the 16x16 floor and
    # a size between 96 and 224 must run and pool as the rule says.
    model = _model(arch, size, width=0.125)
    side = POOL_SIDES[arch.rstrip("0123456789")][size]
    pool = next(m for m in model.stages["fc1"] if isinstance(m, nn.AdaptiveAvgPool2d))
    assert pool.output_size == side
    with torch.no_grad():
        feats = model.features(torch.randn(1, 3, size, size), PAPER_LAYERS)
    assert feats["fc3"].shape == (1, CLASSES)


def test_vgg_batch_norm_option():
    with_bn = build_model("vgg11", CLASSES, 32, width=0.25)
    without = build_model("vgg11", CLASSES, 32, width=0.25, batch_norm=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())
    with pytest.raises(TypeError, match="batchnorm"):
        build_model("resnet18", CLASSES, 32, batchnorm=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"arch": "vgg17"}, r"'vgg17'.*alexnet, .*resnet18"),
        ({"width": 0}, "width must be > 0, got 0"),
        ({"width": -0.5}, "width must be > 0"),
        ({"image_size": 8}, "image_size must be >= 16, got 8"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
    ],
)
def test_build_model_errors(kwargs, match):
    args = {"arch": "vgg11", "num_classes": CLASSES, "image_size": 32} | kwargs
    with pytest.raises(ValueError, match=match):
        build_model(**args)


@pytest.mark.parametrize("arch", ALL)
def test_model_learns(arch):
    # No dropout so the loss is a deterministic function of the weights; the
    # N(0, 0.01) FC init starts slowly, hence 20 steps at a high learning rate.
    model = _model(arch, width=0.125, dropout=0.0).train()
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % CLASSES
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_stage_aliases_name_the_stage_ends(arch):
    model = _model(arch).eval()
    x = torch.randn(B, 3, 32, 32)
    ends = stage_end_modules(model)
    assert model.stage_names == tuple(f"stage{k}" for k in range(1, len(ends) + 1))
    with torch.no_grad():
        expected = capture(model, x, ends)
        got = model.features(x, ["stage2", "conv", f"stage{len(ends)}"])
        logits, both = model.forward_with_features(x, ["stage1", "fc1"])
    assert list(got) == ["stage2", "conv", f"stage{len(ends)}"]
    assert torch.equal(got["stage2"], expected[ends[1]])
    assert torch.equal(got[f"stage{len(ends)}"], expected[ends[-1]])
    assert torch.equal(both["stage1"], expected[ends[0]])
    assert torch.equal(logits, model(x))
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(KeyError, match=rf"no stage 'stage{len(ends) + 1}'; expected stage1 \.\. stage{len(ends)}"):
        model.features(x, [f"stage{len(ends) + 1}"])

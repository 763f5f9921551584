"""RepDistiller's CIFAR networks (resnet20 .. resnet32x4, wrn_*, vgg8/13,
mobilenetv2): their sizes, named layers, stage ends and initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlens.errors import UnknownNameError, UsageError
from kdlens.models import build_model, capture, pre_activation_norm

B, CLASSES = 2, 10
CIFAR = ["resnet20", "resnet32", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
         "wrn_16_2", "wrn_40_2", "wrn_16_4", "wrn_40_4", "vgg8", "vgg13", "mobilenetv2"]  # fmt: skip

# Parameters at width 1 with 100 classes, counted layer by layer from
# RepDistiller's models/*.py (wrn_16_4, wrn_40_4: its WideResNet(depth, widen_factor=4)).
#
# resnet56, n = 9 BasicBlocks a group, channels 16-16-32-64; a 3x3 conv has
# in*out*9 weights, a BN 2*out, the 1x1 projection in*out + 2*out:
#   stem     3*16*9 + 32                                            =     464
#   layer1   9 * (2 * (16*16*9 + 32))  = 9 * 4672                   =  42 048
#   layer2   16*32*9 + 64 + 32*32*9 + 64 + 16*32 + 64  = 14 528
#            + 8 * (2 * (32*32*9 + 64)) = 8 * 18 560 = 148 480      = 163 008
#   layer3   32*64*9 + 128 + 64*64*9 + 128 + 32*64 + 128 = 57 728
#            + 8 * (2 * (64*64*9 + 128)) = 8 * 73 984 = 591 872     = 649 600
#   fc       64*100 + 100                                            =   6 500
#   total                                                              861 620
#
# wrn_40_2, n = 6 pre-activation blocks a group, channels 16 | 32, 64, 128; a
# block is BN(in) + 3x3 conv in->out + BN(out) + 3x3 conv out->out (+ a 1x1
# conv in*out, no BN, where in != out):
#   conv1    3*16*9                                                  =       432
#   block1   32 + 16*32*9 + 64 + 32*32*9 + 16*32 = 14 432
#            + 5 * (64 + 9216 + 64 + 9216) = 5 * 18 560 = 92 800      =   107 232
#   block2   64 + 32*64*9 + 128 + 64*64*9 + 32*64 = 57 536
#            + 5 * (128 + 36 864 + 128 + 36 864) = 369 920            =   427 456
#   block3   128 + 64*128*9 + 256 + 128*128*9 + 64*128 = 229 760
#            + 5 * (256 + 147 456 + 256 + 147 456) = 1 477 120        = 1 706 880
#   bn + fc  2*128 + 128*100 + 100                                    =    13 156
#   total                                                              2 255 156
#
# vgg8 (configuration "S"): one 3x3 conv with bias + BN a block, 64, 128,
# 256, 512, 512 channels: (3*64*9 + 64 + 128) + (64*128*9 + 128 + 256)
# + (128*256*9 + 256 + 512) + (256*512*9 + 512 + 1024) + (512*512*9 + 512 + 1024)
# = 1920 + 74 112 + 295 680 + 1 181 184 + 2 360 832 = 3 913 728, + fc 51 300 = 3 965 028.
PARAMETERS_100 = {
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_2": 703_284,
    "wrn_40_2": 2_255_156,
    "wrn_16_4": 2_772_020,
    "wrn_40_4": 8_972_340,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "mobilenetv2": 812_836,
}

# Width 0.25 at 32x32 (channels = max(4, round(c / 4))): conv output, and the
# stage ends (RepDistiller's feat[1..K]).
# ResNets 16-16-32-64 -> 4-4-8-16, at 32, 16, 8; x4 32-64-128-256 -> 8-16-32-64.
# WRN-d-k 16k, 32k, 64k / 4: stage i is the ReLU(BN) of group i's output.
# VGG 64, 128, 256, 512, 512 / 4 = 16, 32, 64, 128, 128; pools after blocks
# 0, 1, 2: block1 at 16, block2 at 8, blocks 3 and 4 at 4.
# MobileNetV2 (half): stem 16 -> 4 at 16x16 (stride 2); groups int(c/2) =
# 8, 12, 16, 32, 48, 80, 160 -> 4, 4, 4, 8, 12, 20, 40 at 16, 16, 8, 4, 4, 2, 2;
# the stage ends are groups 1, 2, 4, 6; head 1280 / 4 = 320.
RESNET_STAGES = [(4, 32), (8, 16), (16, 8)]
SMALL = {
    "resnet20": ((16, 8), RESNET_STAGES),
    "resnet32": ((16, 8), RESNET_STAGES),
    "resnet56": ((16, 8), RESNET_STAGES),
    "resnet110": ((16, 8), RESNET_STAGES),
    "resnet8x4": ((64, 8), [(16, 32), (32, 16), (64, 8)]),
    "resnet32x4": ((64, 8), [(16, 32), (32, 16), (64, 8)]),
    "wrn_16_2": ((32, 8), [(8, 32), (16, 16), (32, 8)]),
    "wrn_40_2": ((32, 8), [(8, 32), (16, 16), (32, 8)]),
    "wrn_16_4": ((64, 8), [(16, 32), (32, 16), (64, 8)]),
    "wrn_40_4": ((64, 8), [(16, 32), (32, 16), (64, 8)]),
    "vgg8": ((128, 4), [(32, 16), (64, 8), (128, 4), (128, 4)]),
    "vgg13": ((128, 4), [(32, 16), (64, 8), (128, 4), (128, 4)]),
    "mobilenetv2": ((320, 2), [(4, 16), (4, 8), (12, 4), (40, 2)]),
}


def _model(arch: str, width: float = 0.25, size: int = 32, classes: int = CLASSES, **kw) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, num_classes=classes, image_size=size, width=width, **kw).eval()


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def published() -> dict[str, nn.Module]:
    """Every network at width 1, 100 classes, built once."""
    return {arch: _model(arch, width=1.0, classes=100) for arch in CIFAR}


def test_every_network_has_expectations():
    assert set(CIFAR) == set(PARAMETERS_100) == set(SMALL)


@pytest.mark.parametrize("arch", CIFAR)
def test_parameter_counts_are_repdistillers(published, arch):
    assert _count(published[arch]) == PARAMETERS_100[arch]


@pytest.mark.parametrize("arch", CIFAR)
def test_named_layers_shapes_and_forward_helpers(arch):
    model = _model(arch)
    assert model.layer_names == ("conv", "fc1", "fc3")
    (channels, side), stages = SMALL[arch]
    assert len(model.stage_names) == len(stages)
    x = torch.randn(B, 3, 32, 32)
    layers = ["conv", "conv.pre", "fc1", "fc3", *model.stage_names]
    with torch.no_grad():
        feats = model.features(x, layers)
        logits = model(x)
        from_fc1 = model.forward_from(feats["fc1"], "fc1")
    shapes = {name: tuple(value.shape) for name, value in feats.items()}
    assert shapes == {
        "conv": (B, channels, side, side),
        "conv.pre": (B, channels, side, side),
        "fc1": (B, channels),
        "fc3": (B, CLASSES),
        **{f"stage{k}": (B, c, s, s) for k, (c, s) in enumerate(stages, start=1)},
    }
    assert torch.equal(feats["conv.pre"].relu(), feats["conv"])
    assert (feats["conv.pre"] < 0).any()  # a real pre-activation, not the ReLU's output
    assert torch.allclose(feats["fc1"], feats["conv"].mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(from_fc1, logits, atol=1e-6) and torch.allclose(feats["fc3"], logits, atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet20", "wrn_16_2", "vgg8"])
def test_last_stage_end_is_conv_also_when_conv_pre_is_asked(arch):
    # "conv.pre" runs the conv stage child by child; the hook on the last
    # stage end must still fire. For these the last stage end is conv itself.
    model = _model(arch)
    last = model.stage_names[-1]
    with torch.no_grad():
        feats = model.features(torch.randn(B, 3, 32, 32), ["conv.pre", last, "conv"])
    assert torch.equal(feats[last], feats["conv"])
    assert (feats[last] >= 0).all()


def test_resnet_pre_activation_is_the_last_blocks_sum():
    # resnet20 has 3 blocks a group. Make layer3's last residual branch the
    # constant -1 (bn2: weight 0, bias -1): its sum is then the identity
    # shortcut minus 1, i.e. conv.pre = (output of block layer3.1) - 1 and
    # conv = ReLU(that).
    model = _model("resnet20")
    last = model.stages["conv"].layer3[2]
    with torch.no_grad():
        last.bn2.weight.zero_()
        last.bn2.bias.fill_(-1.0)
        x = torch.randn(B, 3, 32, 32)
        before = capture(model, x, ["stages.conv.layer3.1"])["stages.conv.layer3.1"]
        feats = model.features(x, ["conv.pre", "conv"])
    assert torch.allclose(feats["conv.pre"], before - 1.0)
    assert torch.allclose(feats["conv"], (before - 1.0).clamp_min(0))


def test_no_fc2():
    model = _model("resnet8x4")
    with pytest.raises(UnknownNameError, match=r"no layer 'fc2'; expected one of conv, fc1, fc3$"):
        model.check_layer("fc2")
    with pytest.raises(UnknownNameError, match="fc2"):
        model.features(torch.randn(1, 3, 32, 32), ["fc2"])
    with pytest.raises(KeyError, match="stage1 .. stage3"):
        model.stage_end("stage4")


@pytest.mark.parametrize("arch,norm", [("resnet20", False), ("wrn_16_2", True), ("vgg8", True), ("mobilenetv2", True)])
def test_batch_norm_before_the_final_relu(arch, norm):
    # ResNets end in a residual sum (the overhaul method then measures its
    # statistics); the others end in BN + ReLU.
    found = pre_activation_norm(_model(arch).stages["conv"])
    assert isinstance(found, nn.BatchNorm2d) if norm else found is None


def test_width_scales_every_channel_count():
    # resnet8x4 at width 0.25, 10 classes: channels 8-16-32-64, one block a group.
    #   stem   3*8*9 + 16                                   =    232
    #   layer1 8*16*9 + 32 + 16*16*9 + 32 + 8*16 + 32      =  3 680
    #   layer2 16*32*9 + 64 + 32*32*9 + 64 + 16*32 + 64    = 14 528
    #   layer3 32*64*9 + 128 + 64*64*9 + 128 + 32*64 + 128 = 57 728
    #   fc     64*10 + 10                                   =    650
    #   total                                                 76 818
    assert _count(_model("resnet8x4", width=0.25)) == 76_818
    # The floor of 4 channels keeps a tiny width working (WRN's stride-2 block
    # then has in == out and still gets a projection shortcut).
    for arch in ("wrn_16_2", "mobilenetv2", "resnet20"):
        tiny = _model(arch, width=0.01)
        with torch.no_grad():
            assert tiny(torch.randn(1, 3, 32, 32)).shape == (1, CLASSES)


def test_other_input_sizes():
    # 16x16: ResNet 16 -> 16, 8, 4; MobileNetV2 /16 -> 1x1.
    with torch.no_grad():
        assert _model("resnet20", size=16).features(torch.randn(1, 3, 16, 16), ["conv"])["conv"].shape == (1, 16, 4, 4)
        assert _model("mobilenetv2", size=16).forward_to(torch.randn(1, 3, 16, 16), "conv").shape == (1, 320, 1, 1)
        # 64x64: VGG pools after block 3 too (RepDistiller's h == 64 case):
        # 64 -> 32, 16, 8 (block 3), 4 (block 4).
        vgg = _model("vgg8", size=64)
        feats = vgg.features(torch.randn(1, 3, 64, 64), ["stage3", "stage4", "fc3"])
    assert feats["stage3"].shape == (1, 128, 8, 8) and feats["stage4"].shape == (1, 128, 4, 4)
    assert feats["fc3"].shape == (1, CLASSES)


def test_initialisation_is_repdistillers(published):
    # Convs N(0, 2 / (k*k*out)): resnet56's layer3 3x3 convs (out 64) have
    # std sqrt(2 / 576) = 0.0589. The ResNet head keeps PyTorch's default,
    # U(-1/sqrt(64), 1/sqrt(64)): std 0.125 / sqrt(3) = 0.0722 and a nonzero
    # bias; WRN's the same with bias 0 (wrn_40_2: 1/sqrt(128), std 0.0510);
    # VGG's and MobileNetV2's head is N(0, 0.01) with bias 0. BN: 1 and 0.
    resnet = published["resnet56"]
    weights = torch.cat([m.weight.flatten() for m in resnet.stages["conv"].layer3.modules()
                         if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)])  # fmt: skip
    assert weights.std().item() == pytest.approx(math.sqrt(2 / 576), rel=0.02)
    head = resnet.stages["fc3"]
    assert head.weight.abs().max().item() <= 0.125
    assert head.weight.std().item() == pytest.approx(0.125 / math.sqrt(3), rel=0.05)
    assert head.bias.abs().max().item() > 0
    wrn_head = published["wrn_40_2"].stages["fc3"]
    assert wrn_head.weight.std().item() == pytest.approx(1 / math.sqrt(128) / math.sqrt(3), rel=0.05)
    assert torch.equal(wrn_head.bias, torch.zeros(100))
    for arch in ("vgg13", "mobilenetv2"):
        vgg_head = published[arch].stages["fc3"]
        assert vgg_head.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert torch.equal(vgg_head.bias, torch.zeros(100))
    bn = published["wrn_40_2"].stages["conv"].bn
    assert torch.equal(bn.weight, torch.ones(128)) and torch.equal(bn.bias, torch.zeros(128))


def test_linear_init_pytorch_redraws_the_head():
    from kdlens.builders import build_network
    from kdlens.config import parse_config

    for init, std in (("normal", 0.01), ("pytorch", 1 / math.sqrt(512) / math.sqrt(3))):
        config = parse_config({"device": "cpu", "data": {"image_size": 32, "num_classes": 100},
                               "model": {"arch": "vgg8", "linear_init": init}})
        head = build_network(config.model, config, 100, "teacher").stages["fc3"]
        assert head.weight.std().item() == pytest.approx(std, rel=0.05)


def test_bad_options_are_one_line_errors():
    with pytest.raises(TypeError, match=r"^resnet20 got unexpected option\(s\): batchnorm$"):
        build_model("resnet20", CLASSES, 32, batchnorm=False)
    with pytest.raises(TypeError, match=r"^mobilenetv2 got unexpected option\(s\): width_mult$"):
        build_model("mobilenetv2", CLASSES, 32, width_mult=0.5)
    with pytest.raises(UsageError, match=r"^wrn_16_2 drop_rate = 1.5: expected a number in \[0, 1\)$"):
        build_model("wrn_16_2", CLASSES, 32, drop_rate=1.5)
    # dropout is accepted and unused; WRN's own drop_rate reaches its blocks
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in _model("vgg8", dropout=0.5).modules())
    rates = {m.p for m in _model("wrn_16_2", drop_rate=0.3).modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.3}

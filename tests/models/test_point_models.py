"""The point-cloud classifiers: PointNet, PointNet++ and DGCNN as NamedLayerModels.

Tiny on purpose: width 0.125, 64 points, 3 clouds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdlens.models import PAPER_LAYERS, build_model, capture, input_kind
from kdlens.models.dgcnn import knn_indices

POINT_MODELS = ["pointnet", "pointnet2", "dgcnn"]
B, N, CLASSES, WIDTH = 3, 64, 5, 0.125
# Width 0.125: PointNet's global feature is 1024/8 = 128; DGCNN's is max and
# mean of 1024/8 = 128 channels, 256; the head is 512/8 = 64, 256/8 = 32.
CONV_WIDTH = {"pointnet": 128, "pointnet2": 128, "dgcnn": 256}
HIDDEN = (64, 32)
# Per-point channels at the stage ends: PointNet's two shared MLPs (64, 128),
# DGCNN's four EdgeConvs (64, 64, 128, 256), all divided by 8.
STAGE_CHANNELS = {"pointnet": [8, 16], "pointnet2": [16, 32], "dgcnn": [8, 8, 16, 32]}
# ... on how many points: PointNet++'s SAs keep a half, then a quarter of that.
STAGE_POINTS = {"pointnet": [N, N], "pointnet2": [N // 2, N // 8], "dgcnn": [N] * 4}


def _model(arch: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes=CLASSES, image_size=None, width=WIDTH, **kw).eval()


def _clouds(batch: int = B, points: int = N, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


def test_input_kind():
    assert input_kind("pointnet") == input_kind("dgcnn") == "points"
    assert input_kind("vgg11") == "image"


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_named_layers_shapes_and_forward_helpers(arch):
    model = _model(arch)
    assert model.layer_names == PAPER_LAYERS
    x = _clouds()
    with torch.no_grad():
        feats = model.features(x, PAPER_LAYERS)
        assert {k: tuple(v.shape) for k, v in feats.items()} == {
            "conv": (B, CONV_WIDTH[arch]),
            "fc1": (B, HIDDEN[0]),
            "fc2": (B, HIDDEN[1]),
            "fc3": (B, CLASSES),
        }
        logits = model(x)
        assert logits.shape == (B, CLASSES)
        assert torch.equal(logits, feats["fc3"])
        for layer in PAPER_LAYERS:
            rebuilt = model.forward_from(model.forward_to(x, layer), layer)
            torch.testing.assert_close(rebuilt, logits, rtol=0, atol=0)
    assert (feats["fc1"] >= 0).all() and (feats["fc2"] >= 0).all()


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_outputs_do_not_depend_on_the_order_of_the_points(arch):
    model = _model(arch)
    x = _clouds()
    generator = torch.Generator().manual_seed(2)
    shuffled = torch.stack([cloud[torch.randperm(N, generator=generator)] for cloud in x])
    assert not torch.equal(shuffled, x)
    with torch.no_grad():
        for layer in ("conv", "fc1", "fc3"):
            torch.testing.assert_close(model.forward_to(shuffled, layer), model.forward_to(x, layer),
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_forward_to_stops_at_the_layer(arch):
    model = _model(arch)
    calls = {name: 0 for name in PAPER_LAYERS}
    for name in PAPER_LAYERS:
        model.stages[name].register_forward_pre_hook(
            lambda _m, _a, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    with torch.no_grad():
        model.forward_to(_clouds(), "fc1")
    assert calls == {"conv": 1, "fc1": 1, "fc2": 0, "fc3": 0}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("arch", POINT_MODELS)
def test_gradients_reach_the_coordinates(arch, mode):
    # Knowledge points perturb xyz and need d feature / d xyz.
    model = _model(arch).train(mode == "train")
    x = _clouds().requires_grad_(True)
    model.forward_to(x, "conv").pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs().sum(dim=(1, 2)) > 0).all()  # every cloud gets a gradient


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_stage_ends_are_per_point_features(arch):
    model = _model(arch)
    assert len(model.stage_names) == len(STAGE_CHANNELS[arch])
    with torch.no_grad():
        got = capture(model, _clouds(), model.stage_ends)
    assert [tuple(got[name].shape) for name in model.stage_ends] == [
        (B, c, n) for c, n in zip(STAGE_CHANNELS[arch], STAGE_POINTS[arch])]


def test_pointnet_conv_pre_is_the_pooled_pre_activation():
    # The ReLU after the max pool gives the same "conv" as pooling ReLU
    # outputs, and leaves a pre-activation feature.
    model = _model("pointnet")
    x = _clouds()
    with torch.no_grad():
        feats = model.features(x, ["conv.pre", "conv"])
        per_point = capture(model, x, ["stages.conv.lift"])["stages.conv.lift"]
    assert torch.equal(feats["conv"], torch.relu(feats["conv.pre"]))
    assert torch.equal(feats["conv"], torch.relu(per_point).amax(dim=2))


def test_dgcnn_has_no_conv_pre_but_fc_pre():
    model = _model("dgcnn")
    with torch.no_grad():
        assert model.features(_clouds(), ["fc1.pre"])["fc1.pre"].shape == (B, HIDDEN[0])
        with pytest.raises(ValueError, match="does not end in a ReLU"):
            model.features(_clouds(), ["conv.pre"])


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_build_model_for_points(arch):
    model = build_model(arch, num_classes=CLASSES, image_size=None, width=WIDTH)
    assert sum(p.numel() for p in model.parameters()) > 0
    build_model(arch, num_classes=CLASSES, image_size=32, width=WIDTH)  # a config's image_size is ignored
    build_model(arch, num_classes=CLASSES, width=WIDTH)
    with pytest.raises(TypeError, match="unexpected option.*batch_norm"):
        build_model(arch, num_classes=CLASSES, width=WIDTH, batch_norm=True)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model(arch, num_classes=1, width=WIDTH)


def test_build_model_options_and_errors():
    with pytest.raises(ValueError, match="'vgg11' takes images: image_size is required"):
        build_model("vgg11", num_classes=CLASSES, image_size=None)
    with pytest.raises(TypeError, match="feature_transform"):
        build_model("dgcnn", num_classes=CLASSES, width=WIDTH, feature_transform=False)
    with pytest.raises(TypeError, match=r"\bk\b"):
        build_model("pointnet", num_classes=CLASSES, width=WIDTH, k=10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="option k"):
            build_model("dgcnn", num_classes=CLASSES, width=WIDTH, k=bad)
    with pytest.raises(ValueError, match="feature_transform"):
        build_model("pointnet", num_classes=CLASSES, width=WIDTH, feature_transform="no")
    assert build_model("dgcnn", num_classes=CLASSES, width=WIDTH, k=7).stages["conv"].trunk.edges[0].k == 7
    light = build_model("pointnet", num_classes=CLASSES, width=WIDTH, feature_transform=False)
    assert isinstance(light.stages["conv"].feature_transform, nn.Identity)


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_wrong_layout_is_refused(arch):
    with pytest.raises(ValueError, match=r"expected point clouds of shape \(batch, points, 3\), got \(3, 3, 64\)"):
        _model(arch)(_clouds().transpose(1, 2))


def test_transform_regularizer():
    model = _model("pointnet")
    with pytest.raises(RuntimeError, match="run a forward pass"):
        model.transform_regularizer()
    model.train()
    model(_clouds())
    # Untrained T-Nets are exactly the identity: the penalty is zero.
    assert model.transform_regularizer().item() == 0.0
    assert model.transform_regularizer(include_input=True).item() == 0.0
    tnet = model.stages["conv"].feature_transform.tnet
    dim = tnet.dim
    eye = torch.eye(dim)
    with torch.no_grad():  # with zero weights the T-Net outputs bias + I
        rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(3)))
        tnet.out.bias.copy_((rotation - eye).flatten())
    model(_clouds())
    assert model.transform_regularizer().item() == pytest.approx(0.0, abs=1e-8)  # orthogonal: no penalty
    with torch.no_grad():
        tnet.out.bias.copy_(eye.flatten())  # A = 2I: ||I - 4I||^2 = 9 dim
    model(_clouds())
    penalty = model.transform_regularizer()
    assert penalty.item() == pytest.approx(9.0 * dim)
    penalty.backward()
    assert tnet.out.bias.grad is not None and tnet.out.bias.grad.abs().sum() > 0
    # The kept matrix is not state and does not stop a copy of the model.
    assert not any("last_matrix" in key for key in model.state_dict())
    copy.deepcopy(model)
    light = _model("pointnet", feature_transform=False)
    light(_clouds())
    assert light.transform_regularizer().item() == 0.0


def test_knn_matches_brute_force_in_every_blocking():
    x = torch.randn(4, 5, 30, generator=torch.Generator().manual_seed(4))  # (B, C, N)
    dist = torch.cdist(x.transpose(1, 2), x.transpose(1, 2))
    expected = dist.topk(6, dim=-1, largest=False).indices
    assert torch.equal(expected[..., 0], torch.arange(30).expand(4, 30))  # a point is its own nearest
    # whole batch at once; two clouds per block; row blocks of one cloud
    for block in (1 << 24, 2 * 30 * 30, 7 * 30):
        got = knn_indices(x, 6, block=block)
        assert torch.equal(got.sort(dim=-1).values, expected.sort(dim=-1).values)
    assert knn_indices(x[:, :, :4], 20).shape == (4, 4, 4)  # k clamped to N


def test_dgcnn_on_fewer_points_than_k():
    model = _model("dgcnn", k=20)
    with torch.no_grad():
        for points in (1, 5):
            assert model(_clouds(points=points)).shape == (B, CLASSES)


@pytest.mark.parametrize("arch", POINT_MODELS)
def test_model_learns(arch):
    model = _model(arch, dropout=0.0).train()
    x = _clouds(batch=8, points=32)
    y = torch.arange(8) % CLASSES
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_pointnet2_sampling_and_grouping():
    from kdlens.models.pointnet2 import ball_groups, farthest_points, gather

    xyz = _clouds(batch=2, points=40)
    chosen = farthest_points(xyz, 10)
    for b in range(2):
        assert len(set(chosen[b].tolist())) == 10  # distinct points
        centred = (xyz[b] - xyz[b].mean(0)).norm(dim=1)
        assert chosen[b, 0] == centred.argmax()  # starts at the point farthest from the centroid
        # each next point is the farthest from those chosen before it
        for i in range(1, 10):
            gap = torch.cdist(xyz[b], xyz[b, chosen[b, :i]]).amin(dim=1)
            assert chosen[b, i] == gap.argmax()
    centres = gather(xyz, chosen)
    radius = 1.0
    groups = ball_groups(xyz, centres, radius, 8)
    distance = (gather(xyz, groups) - centres.unsqueeze(2)).norm(dim=-1)  # (B, M, K)
    assert (distance <= radius + 1e-6).all()
    assert torch.equal(groups[..., 0], chosen)  # the centre itself comes first
    inside = (torch.cdist(centres, xyz) <= radius).sum(-1)  # points in each ball
    for b in range(2):
        for m in range(10):
            kept = set(groups[b, m].tolist())
            assert len(kept) == min(int(inside[b, m]), 8)


def test_pointnet2_conv_pre_is_the_pooled_pre_activation():
    model = _model("pointnet2")
    x = _clouds()
    with torch.no_grad():
        feats = model.features(x, ["conv", "conv.pre"])
    torch.testing.assert_close(feats["conv"], torch.relu(feats["conv.pre"]))

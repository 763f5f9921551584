"""PointNet++: Qi, Yi, Su & Guibas, "PointNet++: Deep Hierarchical Feature
Learning on Point Sets in a Metric Space" (NeurIPS 2017), the classification
network with single-scale grouping (SSG).

Input: a batch of point clouds ``(B, N, in_channels)``, one point per row; the
first three channels are xyz, any further ones are per-point features (e.g.
normals), as for ``pointnet``.

Set abstraction (SA): pick M centres by farthest point sampling, gather the
``nsample`` nearest points within ``radius`` of each centre (their xyz taken
relative to the centre, with their features), run a shared 1x1 MLP on every
gathered point and take the max over each group: M points with new features.

The reference picks 512 and then 128 centres from 1024 points. Here the two
SAs keep the same shares of whatever N comes in (a half, then a quarter of
that), so clouds of any size go through; radii 0.2 and 0.4 and 32 / 64
neighbours as in the reference (clouds in the unit sphere).

Choices of ours, so that the output does not depend on the order of the
points (the reference starts the sampling at point 0 and takes the *first*
points of the ball in index order, both order-dependent):

* farthest point sampling starts at the point farthest from the centroid;
* a ball holds the ``nsample`` points *nearest* to its centre within the
  radius (the centre itself is always among them), and a ball with fewer
  points is padded with the centre, which the max over the group ignores.

Ties in distance (exactly equal distances) are the only order-dependence left.
Both choices of points run without autograd (a choice has no gradient); the
gradient reaches the input through the gathered coordinates.

Stages (the paper's named layers, see ``kdlens.models.base``):

``conv``
    SA(1/2 of the points, r 0.2, 32; MLP 64, 64, 128), SA(1/4 of those,
    r 0.4, 64; MLP 128, 128, 256), then the group-all SA: MLP 256, 512, 1024
    on every remaining point (xyz and features) and a max over them: the
    **global feature** ``(B, 1024)``. As in ``pointnet`` the last MLP layer
    ends in BN and its ReLU follows the max (the same output), so
    ``"conv.pre"`` exists.
``fc1``
    Linear 512 + BN + ReLU.
``fc2``
    Dropout + Linear 256 + BN + ReLU (the reference's dropout after fc1).
``fc3``
    Dropout + Linear: the logits.

Every channel count is multiplied by ``width`` (``catalog.scaled``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, check_integer_option, reject_options, relu, scaled
from kdlens.models.pointnet import POINTS, GlobalMaxPool, PointsToChannels, dense, shared_mlp

XYZ = 3
# (share of the incoming points kept as centres, radius, neighbours, MLP) per SA
SET_ABSTRACTIONS = ((0.5, 0.2, 32, (64, 64, 128)), (0.25, 0.4, 64, (128, 128, 256)))
GLOBAL_MLP = (256, 512, 1024)


@torch.no_grad()
def farthest_points(xyz: Tensor, count: int) -> Tensor:
    """Indices ``(B, count)`` of ``count`` points of ``xyz`` ``(B, N, 3)`` by
    farthest point sampling, starting at the point farthest from the centroid."""
    batch, n, _ = xyz.shape
    count = min(count, n)
    rows = torch.arange(batch, device=xyz.device)
    chosen = torch.empty(batch, count, dtype=torch.long, device=xyz.device)
    current = (xyz - xyz.mean(dim=1, keepdim=True)).pow(2).sum(-1).argmax(dim=1)
    nearest = torch.full((batch, n), float("inf"), device=xyz.device, dtype=xyz.dtype)
    for i in range(count):
        chosen[:, i] = current
        nearest = torch.minimum(nearest, (xyz - xyz[rows, current].unsqueeze(1)).pow(2).sum(-1))
        current = nearest.argmax(dim=1)
    return chosen


@torch.no_grad()
def ball_groups(xyz: Tensor, centres: Tensor, radius: float, size: int) -> Tensor:
    """Indices ``(B, M, size)``: for every centre ``(B, M, 3)``, the ``size``
    points of ``xyz`` ``(B, N, 3)`` nearest to it within ``radius``, nearest
    first; a ball with fewer points repeats its nearest one (the centre)."""
    size = min(size, xyz.shape[1])
    distance = torch.cdist(centres, xyz).pow(2)  # (B, M, N)
    outside = distance > radius * radius
    distance = distance.masked_fill(outside, float("inf"))
    values, index = distance.topk(size, dim=-1, largest=False)
    return torch.where(torch.isinf(values), index[..., :1].expand_as(index), index)


def gather(values: Tensor, index: Tensor) -> Tensor:
    """``values`` ``(B, N, C)`` at ``index`` ``(B, ...)`` -> ``(B, ..., C)``."""
    rows = torch.arange(values.shape[0], device=values.device).view(-1, *([1] * (index.dim() - 1)))
    return values[rows, index]


class GroupMax(nn.Module):
    """``(B, C, M, K)`` -> ``(B, C, M)``: the max over each group."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=-1)


class SetAbstraction(nn.Module):
    """``(xyz (B, N, 3), features (B, C, N) or None)`` -> ``(centres (B, M, 3),
    features (B, C', M))``."""

    def __init__(self, share: float, radius: float, size: int, cin: int, channels: list[int]) -> None:
        super().__init__()
        self.share, self.radius, self.size = share, radius, size
        self.mlp = shared_mlp([cin + XYZ, *channels], dims=2)
        self.pool = GroupMax()  # its output is the SA's per-point feature (a "stage<k>" sensing point)

    def forward(self, xyz: Tensor, features: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        count = max(1, round(xyz.shape[1] * self.share))
        centres = gather(xyz, farthest_points(xyz, count))  # (B, M, 3), with gradient
        groups = ball_groups(xyz, centres, self.radius, self.size)  # (B, M, K)
        local = gather(xyz, groups) - centres.unsqueeze(2)  # (B, M, K, 3)
        if features is not None:
            local = torch.cat([local, gather(features.transpose(1, 2), groups)], dim=-1)
        return centres, self.pool(self.mlp(local.permute(0, 3, 1, 2)))

    def extra_repr(self) -> str:
        return f"share={self.share:g}, radius={self.radius:g}, nsample={self.size}"


class SetAbstractionTrunk(nn.Module):
    """The two SAs and the group-all MLP: ``(B, C, N)`` channels (xyz first) ->
    ``(B, C_out, M)`` per-point features of the last centres, before the max."""

    def __init__(self, in_channels: int, width: float) -> None:
        super().__init__()
        cin = in_channels - XYZ
        layers = []
        for share, radius, size, mlp in SET_ABSTRACTIONS:
            channels = [scaled(c, width) for c in mlp]
            layers.append(SetAbstraction(share, radius, size, cin, channels))
            cin = channels[-1]
        self.abstractions = nn.ModuleList(layers)
        self.group_all = shared_mlp([cin + XYZ, *(scaled(c, width) for c in GLOBAL_MLP)], last_relu=False, dims=2)

    def forward(self, x: Tensor) -> Tensor:
        xyz = x[:, :XYZ].transpose(1, 2)
        features = x[:, XYZ:] if x.shape[1] > XYZ else None
        for abstraction in self.abstractions:
            xyz, features = abstraction(xyz, features)
        everything = torch.cat([xyz.transpose(1, 2), features], dim=1).unsqueeze(-1)  # (B, 3 + C, M, 1)
        return self.group_all(everything).squeeze(-1)


def _pointnet2(num_classes: int, width: float, dropout: float, in_channels: int) -> NamedLayerModel:
    h1, h2 = (scaled(c, width) for c in (512, 256))
    conv = nn.Sequential(OrderedDict(
        to_channels=PointsToChannels(in_channels),
        trunk=SetAbstractionTrunk(in_channels, width),
        pool=GlobalMaxPool(),
        act=relu(),  # after the pool: same output, and "conv.pre" exists
    ))  # fmt: skip
    fc1 = nn.Sequential(*dense(scaled(GLOBAL_MLP[-1], width), h1))
    fc2 = nn.Sequential(nn.Dropout(dropout), *dense(h1, h2))
    fc3 = nn.Sequential(nn.Dropout(dropout), nn.Linear(h2, num_classes))
    model = NamedLayerModel([("conv", conv), ("fc1", fc1), ("fc2", fc2), ("fc3", fc3)])
    # Per-point features (B, C, M) of each SA's centres: the "stage<k>" sensing points.
    model.stage_ends = [f"stages.conv.trunk.abstractions.{i}.pool" for i in range(len(SET_ABSTRACTIONS))]
    return model


@MODELS.register("pointnet2")
def pointnet2(
    num_classes: int,
    image_size: Optional[int] = None,  # images only; ignored
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    **kwargs,
) -> NamedLayerModel:
    reject_options("pointnet2", kwargs)
    check_integer_option("pointnet2", "in_channels", in_channels, XYZ, "xyz first")
    return _pointnet2(num_classes, width, dropout, in_channels)


pointnet2.input_kind = POINTS

"""DGCNN: Wang, Sun, Liu, Sarma, Bronstein & Solomon, "Dynamic Graph CNN for
Learning on Point Clouds" (ACM TOG 2019), the classification network.

Input: a batch of point clouds ``(B, N, in_channels)``, one point per row
(xyz by default), as for ``pointnet``.

EdgeConv: each point is joined to its k nearest neighbours (k = 20 by
default), the point itself included, as in the paper's self-loop. For the edge
from point i to neighbour j the feature is ``(x_j - x_i, x_i)``; a shared 1x1
conv + BN + LeakyReLU(0.2) maps it, and a max over the k edges gives point i's
new feature. The graph is *dynamic*: the neighbours are recomputed in the
feature space of each EdgeConv's input, not kept from the xyz coordinates.
For a cloud of fewer than k points k is clamped to N (every point then sees
the whole cloud); the result is still independent of the order of the points.

Stages (the paper's named layers, see ``kdlens.models.base``):

``conv``
    EdgeConv 64, 64, 128, 256; their outputs concatenated; 1x1 Conv1d to 1024
    + BN + LeakyReLU(0.2); then the max over the points and the mean over the
    points, concatenated: the **global feature** ``(B, 2048)``. As for
    ``pointnet`` this pooled vector, not a per-point feature, is "conv": it is
    fixed-size, independent of the order and the number of the points, and
    the input of the fully connected head. The stage ends in the pooling, not
    a ReLU, so ``"conv.pre"`` is not available (the mean does not commute with
    the LeakyReLU, so the trick ``pointnet`` uses does not apply).
``fc1``
    Linear 512 + BN + ReLU.
``fc2``
    Dropout + Linear 256 + BN + ReLU.
``fc3``
    Dropout + Linear: the logits.

The head uses ReLU where the paper uses LeakyReLU(0.2): the rest of the zoo
measures fc1 and fc2 as post-ReLU features, and ends them in a ReLU so their
pre-activation feature (``"fc1.pre"``) exists. Dropout opens fc2 and fc3 (the
paper applies it after the activations of fc1 and fc2: the same places), so
the fc1 and fc2 outputs are the un-dropped features.

Every channel count is multiplied by ``width`` (``catalog.scaled``).
Weights use PyTorch's default initialisation, as the reference code does.

Memory: finding neighbours needs the pairwise distances of the points, B x N x
N numbers per EdgeConv. They are computed without autograd (the choice of
neighbours has no gradient; the gradient reaches the input through the
gathered edge features) and in blocks of at most ``KNN_BLOCK`` distances, so
N = 2048 costs 64 MiB of distances at a time whatever B is. The edge features
themselves, B x 2C x N x k, are the network's real activations and are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn

from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, check_integer_option, reject_options, scaled
from kdlens.models.pointnet import POINTS, PointsToChannels, dense

DEFAULT_K = 20
NEGATIVE_SLOPE = 0.2
# Most pairwise distances held at once while finding neighbours (float32: 64 MiB).
KNN_BLOCK = 1 << 24


@torch.no_grad()
def knn_indices(x: Tensor, k: int, block: int = KNN_BLOCK) -> Tensor:
    """Indices ``(B, N, k)`` of the k nearest points of every point (itself
    included), by Euclidean distance between the columns of ``x`` ``(B, C, N)``.

    Squared distances come from ``|a|^2 - 2 a.b + |b|^2``, one block of rows
    at a time, in float32 even under reduced precision (half-precision
    distances would scramble close neighbours)."""
    batch, _, n = x.shape
    k = min(k, n)
    points = x.transpose(1, 2).float()  # (B, N, C)
    norms = points.pow(2).sum(dim=-1)  # (B, N)
    out = torch.empty(batch, n, k, dtype=torch.long, device=x.device)
    clouds = max(1, block // (n * n))  # whole clouds per block, if they fit
    rows = n if clouds > 1 else max(1, min(n, block // n))  # else row blocks of one cloud
    for b0 in range(0, batch, clouds):
        b1 = min(batch, b0 + clouds)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            query = points[b0:b1, r0:r1]
            dist = norms[b0:b1, r0:r1, None] + norms[b0:b1, None, :]
            dist = dist.baddbmm_(query, points[b0:b1].transpose(1, 2), alpha=-2.0)
            out[b0:b1, r0:r1] = dist.topk(k, dim=-1, largest=False).indices
    return out


def edge_features(x: Tensor, neighbours: Tensor) -> Tensor:
    """``(x_j - x_i, x_i)`` for every point i and each of its neighbours j:
    ``(B, C, N)`` and indices ``(B, N, k)`` -> ``(B, 2C, N, k)``."""
    points = x.transpose(1, 2)  # (B, N, C)
    batch_index = torch.arange(points.shape[0], device=x.device).view(-1, 1, 1)
    gathered = points[batch_index, neighbours]  # (B, N, k, C)
    centre = points.unsqueeze(2).expand_as(gathered)
    return torch.cat([gathered - centre, centre], dim=-1).permute(0, 3, 1, 2)


class EdgeConv(nn.Module):
    """One EdgeConv on a graph rebuilt from its own input: ``(B, C, N)`` ->
    ``(B, out, N)``."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(NEGATIVE_SLOPE),
        )

    def forward(self, x: Tensor) -> Tensor:
        edges = edge_features(x, knn_indices(x, self.k))
        return self.mlp(edges).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"k={self.k}"


class EdgeConvTrunk(nn.Module):
    """Four EdgeConvs, each on the previous one's output, their outputs
    concatenated and fused per point: ``(B, C, N)`` -> ``(B, emb, N)``."""

    def __init__(self, in_channels: int, channels: list[int], embedding: int, k: int) -> None:
        super().__init__()
        cins = [in_channels] + channels[:-1]
        self.edges = nn.ModuleList(EdgeConv(cin, cout, k) for cin, cout in zip(cins, channels))
        self.fuse = nn.Sequential(
            nn.Conv1d(sum(channels), embedding, 1, bias=False),
            nn.BatchNorm1d(embedding),
            nn.LeakyReLU(NEGATIVE_SLOPE),
        )

    def forward(self, x: Tensor) -> Tensor:
        outputs = []
        for edge in self.edges:
            x = edge(x)
            outputs.append(x)
        return self.fuse(torch.cat(outputs, dim=1))


class MaxAndMeanPool(nn.Module):
    """``(B, C, N)`` -> ``(B, 2C)``: the max over the points, then the mean."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1)


def _dgcnn(num_classes: int, width: float, dropout: float, in_channels: int, k: int) -> NamedLayerModel:
    channels = [scaled(c, width) for c in (64, 64, 128, 256)]
    embedding, h1, h2 = (scaled(c, width) for c in (1024, 512, 256))
    conv = nn.Sequential(OrderedDict(
        to_channels=PointsToChannels(in_channels),
        trunk=EdgeConvTrunk(in_channels, channels, embedding, k),
        pool=MaxAndMeanPool(),
    ))  # fmt: skip
    fc1 = nn.Sequential(*dense(2 * embedding, h1))
    fc2 = nn.Sequential(nn.Dropout(dropout), *dense(h1, h2))
    fc3 = nn.Sequential(nn.Dropout(dropout), nn.Linear(h2, num_classes))
    model = NamedLayerModel([("conv", conv), ("fc1", fc1), ("fc2", fc2), ("fc3", fc3)])
    # Per-point features (B, C, N) after each EdgeConv: the "stage<k>" sensing points.
    model.stage_ends = [f"stages.conv.trunk.edges.{i}" for i in range(len(channels))]
    return model


@MODELS.register("dgcnn")
def dgcnn(
    num_classes: int,
    image_size: Optional[int] = None,  # images only; ignored
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    k: int = DEFAULT_K,
    **kwargs,
) -> NamedLayerModel:
    reject_options("dgcnn", kwargs)
    check_integer_option("dgcnn", "option k", k, 1, "neighbours per point")
    check_integer_option("dgcnn", "in_channels", in_channels, 1)
    return _dgcnn(num_classes, width, dropout, in_channels, k)


dgcnn.input_kind = POINTS

"""PointNet: Qi, Su, Mo & Guibas, "PointNet: Deep Learning on Point Sets for
3D Classification and Segmentation" (CVPR 2017), the classification network.

Input: a batch of point clouds ``(B, N, in_channels)``, one point per row
(xyz, ``in_channels`` = 3 by default); any number of points N >= 1. The model
moves the coordinates to the channel axis itself, so every per-point layer is
a 1x1 ``Conv1d`` shared by all points.

Stages (the paper's named layers, see ``kdlens.models.base``):

``conv``
    input transform (a T-Net predicts a 3x3 matrix applied to every point),
    shared MLP 64, 64, feature transform (a T-Net predicts a 64x64 matrix),
    shared MLP 64, 128, 1024, then a max over the points: the **global
    feature**, ``(B, 1024)``. This is the tensor the knowledge-point measures
    read as "conv". The per-point features before the pool are not a usable
    "conv" layer: their size grows with N, and their order is the arbitrary
    order of the points, so two permutations of one cloud would give two
    different features. The pooled vector is fixed-size and does not depend
    on the order of the points, and it is the last feature before the fully
    connected head, as the top conv layer is for the image models.
    The last per-point layer is Conv1d + BN, its ReLU is applied *after* the
    max pool: max and ReLU commute (ReLU is monotone), so the output is the
    same as pooling the ReLU outputs, but the stage then ends in a ReLU and
    ``"conv.pre"`` (the pooled pre-activation feature) is available like for
    the other models.
``fc1``
    Linear 512 + BN + ReLU.
``fc2``
    Linear 256 + BN + ReLU.
``fc3``
    Dropout + Linear: the logits. As in the paper, dropout sits only before
    the last layer (the paper uses keep ratio 0.7, i.e. ``dropout=0.3``; the
    registry's default is 0.5).

Every channel count (also the T-Nets') is multiplied by ``width``
(``catalog.scaled``).

Options: ``feature_transform`` (default True) keeps the 64x64 feature T-Net;
False leaves only the input transform (the paper's lighter "vanilla + input
transform" variant).

The T-Net regulariser: the paper keeps the predicted feature transform ``A``
close to orthogonal by adding ``w * ||I - A A^T||_F^2`` to the loss (w = 0.001).
``PointNet.transform_regularizer()`` returns that term for the last forward
pass (mean over the batch, without the weight); a training loop adds it.
Weights use PyTorch's default initialisation, as the reference
implementations do, except the T-Nets' last layers, which start at zero so
every T-Net starts as the identity transform (and the regulariser at 0).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn

from kdlens.errors import UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, check_integer_option, reject_options, relu, scaled

# What a point-cloud family declares on its factory, so ``build_model`` knows
# that ``image_size`` means nothing to it (see ``kdlens.models.input_kind``).
POINTS = "points"


class PointsToChannels(nn.Module):
    """``(B, N, C)`` point rows -> ``(B, C, N)`` channels, the layout of
    ``Conv1d``; refuses any other shape with a one-line message, since a
    ``(B, C, N)`` batch passed by mistake would otherwise fail deep inside."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels

    def forward(self, points: Tensor) -> Tensor:
        if points.dim() != 3 or points.shape[-1] != self.in_channels or points.shape[1] < 1:
            raise ValueError(
                f"expected point clouds of shape (batch, points, {self.in_channels}), "
                f"got {tuple(points.shape)}"
            )
        return points.transpose(1, 2)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"


class GlobalMaxPool(nn.Module):
    """``(B, C, N)`` -> ``(B, C)``: the symmetric function that makes the
    network independent of the order of the points."""

    def forward(self, x: Tensor) -> Tensor:
        return x.amax(dim=2)


def shared_mlp(channels: list[int], last_relu: bool = True, dims: int = 1) -> nn.Sequential:
    """1x1 conv + BN + ReLU per step, the same weights for every point: over
    ``(B, C, N)`` points (``dims=1``) or ``(B, C, M, K)`` groups of points
    (``dims=2``, PointNet++). Bias-free convs: the BN that follows has its own shift."""
    conv, norm = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d)}[dims]
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers += [conv(cin, cout, 1, bias=False), norm(cout)]
        if last_relu or i < len(channels) - 2:
            layers.append(relu())
    return nn.Sequential(*layers)


def dense(cin: int, cout: int) -> list[nn.Module]:
    """Linear + BN + ReLU (bias-free Linear: the BN shifts)."""
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), relu()]


class TNet(nn.Module):
    """Predicts a ``d x d`` matrix from the whole cloud: a small PointNet
    (shared MLP 64, 128, 1024, max pool, FC 512, 256, d*d).

    The last layer starts at zero and the identity is added to its output, so
    an untrained T-Net is exactly the identity transform."""

    def __init__(self, dim: int, width: float) -> None:
        super().__init__()
        self.dim = dim
        c1, c2, c3, h1, h2 = (scaled(c, width) for c in (64, 128, 1024, 512, 256))
        self.features = nn.Sequential(shared_mlp([dim, c1, c2, c3]), GlobalMaxPool())
        self.head = nn.Sequential(*dense(c3, h1), *dense(h1, h2))
        self.out = nn.Linear(h2, dim * dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("identity", torch.eye(dim).flatten(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        flat = self.out(self.head(self.features(x))) + self.identity
        return flat.view(-1, self.dim, self.dim)


class LearnedTransform(nn.Module):
    """Applies the matrix its T-Net predicts to every point's ``d`` features
    (``(B, d, N)`` in and out) and keeps the last matrix for the regulariser.

    The kept matrix is not state: it is not saved with the weights and is
    dropped when the model is copied (``copy.deepcopy`` refuses tensors that
    are part of an autograd graph)."""

    def __init__(self, dim: int, width: float) -> None:
        super().__init__()
        self.tnet = TNet(dim, width)
        self.last_matrix: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        matrix = self.tnet(x)
        self.last_matrix = matrix
        # A point p (a row) becomes p @ A; with points as columns: A^T @ x.
        return torch.bmm(matrix.transpose(1, 2), x)

    def orthogonality_penalty(self) -> Tensor:
        """``||I - A A^T||_F^2`` of the last forward's matrices, mean over the batch."""
        if self.last_matrix is None:
            raise RuntimeError("no transform yet: run a forward pass before asking for the regulariser")
        a = self.last_matrix
        gram = torch.bmm(a, a.transpose(1, 2))
        eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        return (eye - gram).pow(2).sum(dim=(1, 2)).mean()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["last_matrix"] = None
        return state


class PointNet(NamedLayerModel):
    """A ``NamedLayerModel`` with PointNet's transform regulariser."""

    def transform_regularizer(self, include_input: bool = False) -> Tensor:
        """The orthogonality term of the last forward pass: the feature
        transform's ``||I - A A^T||_F^2`` (mean over the batch), the term the
        paper adds to the loss (weight 0.001, not applied here).

        ``include_input=True`` adds the same term for the 3x3 input transform
        (the paper leaves it out: it is initialised and learnt close to a
        rotation anyway). Zero if the model has no transform to regularise."""
        conv = self.stages["conv"]
        transforms = [conv.feature_transform] if isinstance(conv.feature_transform, LearnedTransform) else []
        if include_input:
            transforms.append(conv.input_transform)
        if not transforms:
            return next(self.parameters()).new_zeros(())
        return torch.stack([t.orthogonality_penalty() for t in transforms]).sum()


def _pointnet(
    num_classes: int,
    width: float,
    dropout: float,
    in_channels: int,
    feature_transform: bool,
) -> PointNet:
    c64, c128, c1024, h1, h2 = (scaled(c, width) for c in (64, 128, 1024, 512, 256))
    conv = nn.Sequential(OrderedDict(
        to_channels=PointsToChannels(in_channels),
        input_transform=LearnedTransform(in_channels, width),
        mlp1=shared_mlp([in_channels, c64, c64]),
        feature_transform=LearnedTransform(c64, width) if feature_transform else nn.Identity(),
        mlp2=shared_mlp([c64, c64, c128]),
        lift=shared_mlp([c128, c1024], last_relu=False),
        pool=GlobalMaxPool(),
        act=relu(),  # after the pool: same output, and "conv.pre" exists
    ))  # fmt: skip
    fc1 = nn.Sequential(*dense(c1024, h1))
    fc2 = nn.Sequential(*dense(h1, h2))
    fc3 = nn.Sequential(nn.Dropout(dropout), nn.Linear(h2, num_classes))
    model = PointNet([("conv", conv), ("fc1", fc1), ("fc2", fc2), ("fc3", fc3)])
    # Per-point features (B, C, N) after each shared MLP that ends in a ReLU:
    # the "stage<k>" sensing points of layer-wise methods.
    model.stage_ends = ["stages.conv.mlp1", "stages.conv.mlp2"]
    return model


@MODELS.register("pointnet")
def pointnet(
    num_classes: int,
    image_size: Optional[int] = None,  # images only; ignored
    width: float = 1.0,
    dropout: float = 0.5,
    in_channels: int = 3,
    feature_transform: bool = True,
    **kwargs,
) -> PointNet:
    reject_options("pointnet", kwargs)
    if not isinstance(feature_transform, bool):
        raise UsageError(f"pointnet option feature_transform = {feature_transform!r}: expected true or false")
    check_integer_option("pointnet", "in_channels", in_channels, 1)
    return _pointnet(num_classes, width, dropout, in_channels, feature_transform)


pointnet.input_kind = POINTS

"""Batch norm folded into the layer before it, for the measurement of a frozen network.

Both estimators run a network in eval mode with frozen weights, thousands of
times per sample. There a batch norm is a fixed affine map per channel, and a
convolution or linear layer followed by it is one convolution or linear layer
with scaled weights and a shifted bias (``torch.nn.utils.fusion``). The
folded copy computes the same features up to float rounding, and skips the
batch norm's forward and backward passes: on 2 CPU cores they were a third of
the time of a VGG step channels-last (the backward of an eval-mode batch norm
is a general kernel there; measured with torch.profiler, see
``benchmarks/analysis_throughput.py``).

Pairs are folded where a ``Conv1d``/``Conv2d``/``Conv3d`` is directly
followed by the matching batch norm inside one ``nn.Sequential``
(VGG's and DGCNN's blocks, a ResNet's downsample); the batch norm becomes an
``nn.Identity`` at the same name, so a hook on it still sees its output. The
caller's model is never changed: a copy is folded, and only when it has such
a pair.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# (a Linear's BatchNorm1d may normalise another dimension than its output features, so it stays)
_PAIRS = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _foldable(first: nn.Module, second: nn.Module) -> bool:
    if not any(type(first) is layer and type(second) is norm for layer, norm in _PAIRS):
        return False
    # only a norm with running statistics is a fixed affine map in eval mode
    return second.track_running_stats and second.running_mean is not None


def _pairs(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    return [(module, k) for module in model.modules() if isinstance(module, nn.Sequential)
            for k in range(len(module) - 1) if _foldable(module[k], module[k + 1])]


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """``model`` itself when it has nothing to fold; else an eval-mode copy whose
    (layer, batch norm) pairs are one layer each (see the module doc)."""
    if not _pairs(model):
        return model
    folded = copy.deepcopy(model).eval()
    for sequential, k in _pairs(folded):
        sequential[k] = fuse_conv_bn_eval(sequential[k], sequential[k + 1])
        sequential[k + 1] = nn.Identity()
    return folded

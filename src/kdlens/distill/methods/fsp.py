"""Flow of solution procedure (FSP), the loss of

    Yim, Joo, Bae, Kim. "A Gift from Knowledge Distillation: Fast
    Optimization, Network Minimization and Transfer Learning." CVPR 2017.

Between two feature maps F1 (h x w x m) and F2 (h x w x n) of one network the
FSP matrix is their Gram matrix over positions (the paper's eq. 1),

    G_ij(x) = sum_{s, t} F1_{s,t,i}(x) F2_{s,t,j}(x) / (h * w),

and the student learns the teacher's FSP matrices of every two consecutive
sensing points l, l+1:

    L = beta * sum_l mean_{b, i, j} ( G^S_l[b, i, j] - G^T_l[b, i, j] )^2.

The mean over batch and matrix entries is RepDistiller's form (Tian, Krishnan,
Isola, ICLR 2020, github.com/HobbitLong/RepDistiller, ``FSP.compute_loss``);
the paper's eq. 2 sums the squared entries (with equal weights lambda_i),
i.e. m * n times ours. beta = 50 is RepDistiller's ``-b 50``
(``run_cifar_distill.sh``); note that RepDistiller, like the paper, uses the
FSP loss only in an initialisation stage (``--init_epochs 30``, unweighted;
its main stage has ``loss_kd = 0``). Here the student trains in one stage,
CE + beta * L jointly, as RepDistiller's "-b" joint runs do.

Sensing points (``points``): by default the end of every resolution stage of
the two networks (``stage1`` ... ``stageK``, post-ReLU maps), resolved in
``bind``; any two or more named features may be given instead (a (B, C)
vector counts as a 1x1 map). Of the two maps of a pair the larger is pooled
to the smaller's size (adaptive average pooling; RepDistiller pools to the
smaller height the same way). The FSP matrix is m x n whatever the spatial
size, so the student's and the teacher's maps may differ in size.

Channels: the matrices compare entry by entry, so the student's maps need the
teacher's channel counts. RepDistiller refuses other pairs ("num of channels
not equal"); we add, at each point where the counts differ, a 1x1 convolution
without bias from the student's to the teacher's channels, trained with the
student (the Gram is bilinear, so a linear map is what can reconcile two
channel bases: G' = W_l G W_{l+1}^T). Where the counts agree there is none.
The teacher's maps are detached.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from torch import Tensor, nn

from kdlens.distill.base import METHODS, DistillationMethod, as_map, match_spatial
from kdlens.errors import UsageError


def check_points(points: Optional[Sequence[str]], method: str) -> Optional[tuple[str, ...]]:
    """Validates a method's ``points`` option: None, or two or more distinct names."""
    if points is None:
        return None
    if isinstance(points, str) or not all(isinstance(p, str) and p for p in points):
        raise UsageError(f"{method}: points = {points!r}: expected a list of layer names, e.g. [stage1, stage2]")
    points = tuple(points)
    if len(points) < 2 or len(set(points)) != len(points):
        raise UsageError(f"{method}: points = {list(points)!r}: expected at least two distinct sensing points")
    return points


class SensingPointMethod(DistillationMethod):
    """A method on pairs of consecutive sensing points (FSP, MHGD): the
    ``points`` option, or every stage end of the two networks, resolved in
    ``bind`` (as IEP does)."""

    sensing_points = True
    method_name = "method"

    def __init__(self, points: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.requested_points = check_points(points, self.method_name)
        self.layers = self.requested_points or ()

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.requested_points is not None:
            points = self.requested_points
        else:
            s_points = getattr(student, "stage_names", ())
            t_points = getattr(teacher, "stage_names", ())
            if s_points != t_points:
                raise UsageError(
                    f"{self.method_name}: the student has {len(s_points)} stages and the teacher {len(t_points)}; "
                    "expected as many, or give options.points (e.g. [stage2, stage3, stage4])"
                )
            points = t_points
        if len(points) < 2:
            raise UsageError(
                f"{self.method_name}: sensing points {list(points)}: expected at least two; give options.points"
            )
        self.layers = tuple(points)

    def _require_layers(self) -> None:
        if len(self.layers) < 2:
            raise RuntimeError(f"{self.method_name} has no sensing points; call bind(student, teacher) or give points")


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """(B, m, n) FSP matrices of two (B, m, H, W) and (B, n, H', W') maps,
    the larger pooled to the smaller size: sum over positions / (h * w)."""
    first, second = match_spatial(as_map(first), as_map(second))
    positions = first.shape[2] * first.shape[3]
    return first.flatten(2) @ second.flatten(2).mT / positions


@METHODS.register("fsp")
class FlowOfSolutionProcedure(SensingPointMethod):
    method_name = "fsp"

    def __init__(self, points: Optional[Sequence[str]] = None, beta: float = 50.0) -> None:
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise UsageError(f"fsp: beta = {beta!r}: expected a finite number >= 0")
        super().__init__(points)
        self.beta = float(beta)
        self.connectors = nn.ModuleList()

    def extra_repr(self) -> str:
        return f"points={list(self.layers)}, beta={self.beta}"

    def setup(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> None:
        self._require_layers()
        connectors = []
        for name in self.layers:
            c_s, c_t = as_map(student[name]).shape[1], as_map(teacher[name]).shape[1]
            connectors.append(nn.Conv2d(c_s, c_t, kernel_size=1, bias=False) if c_s != c_t else nn.Identity())
        self.connectors = nn.ModuleList(connectors)

    def forward(
        self,
        student: Mapping[str, Tensor],
        teacher: Mapping[str, Tensor],
        targets: Optional[Tensor] = None,
    ) -> Tensor:
        if len(self.connectors) != len(self.layers) or not self.layers:
            raise RuntimeError("fsp is not set up; call setup() with a batch of features first")
        s_maps = [c(as_map(student[name])) for name, c in zip(self.layers, self.connectors)]
        t_maps = [as_map(teacher[name].detach()) for name in self.layers]
        total = None
        for l in range(len(self.layers) - 1):
            g_s, g_t = fsp_matrix(s_maps[l], s_maps[l + 1]), fsp_matrix(t_maps[l], t_maps[l + 1])
            if g_s.shape != g_t.shape:
                raise UsageError(
                    f"fsp: points {self.layers[l]!r}, {self.layers[l + 1]!r}: student FSP matrix "
                    f"{tuple(g_s.shape)} and teacher's {tuple(g_t.shape)}; expected equal shapes (set up again?)"
                )
            term = (g_s - g_t).pow(2).mean()
            total = term if total is None else total + term
        return self.beta * total

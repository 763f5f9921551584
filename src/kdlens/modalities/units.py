"""Input units: which input elements share one noise scale sigma (paper, Sec. 3.1).

A unit map follows captum's ``feature_mask`` convention: an integer (long)
tensor that broadcasts to ONE sample's input shape and gives every input
element a unit id in ``0 .. n-1``.  Every id must be used by some element (a
unit with no element would feel no constraint and its sigma would grow
without bound).  When the samples' units differ (the words of sentences), a
map of the batch's own shape gives each sample its ids, and -1 to elements in
no unit (:class:`UnitMap`).

The paper divides images into a 16 x 16 grid whose cells are the units
(Fig. 3); words (their whole embedding) and points of a cloud are units too.

Foreground: the paper labels input units foreground or background from a box
or a segmentation (Sec. 4.1).  ``unit_foreground_share`` gives the fraction of
each unit's elements under a per-sample foreground mask, and
``foreground_units`` turns it into labels with a majority rule.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor

from kdlens.errors import UsageError, WrongTypeError


def _bins(size: int, parts: int) -> Tensor:
    # floor(i * parts / size) splits `size` into `parts` runs whose lengths differ by at most 1
    return torch.arange(size) * parts // size


def grid_units(height: int, width: int, grid: int = 16, channels: int | None = None) -> Tensor:
    """A ``grid`` x ``grid`` grid over an image; all pixels (and channels) of a cell share an id.

    Ids run row-major: cell (r, c) has id ``r * grid + c``.  Sizes not divisible
    by ``grid`` are split as evenly as possible (cell sides differ by at most 1).
    Returns shape (height, width), which broadcasts over channels, or
    (channels, height, width) when ``channels`` is given.
    """
    if grid < 1 or grid > height or grid > width:
        raise UsageError(
            f"grid {grid} does not fit an image of {height}x{width}: need 1 <= grid <= min(height, width)"
        )
    units = _bins(height, grid)[:, None] * grid + _bins(width, grid)[None, :]
    if channels is not None:
        units = units.unsqueeze(0).repeat(channels, 1, 1)
    return units


def element_units(shape: Sequence[int]) -> Tensor:
    """One unit per input element (ids in row-major order)."""
    return torch.arange(math.prod(shape)).reshape(tuple(shape))


def token_units(num_tokens: int, embed_dim: int) -> Tensor:
    """One unit per token: all ``embed_dim`` coordinates of a token share its id. Shape (T, D)."""
    return torch.arange(num_tokens)[:, None].repeat(1, embed_dim)


def point_units(num_points: int, point_dim: int, *, channels_first: bool = False) -> Tensor:
    """One unit per point of a cloud. Shape (N, d), or (d, N) for ``channels_first`` models (PointNet)."""
    units = torch.arange(num_points)[:, None].repeat(1, point_dim)
    return units.T.contiguous() if channels_first else units


def num_units(units: Tensor) -> int:
    return int(units.max()) + 1 if units.numel() else 0


def check_units(units: Tensor, sample_shape: Sequence[int]) -> Tensor:
    """``units`` expanded to ``sample_shape`` after checking it is a valid unit map for it."""
    sample_shape = tuple(sample_shape)
    shape = tuple(units.shape)
    while len(shape) > len(sample_shape) and shape[0] == 1:  # tolerate a leading batch-of-1 dim
        shape = shape[1:]
    try:
        fits = torch.broadcast_shapes(shape, sample_shape) == torch.Size(sample_shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise UsageError(
            f"units of shape {tuple(units.shape)} do not fit inputs whose samples have shape "
            f"{sample_shape}: they must broadcast to it"
        )
    if units.dtype.is_floating_point or units.dtype == torch.bool or units.is_complex():
        raise WrongTypeError(f"units has dtype {units.dtype}; expected an integer tensor of unit ids")
    units = units.reshape(shape).expand(sample_shape).long()
    n = num_units(units)
    counts = torch.bincount(units.reshape(-1), minlength=n) if units.numel() and units.min() >= 0 else None
    if counts is None or bool((counts == 0).any()):
        ids = units.unique().tolist()
        shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
        raise UsageError(f"units has ids [{shown}]; expected ids 0..n-1 with every id used by some element")
    return units


def _align_mask(mask: Tensor, units: Tensor, align: str) -> Tensor:
    spatial, ushape = tuple(mask.shape[1:]), tuple(units.shape)
    k, extra = len(spatial), units.dim() - len(spatial)
    trailing = extra >= 0 and ushape[extra:] == spatial
    leading = extra >= 0 and ushape[:k] == spatial
    if align == "auto":
        if trailing and leading and extra > 0 and ushape[extra:] != ushape[:k]:
            raise UsageError(f"mask {tuple(mask.shape)} vs units {ushape} is ambiguous; pass align=")
        align = "trailing" if trailing else "leading"
    if (align == "trailing" and not trailing) or (align == "leading" and not leading):
        raise UsageError(
            f"foreground mask of shape {tuple(mask.shape)} does not match units of shape {ushape} "
            f"(mask is (B, H, W) for images, (B, T) for tokens or points)"
        )
    ones = (1,) * extra
    view = (mask.shape[0], *ones, *spatial) if align == "trailing" else (mask.shape[0], *spatial, *ones)
    return mask.reshape(view).expand(mask.shape[0], *ushape)


def unit_foreground_share(
    mask: Tensor, units: Tensor, *, align: Literal["auto", "leading", "trailing"] = "auto"
) -> Tensor:
    """(B, n_units): the fraction of each unit's elements that lie under the foreground ``mask``.

    ``mask`` is bool (B, H, W) for images, matched against the LAST dims of
    ``units`` (so (H, W) and (C, H, W) maps both work), or (B, T) for tokens and
    points, matched against the FIRST dims ((T, D) maps; channels-first point
    maps (d, N) match the last dim).  ``align`` forces one reading.  Every
    channel of a pixel gets the pixel's label, so the share is a spatial share.
    """
    if mask.dim() < 2:
        raise UsageError(f"foreground mask has shape {tuple(mask.shape)}; expected (B, ...) per sample")
    units = units.long()
    n = num_units(units)
    per_element = _align_mask(mask.to(torch.float64), units, align).reshape(mask.shape[0], -1)
    ids = units.reshape(-1).to(mask.device)
    sums = torch.zeros(mask.shape[0], n, dtype=torch.float64, device=mask.device).index_add_(1, ids, per_element)
    counts = torch.bincount(ids, minlength=n)
    if bool((counts == 0).any()):
        raise UsageError(f"units has ids 0..{n - 1} with some unused; expected every id used by at least one element")
    return (sums / counts).float()


def foreground_units(share: Tensor, rule: float = 0.5) -> Tensor:
    """(B, n_units) bool: a unit is foreground when ``share >= rule``.

    The default is a majority rule: a grid cell counts as foreground when at
    least half of its area is foreground (exactly half goes to the foreground).
    ``rule=1.0`` keeps only cells wholly inside the object; a small rule keeps
    any cell the object touches.
    """
    if not 0.0 < rule <= 1.0:
        raise UsageError(f"rule = {rule!r}: expected a number in (0, 1]")
    return share >= rule


class UnitMap:
    """The unit map of a batch, as the estimators use it.

    Either *shared*: one map for every sample (the images' grid, the points of
    clouds of one size), checked by :func:`check_units`; or *per sample*: a
    long tensor of the batch's own shape (B, *sample_shape), where sample b's
    elements carry ids 0 .. n_b - 1 (each used) or -1 for an element that is
    in no unit and gets no noise (a special token, padding, the attention-mask
    channel of a text input). ``n`` is the largest n_b; ``present`` (B, n) says
    which units sample b has. Sigma and entropy are (B, n); a unit a sample
    does not have has NaN entropy and is neither foreground nor background.
    """

    def __init__(self, units: Tensor, batch_shape: Sequence[int]) -> None:
        batch_shape = tuple(batch_shape)
        batch, sample_shape = batch_shape[0], batch_shape[1:]
        self.sample_shape = sample_shape
        own = units.dim() == len(batch_shape) and tuple(units.shape) == batch_shape
        # one sample's own map is per sample when it has elements in no unit
        self.shared = not (own and (batch > 1 or bool((units < 0).any())))
        if self.shared:
            self.flat = check_units(units, sample_shape).reshape(-1)
            self.n = num_units(self.flat)
            self.present = torch.ones(batch, self.n, dtype=torch.bool, device=units.device)
            return
        if units.dtype.is_floating_point or units.dtype == torch.bool or units.is_complex():
            raise WrongTypeError(f"units has dtype {units.dtype}; expected an integer tensor of unit ids")
        flat = units.reshape(batch, -1).long()
        if bool((flat < -1).any()):
            raise UsageError(f"units has id {int(flat.min())}; expected ids >= 0, or -1 for an element in no unit")
        self.n = int(flat.max()) + 1 if flat.numel() else 0
        if self.n == 0:
            raise UsageError("units gives no element a unit; expected every sample to have at least one unit")
        counts = torch.zeros(batch, self.n + 1, dtype=torch.long, device=flat.device)
        counts.scatter_add_(1, flat + 1, torch.ones_like(flat))
        used = counts[:, 1:] > 0
        sizes = used.sum(1)
        gaps = used & ~(torch.arange(self.n, device=flat.device)[None, :] < sizes[:, None])
        if bool((sizes == 0).any()) or bool(gaps.any()):
            bad = int(((sizes == 0) | gaps.any(1)).nonzero()[0, 0])
            ids = flat[bad].unique().tolist()
            shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
            raise UsageError(f"units of sample {bad} has ids [{shown}]; expected ids 0..n-1, each used, "
                             "and -1 for elements in no unit")
        self.flat = flat
        self.present = used

    def spread(self, per_unit: Tensor, rows: Tensor | None = None) -> Tensor:
        """(b, n) per-unit values of the samples ``rows`` (all when None) -> (b, *sample_shape)
        per element; 0 on elements in no unit."""
        if self.shared:
            return per_unit.index_select(1, self.flat).reshape(per_unit.shape[0], *self.sample_shape)
        flat = self.flat if rows is None else self.flat[rows]
        inside = flat >= 0
        values = per_unit.gather(1, flat.clamp(min=0)) * inside
        return values.reshape(per_unit.shape[0], *self.sample_shape)

    def mean(self, per_unit: Tensor, rows: Tensor | None = None) -> Tensor:
        """(b,) the mean over each sample's own units of (b, n) values."""
        if self.shared:
            return per_unit.mean(1)
        present = self.present if rows is None else self.present[rows]
        return (per_unit * present).sum(1) / present.sum(1)

    def element_mask(self) -> Tensor | None:
        """(B, *sample_shape) 1.0 on elements in a unit, 0.0 elsewhere; None for a shared map (every element)."""
        if self.shared:
            return None
        return (self.flat >= 0).reshape(self.flat.shape[0], *self.sample_shape)

    def absent_as_nan(self, per_unit: Tensor) -> Tensor:
        """``per_unit`` (B, n) with NaN where a sample does not have the unit."""
        if self.shared:
            return per_unit
        return per_unit.masked_fill(~self.present, float("nan"))
